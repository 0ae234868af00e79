"""Batch-segment images with Ray Data: one frozen encoder + adapter per actor.

With no arguments: segments the embedded default's synthetic test images with the
latest local-tiny training run (./runs/local-tiny, from `python jobs/train.py`) into
./outputs/segment-local-tiny, with overlays.

Nightly, on a cluster:
    ray job submit --working-dir . -- python jobs/segment.py \\
        --input s3://bucket/images/2026-11-29/ --output s3://bucket/masks/ \\
        --checkpoint s3://bucket/runs/cod10k-vit-h --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth \\
        --min-actors 1 --max-actors 8

Input: a prefix of images (jpg, jpeg, png, webp, bmp, tif/tiff, gif), a prefix of .tar
archives (output keys <archive stem>/<member path>), or a Parquet dataset from
jobs/prepare_data.py (--split). Output: masks/<key>.png at the original size, optional
probs/ and overlays/, and manifest/run-<id>/*.parquet with one row per input. A rerun
with the same checkpoint only processes inputs without a finished output (--force:
all). The exit status is non-zero when more than --max-failed-fraction of the inputs
failed, or when nothing could be processed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samadapter.cli import doc_parser  # noqa: E402

from samadapter.segment.pipeline import SegmentConfig  # noqa: E402

DEFAULT_RUN = os.path.join("runs", "local-tiny")
DEFAULT_OUTPUT = os.path.join("outputs", "segment-local-tiny")


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("segment.py", __doc__)
    p.add_argument("--input", help="image prefix, .tar prefix or Parquet dataset (URI); default: the embedded synthetic test split")
    p.add_argument("--output", help=f"output prefix (URI); default {DEFAULT_OUTPUT}")
    p.add_argument("--checkpoint", help=f"adapter .safetensors, a checkpoint folder, or a training run folder (its best checkpoint); default {DEFAULT_RUN}")
    p.add_argument("--sam-checkpoint", help="the official SAM weights the adapter was trained on (path or URI)")
    p.add_argument("--input-format", choices=["auto", "images", "tar", "parquet"], default="auto")
    p.add_argument("--split", help="split of a Parquet dataset input (default test)")
    p.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per model actor (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--min-actors", type=int, default=1, help="smallest model actor pool (default 1)")
    p.add_argument("--max-actors", type=int, default=None, help="largest model actor pool (default: the cluster's GPU count, 1 on CPU)")
    p.add_argument("--save-probs", action="store_true", help="also write 8-bit probability maps under probs/")
    p.add_argument("--overlays", action="store_true", help="also write image | overlay pictures under overlays/")
    p.add_argument("--force", action="store_true", help="reprocess inputs that already have a finished output")
    p.add_argument("--max-failed-fraction", type=float, default=0.01, help="exit non-zero above this fraction of failed inputs (default 0.01)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks (default 0.5)")
    p.add_argument("--resize-mode", choices=["squash", "pad"], default="squash", help="how images are fitted to the model input (default squash, as trained)")
    p.add_argument("--attention", choices=["auto", "fast", "original"], default="auto", help="encoder attention path (default auto: fast for SAM's 14-token windows, original for tiny)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in each actor (slower start, faster steady state on GPU)")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    embedded = args.input is None and args.checkpoint is None
    if args.input is None:
        from samadapter.train.config import DataConfig

        args.input = DataConfig().dataset_uri()
        args.split = args.split or "test"
        if not os.path.exists(os.path.join(args.input, "_dataset.json")):
            print(f"error: the embedded synthetic dataset is not at {args.input}; run `python jobs/train.py` first "
                  "(it creates the dataset and a checkpoint), or pass --input", file=sys.stderr)
            return 2
    if args.checkpoint is None:
        args.checkpoint = os.path.abspath(DEFAULT_RUN)
        if not os.path.isdir(args.checkpoint):
            print(f"error: no checkpoint given and no training run at {args.checkpoint}; run `python jobs/train.py` "
                  "first, or pass --checkpoint", file=sys.stderr)
            return 2
    if args.output is None:
        args.output = os.path.abspath(DEFAULT_OUTPUT)
    if embedded:
        args.overlays = True
    try:
        cfg = SegmentConfig(
            input=args.input, output=args.output, checkpoint=args.checkpoint, sam_checkpoint=args.sam_checkpoint,
            input_format=args.input_format, split=args.split, batch_size=args.batch_size,
            gpus_per_actor=args.gpus_per_actor, min_actors=args.min_actors, max_actors=args.max_actors,
            save_probs=args.save_probs, overlays=args.overlays, force=args.force,
            max_failed_fraction=args.max_failed_fraction, threshold=args.threshold, resize_mode=args.resize_mode,
            attention=args.attention, compile=args.compile,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from samadapter.modeling.weights import CheckpointError
    from samadapter.segment.pipeline import run_segmentation

    try:
        s = run_segmentation(cfg, progress=not args.no_progress)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(f"model fingerprint {s.fingerprint}, run {s.run_id}")
    print(f"inputs listed        {s.listed}")
    print(f"skipped (done)       {s.skipped_done}")
    print(f"processed            {s.processed}   ({s.images_per_s:.1f} images/s over {s.seconds:.1f} s"
          + (f"; first results after {s.first_output_s:.1f} s" if s.first_output_s is not None else "") + ")")
    print(f"  ok                 {s.ok}")
    for status, n in sorted(s.failed.items()):
        print(f"  failed: {status:<12} {n}")
    print(f"masks:     {cfg.output}/masks/")
    if cfg.save_probs:
        print(f"probs:     {cfg.output}/probs/")
    if cfg.overlays:
        print(f"overlays:  {cfg.output}/overlays/")
    print(f"manifest:  {s.manifest}/")
    if s.listed == 0:
        print(f"error: no inputs under {cfg.input}", file=sys.stderr)
        return 1
    if s.processed and s.ok == 0 and s.skipped_done == 0:
        print("error: nothing could be processed: every input failed", file=sys.stderr)
        return 1
    if s.failed_fraction > cfg.max_failed_fraction:
        print(f"error: {s.failed_total}/{s.processed} inputs failed ({s.failed_fraction:.1%} > "
              f"--max-failed-fraction {cfg.max_failed_fraction:.1%})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
