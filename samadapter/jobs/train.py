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
checkpoint. Every recipe field is a flag (--optim.lr 1e-4, --model.arch vit_b, --run.workers 8)
and can be set with --set section.key=value, also inside mappings:
--set model.overrides.img_size=512 --set model.overrides.knowledge=fft+edges. Flags and
--set apply over the recipe in the order given.

The recipe's task (camouflage, shadow, polyp, generic; --task shadow) selects the loss,
the validation metrics and the metric that picks the best checkpoint (S-measure up, BER
down, Dice up, IoU up): python jobs/train.py --config configs/local-tiny-shadow.yaml runs
the shadow task on synthetic shadow scenes.
"""

from __future__ import annotations

import argparse
import sys

from samadapter import config as settings
from samadapter.cli import doc_parser, guarded, storage_error
from samadapter.ray_session import setup_logging
from samadapter.train.config import RECIPES, ConfigError, TrainConfig

DEFAULT_CONFIG = f"{RECIPES}/local-tiny.yaml"
# The short flags users know, each the same as its dotted flag.
ALIASES = {"--dataset": "data.dataset", "--sam-checkpoint": "model.sam_checkpoint", "--storage": "run.storage",
           "--name": "run.name", "--workers": "run.workers", "--gpus-per-worker": "run.gpus_per_worker",
           "--epochs": "optim.epochs", "--task": "task"}


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("train.py", __doc__)
    p.add_argument("--resume", action="store_true", help="require an existing run of this name to continue")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--verbose", action="store_true", help="show Ray's own INFO log lines (default: its warnings and errors)")
    settings.add_arguments(p, TrainConfig, aliases=ALIASES, default_file=DEFAULT_CONFIG,
                           config_help="a recipe YAML (default configs/local-tiny.yaml, the embedded default; "
                                       "the defaults below are its values)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe (--config, default configs/local-tiny.yaml) with the command line's flags
    and --set applied in order."""
    return settings.build(TrainConfig, args, default_file=DEFAULT_CONFIG, listing_dir=RECIPES)


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
    print(f"metrics:           {outcome.run_uri}/metrics.jsonl, curves: {outcome.run_uri}/curves.png")
    if outcome.tracking_run_id:
        print(f"tracking:          {outcome.tracking_uri} (MLflow run {outcome.tracking_run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
