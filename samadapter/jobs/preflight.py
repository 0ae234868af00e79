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

from dataclasses import dataclass
from typing import Optional

from samadapter import config as settings
from samadapter.cli import doc_parser
from samadapter.config import ConfigError, option


@dataclass
class PreflightConfig:
    """The files to check."""

    cluster: str = option(help="ray_cluster.yaml (ray up) or a KubeRay RayCluster manifest")
    schedule: Optional[str] = option(None, "the nightly's crontab or CronJob (default: the one beside the cluster file)")
    recipe: Optional[str] = option(None, "training recipe (default configs/cod10k-vit-h.yaml)")
    prices: Optional[str] = option(None, "price table (default cluster/prices.yaml beside the cluster file)")
    json: Optional[str] = option(None, "also write the report as JSON to this file", metavar="FILE")
    strict: bool = option(False, "placeholders and missing settings are errors too")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("preflight.py", __doc__)
    settings.add_arguments(p, PreflightConfig)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    from samadapter.preflight import PreflightError, report_lines, run_preflight

    try:
        args = settings.build(PreflightConfig, parse_args(argv))
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
