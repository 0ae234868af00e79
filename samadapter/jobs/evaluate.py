"""Evaluate SAM-Adapter on a dataset split with its task's metrics.

    python jobs/evaluate.py --dataset s3://bucket/cod --split test --checkpoint s3://bucket/runs/cod10k-vit-h \\
        --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth
    python jobs/evaluate.py --dataset s3://bucket/cod --split test --predictions s3://bucket/masks/

At each ground truth's original resolution, the metrics of the task (--task; default the
dataset's task recorded by prepare_data, else the one the checkpoint was trained for, else
camouflage; a dataset and checkpoint that disagree are named in a warning): camouflage - S-measure
(alpha 0.5), mean E-measure, weighted F-measure, MAE; shadow - BER with shadow and
non-shadow errors (percent); polyp and generic - Dice, IoU, MAE. Writes metrics.json, metrics.md (a Markdown table) and examples.png
(the best and worst images: image | ground truth | prediction) to --output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dataclasses import dataclass
from typing import Optional

from samadapter import config as settings
from samadapter.cli import doc_parser, guarded
from samadapter.config import ConfigError, option
from samadapter.tasks import TASKS


@dataclass
class EvaluateConfig:
    """What to score, against what."""

    dataset: str = option(help="dataset URI (jobs/prepare_data.py)")
    split: str = option("test", "split to score")
    checkpoint: Optional[str] = option(None, "adapter .safetensors, checkpoint folder or training run folder")
    predictions: Optional[str] = option(None, "instead of --checkpoint: the output prefix of jobs/segment.py run on "
                                              "this dataset")
    sam_checkpoint: Optional[str] = option(None, "the official SAM weights of the adapter (with --checkpoint)")
    task: Optional[str] = option(None, "whose metrics to report (default: the dataset's task from its _dataset.json, "
                                       "else the checkpoint's, else camouflage)",
                                 choices=sorted(TASKS))
    batch_size: int = option(4, "images per model call")
    resize_mode: str = option("squash", "how images are fitted to the model input (as trained)",
                              choices=("squash", "pad"))
    img_size: Optional[int] = option(None, "with --checkpoint: model input side (default: the adapter's; e.g. 512 "
                                           "to measure what a cheaper nightly loses)")
    output: Optional[str] = option(None, "where the report goes (default: <checkpoint or predictions>/eval-<split>)")

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.predictions is None):
            raise ConfigError("give exactly one of --checkpoint (score a model) and --predictions (score its masks)")
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}: choose one of {sorted(TASKS)}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("evaluate.py", __doc__)
    settings.add_arguments(p, EvaluateConfig)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = settings.build(EvaluateConfig, parse_args(argv))
    except ConfigError as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    from samadapter import storage
    from samadapter.metrics import format_table
    from samadapter.modeling.weights import CheckpointError
    from samadapter.evaluate.evaluation import evaluate_checkpoint, evaluate_predictions, write_report

    source = args.checkpoint or args.predictions
    base = source.rsplit("/", 1)[0] if source.endswith(".safetensors") else source
    output = args.output or storage.join(base, f"eval-{args.split}")
    if args.checkpoint:
        ev, status = guarded(lambda: evaluate_checkpoint(args.dataset, args.split, args.checkpoint, args.sam_checkpoint,
                                                         args.batch_size, args.resize_mode, task=args.task,
                                                         img_size=args.img_size),
                             (FileNotFoundError, CheckpointError, ValueError))
    else:
        ev, status = guarded(lambda: evaluate_predictions(args.dataset, args.split, args.predictions,
                                                          task=args.task),
                             (FileNotFoundError, CheckpointError, ValueError))
    if status is not None:
        return status
    label = f"{args.split} ({os.path.basename(source.rstrip('/'))})"
    uris = write_report(ev, output, label)
    print(f"task: {ev.task}")
    print(format_table({label: ev.metrics}, TASKS[ev.task].names))
    if ev.skipped:
        print(f"skipped {len(ev.skipped)} images, e.g. {ev.skipped[:3]}")
    for name, uri in uris.items():
        print(f"{name:<13} {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
