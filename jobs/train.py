"""Train SAM-Adapter data-parallel with Ray Train (`python jobs/train.py --help`).

The entry point that `ray job submit -- python jobs/train.py`, cron and the CronJob run; the
job itself is samadapter/jobs/train.py (also the console script samadapter-train).
"""

import sys

from samadapter.jobs.train import main

if __name__ == "__main__":
    sys.exit(main())
