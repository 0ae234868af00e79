"""Sweep recipe fields with Ray Tune: every trial a Ray Train run of the recipe (`python jobs/sweep.py --help`).

The entry point that `ray job submit -- python jobs/sweep.py`, cron and the CronJob run; the
job itself is samadapter/jobs/sweep.py (also the console script samadapter-sweep).
"""

import sys

from samadapter.jobs.sweep import main

if __name__ == "__main__":
    sys.exit(main())
