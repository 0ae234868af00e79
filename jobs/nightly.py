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
import os
import sys

from samadapter.cli import doc_parser
from samadapter.nightly import EXIT_STATUSES, NightlyConfig, run_nightly

__doc__ = __doc__.format(statuses="\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_STATUSES.items()))


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("nightly.py", __doc__)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                   help="the Ray dashboard / job API (default $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--night", default=None, help="YYYY-MM-DD the run belongs to (default: today, UTC)")
    p.add_argument("--prefix", default=NightlyConfig.prefix, help="submission id prefix (default %(default)s)")
    p.add_argument("--deadline-hours", type=float, default=NightlyConfig.deadline_hours,
                   help="stop an attempt still running this long after the night's first attempt started "
                        "(default %(default)s)")
    p.add_argument("--max-attempts", type=int, default=NightlyConfig.max_attempts,
                   help="attempts per night, counting failed ones (default %(default)s)")
    p.add_argument("--poll-seconds", type=float, default=NightlyConfig.poll_seconds, help="status poll interval")
    p.add_argument("--api-grace-minutes", type=float, default=NightlyConfig.api_grace_minutes,
                   help="keep retrying a job API that does not answer this long, then exit 5 (default %(default)s)")
    p.add_argument("--notify", default=os.environ.get("SAMADAPTER_NOTIFY") or None,
                   help="where a night that did not succeed is reported: an SNS topic ARN (arn:aws:sns:...) or a "
                        "webhook URL receiving a JSON POST (default $SAMADAPTER_NOTIFY; unset: nothing is sent)")
    p.add_argument("--working-dir", default=None,
                   help="upload this directory as the job's working_dir (default: none, the image holds the project)")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- the job's command")
    args = p.parse_args(argv)
    if args.entrypoint and args.entrypoint[0] == "--":
        args.entrypoint = args.entrypoint[1:]
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = NightlyConfig(address=args.address, entrypoint=args.entrypoint, night=args.night, prefix=args.prefix,
                            deadline_hours=args.deadline_hours, max_attempts=args.max_attempts,
                            poll_seconds=args.poll_seconds, api_grace_minutes=args.api_grace_minutes,
                            working_dir=args.working_dir, notify=args.notify)
    except ValueError as exc:
        print(f"nightly.py: error: {exc}", file=sys.stderr)
        return 2
    return run_nightly(cfg)


if __name__ == "__main__":
    sys.exit(main())
