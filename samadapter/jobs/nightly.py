"""Run a Ray job at most once per night: what cron (ray_cluster.yaml) and the Kubernetes CronJob call.

    python jobs/nightly.py --address http://127.0.0.1:8265 --deadline-hours 6 -- \\
        python /home/ray/samadapter/jobs/segment.py --input s3://bucket/images/ \\
        --output s3://bucket/masks/ --checkpoint s3://bucket/runs/cod10k-vit-h --device cuda

Tonight's attempts have fixed submission ids (<prefix>-<YYYY-MM-DD>-a1, -a2, ...): a second
invocation while an attempt is pending or running follows that attempt instead of
submitting another; after a success it exits 0 at once; after a failure it submits the
next attempt itself, up to --max-attempts; a stopped attempt is not retried tonight. The
deadline counts from the night's first attempt. It streams the job's logs, then waits for
the job's final status; after stopping a job it clears the cluster's GPU request. Give the
nightly job a whole prefix: the segment job's ledger makes it process only objects it has
not done yet.

Exit statuses (a non-zero one is also sent to --notify when set):
{statuses}
"""

from __future__ import annotations

import argparse
import logging
import sys

from samadapter import config as settings
from samadapter.cli import doc_parser
from samadapter.config import ConfigError
from samadapter.nightly import EXIT_STATUSES, NightlyConfig, run_nightly

__doc__ = __doc__.format(statuses="\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_STATUSES.items()))


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("nightly.py", __doc__)
    settings.add_arguments(p, NightlyConfig, skip=("entrypoint",))
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- the job's command")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.entrypoint and args.entrypoint[0] == "--":
        args.entrypoint = args.entrypoint[1:]
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        values = settings.resolve(NightlyConfig, args)
        values["entrypoint"] = args.entrypoint
        cfg = settings.from_dict(NightlyConfig, values)
    except ConfigError as exc:
        print(f"nightly.py: error: {exc}", file=sys.stderr)
        return 2
    return run_nightly(cfg)


if __name__ == "__main__":
    sys.exit(main())
