"""Run a Ray job at most once per night: what cron (ray_cluster.yaml) and the Kubernetes CronJob call (`python jobs/nightly.py --help`).

The entry point that `ray job submit -- python jobs/nightly.py`, cron and the CronJob run; the
job itself is samadapter/jobs/nightly.py (also the console script samadapter-nightly).
"""

import sys

from samadapter.jobs.nightly import main

if __name__ == "__main__":
    sys.exit(main())
