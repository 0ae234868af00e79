"""Train SAM-Adapter data-parallel with Ray Train.

With no arguments: the embedded local default (configs/local-tiny.yaml) - a tiny model
on synthetic camouflage scenes (generated once into ~/.cache/samadapter), two CPU
workers on a local Ray - then the metric table before/after training and where the
checkpoint is.

On a cluster:
    ray job submit --working-dir . -- python jobs/train.py --config configs/cod10k-vit-h.yaml \\
        --dataset s3://bucket/cod10k --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth \\
        --storage s3://bucket/runs --name cod10k-vit-h

Rerunning with the same --name (and storage) continues from the run's latest
checkpoint. Any config field can be set with --set section.key=value, e.g.
--set optim.lr=1e-4 --set model.overrides.img_size=512 --set model.overrides.knowledge=fft+edges.

The recipe's task (camouflage, shadow, polyp, generic; --set task=shadow) selects the loss,
the validation metrics and the metric that picks the best checkpoint (S-measure up, BER
down, Dice up, IoU up): python jobs/train.py --config configs/local-tiny-shadow.yaml runs
the shadow task on synthetic shadow scenes.
"""

from __future__ import annotations

import argparse
import os
import sys

from samadapter.ray_session import setup_logging
from samadapter.cli import doc_parser, guarded, storage_error
from samadapter.train.config import ConfigError, TrainConfig

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "local-tiny.yaml")


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("train.py", __doc__)
    p.add_argument("--config", default=None, help="a recipe YAML (default: the embedded configs/local-tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field (repeatable), e.g. optim.epochs=5")
    p.add_argument("--dataset", help="dataset URI from jobs/prepare_data.py (data.dataset)")
    p.add_argument("--sam-checkpoint", help="official SAM weights, path or URI (model.sam_checkpoint)")
    p.add_argument("--storage", help="where runs are kept: path or URI such as s3://bucket/runs (run.storage)")
    p.add_argument("--name", help="run name; rerunning a name resumes it (run.name)")
    p.add_argument("--workers", type=int, help="number of training workers (run.workers)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; 0 trains on CPU (run.gpus_per_worker)")
    p.add_argument("--epochs", type=int, help="optim.epochs")
    p.add_argument("--resume", action="store_true", help="require an existing run of this name to continue")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true", help="show Ray's own INFO log lines (default: its warnings and errors)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.from_yaml(args.config or DEFAULT_CONFIG)
    sets = list(args.overrides)
    for flag, key in (
        ("dataset", "data.dataset"),
        ("sam_checkpoint", "model.sam_checkpoint"),
        ("storage", "run.storage"),
        ("name", "run.name"),
        ("workers", "run.workers"),
        ("gpus_per_worker", "run.gpus_per_worker"),
        ("epochs", "optim.epochs"),
    ):
        value = getattr(args, flag)
        if value is not None:
            sets.append(f"{key}={value}")
    return cfg.with_overrides(sets)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = build_config(args)
    except (ConfigError, OSError) as exc:
        if not storage_error(exc):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml())
        return 0

    from samadapter.train.driver import run_training, summary_table

    outcome, status = guarded(lambda: run_training(cfg, resume=args.resume), (ConfigError,))
    if status is not None:
        return status
    print()
    print(f"run: {outcome.run_uri}" + (" (resumed)" if outcome.resumed else ""))
    print(summary_table(outcome))
    print(f"best checkpoint:   {outcome.best_checkpoint}")
    print(f"best adapter:      {outcome.best_adapter}")
    print(f"latest checkpoint: {outcome.latest_checkpoint}")
    print(f"metrics:           {outcome.run_uri}/metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
