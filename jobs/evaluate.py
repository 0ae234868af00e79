"""Evaluate SAM-Adapter on a dataset split with its task's metrics.

    python jobs/evaluate.py --dataset s3://bucket/cod --split test --checkpoint s3://bucket/runs/cod10k-vit-h \\
        --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth
    python jobs/evaluate.py --dataset s3://bucket/cod --split test --predictions s3://bucket/masks/

At each ground truth's original resolution, the metrics of the task (--task; default the
task the checkpoint was trained for, camouflage for --predictions): camouflage - S-measure
(alpha 0.5), mean E-measure, weighted F-measure, MAE; shadow - BER with shadow and
non-shadow errors (percent); polyp and generic - Dice, IoU, MAE. Writes metrics.json, metrics.md (a Markdown table) and examples.png
(the best and worst images: image | ground truth | prediction) to --output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from samadapter.cli import doc_parser, guarded
from samadapter.tasks import TASKS


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("evaluate.py", __doc__)
    p.add_argument("--dataset", required=True, help="dataset URI (jobs/prepare_data.py)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="adapter .safetensors, checkpoint folder or training run folder")
    src.add_argument("--predictions", help="output prefix of jobs/segment.py run on this dataset")
    p.add_argument("--sam-checkpoint", help="the official SAM weights of the adapter (with --checkpoint)")
    p.add_argument("--task", choices=sorted(TASKS), help="whose metrics to report (default: the checkpoint's task; camouflage)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resize-mode", choices=["squash", "pad"], default="squash")
    p.add_argument("--output", help="where the report goes (default: <checkpoint or predictions>/eval-<split>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from samadapter import storage
    from samadapter.metrics import format_table
    from samadapter.modeling.weights import CheckpointError
    from samadapter.evaluate.evaluation import evaluate_checkpoint, evaluate_predictions, write_report

    source = args.checkpoint or args.predictions
    base = source.rsplit("/", 1)[0] if source.endswith(".safetensors") else source
    output = args.output or storage.join(base, f"eval-{args.split}")
    if args.checkpoint:
        ev, status = guarded(lambda: evaluate_checkpoint(args.dataset, args.split, args.checkpoint, args.sam_checkpoint,
                                                         args.batch_size, args.resize_mode, task=args.task),
                             (FileNotFoundError, CheckpointError, ValueError))
    else:
        ev, status = guarded(lambda: evaluate_predictions(args.dataset, args.split, args.predictions,
                                                          task=args.task or "camouflage"),
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
