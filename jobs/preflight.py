"""Before anything is launched: what each job asks a cluster for, and which nodes it would start.

    python jobs/preflight.py --cluster ray_cluster.yaml
    python jobs/preflight.py --cluster cluster/raycluster.yaml --json preflight.json --strict

For the nightly (the segment command of the cluster's schedule: cluster/nightly.crontab
beside ray_cluster.yaml, cluster/cronjob-segment.yaml beside a RayCluster; --schedule) at
its largest pool, and for training with a recipe (--recipe, default the paper's), it
prints the resource bundles, the node types Ray's own autoscaler scheduler would launch for
them on the file's node types (a RayCluster's worker groups), their count and hourly cost
(cluster/prices.yaml, yours to edit), the placeholders still in the files and missing
settings. Nothing is launched and no cloud API is called.

Exit status: 0 fine; 1 a job would land on another job's node type (node types belong to
the job whose accelerator type they carry), or a job's bundles fit nowhere, or (with
--strict) placeholders or missing settings remain; 2 a file that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from samadapter.cli import doc_parser


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("preflight.py", __doc__)
    p.add_argument("--cluster", required=True, help="ray_cluster.yaml (ray up) or a KubeRay RayCluster manifest")
    p.add_argument("--schedule", default=None,
                   help="the nightly's crontab or CronJob (default: the one beside the cluster file)")
    p.add_argument("--recipe", default=None, help="training recipe (default configs/cod10k-vit-h.yaml)")
    p.add_argument("--prices", default=None, help="price table (default cluster/prices.yaml beside the cluster file)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--strict", action="store_true", help="placeholders and missing settings are errors too")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from samadapter.preflight import PreflightError, report_lines, run_preflight
    from samadapter.train.config import ConfigError

    try:
        report = run_preflight(args.cluster, args.schedule, args.recipe, args.prices)
    except (PreflightError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(report)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if report["errors"] or (args.strict and (report["placeholders"] or report["warnings"])):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
