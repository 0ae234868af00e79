"""Convert a segmentation dataset into samadapter's Parquet layout at any URI (`python jobs/prepare_data.py --help`).

The entry point that `ray job submit -- python jobs/prepare_data.py`, cron and the CronJob run; the
job itself is samadapter/jobs/prepare_data.py (also the console script samadapter-prepare-data).
"""

import sys

from samadapter.jobs.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
