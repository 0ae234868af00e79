"""Before anything is launched: what each job asks a cluster for, and which nodes it would start (`python jobs/preflight.py --help`).

The entry point that `ray job submit -- python jobs/preflight.py`, cron and the CronJob run; the
job itself is samadapter/jobs/preflight.py (also the console script samadapter-preflight).
"""

import sys

from samadapter.jobs.preflight import main

if __name__ == "__main__":
    sys.exit(main())
