"""Batch-segment images with Ray Data: one frozen encoder + adapter per actor (`python jobs/segment.py --help`).

The entry point that `ray job submit -- python jobs/segment.py`, cron and the CronJob run; the
job itself is samadapter/jobs/segment.py (also the console script samadapter-segment).
"""

import sys

from samadapter.jobs.segment import main

if __name__ == "__main__":
    sys.exit(main())
