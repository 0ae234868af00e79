"""Export an adapter and its SAM base as one ONNX graph (`python jobs/export.py --help`).

The entry point; the job itself is samadapter/jobs/export.py (also the console script
samadapter-export).
"""

import sys

from samadapter.jobs.export import main

if __name__ == "__main__":
    sys.exit(main())
