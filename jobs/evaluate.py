"""Evaluate SAM-Adapter on a dataset split with its task's metrics (`python jobs/evaluate.py --help`).

The entry point that `ray job submit -- python jobs/evaluate.py`, cron and the CronJob run; the
job itself is samadapter/jobs/evaluate.py (also the console script samadapter-evaluate).
"""

import sys

from samadapter.jobs.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
