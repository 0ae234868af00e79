"""Benchmarks: model throughput, training-step memory, and the segment pipeline's overhead (`python jobs/benchmark.py --help`).

The entry point that `ray job submit -- python jobs/benchmark.py`, cron and the CronJob run; the
job itself is samadapter/jobs/benchmark.py (also the console script samadapter-benchmark).
"""

import sys

from samadapter.jobs.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
