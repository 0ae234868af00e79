"""Batch-segment images with Ray Data: one frozen encoder + adapter per actor.

With no arguments: segments the embedded default's synthetic test images with the
latest local-tiny training run (./runs/local-tiny, from `python jobs/train.py`) into
./outputs/segment-local-tiny, with overlays.

Nightly, on a cluster (GPU nodes may be scaled to zero: the actors ask for GPUs, the
pool is sized by what the cluster can scale to, and its nodes are requested at once):
    ray job submit --working-dir . -- python jobs/segment.py \\
        --input s3://bucket/images/2026-11-29/ --output s3://bucket/masks/ \\
        --checkpoint s3://bucket/runs/cod10k-vit-h --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth
    ... --input-list s3://inventory/bucket/daily/2026-11-29T01-00Z/manifest.json   (S3 Inventory)
    ... --dry-run      (plan only: listed, done, known failures, to do; no model is built)

Inputs: a prefix of images (listed by parallel Ray tasks), a prefix of .tar archives, a
Parquet dataset from jobs/prepare_data.py (--split), or --input-list: a Parquet/CSV key
list (column uri, or key relative to --input-root) or an S3 Inventory manifest.json
(CSV or Parquet; fields Bucket, Key, Size, ETag, IsLatest, IsDeleteMarker). An input is
its full URI; outputs mirror its key relative to --input-root (default: the bucket root,
or the --input folder): masks/<key>.png (1 bit per pixel at the original size), optional
probs/ and overlays/, and ledger/fingerprint=<model>/*.parquet, one row per input.
Sidecar files (.json, .txt, _SUCCESS, ...) are skipped, not failures; keys without an
extension are decoded if their content is an image.

A night processes inputs that no model has segmented yet (same object version) and does
not retry permanent failures (bad image files): --backfill redoes inputs that only older
models segmented, --retry-failed retries failures, --force redoes everything. The exit
status is 1 when more than --max-failed-fraction of tonight's inputs failed or every one
failed, 0 on a night with nothing new, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samadapter.cli import doc_parser, storage_error  # noqa: E402

from samadapter.segment.run import SegmentConfig  # noqa: E402

DEFAULT_RUN = os.path.join("runs", "local-tiny")
DEFAULT_OUTPUT = os.path.join("outputs", "segment-local-tiny")


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("segment.py", __doc__)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--input", help="image prefix, .tar prefix or Parquet dataset (URI); default: the embedded synthetic test split")
    g.add_argument("--input-list", help="key list instead of --input: Parquet/CSV with a uri (or key) column, or an S3 Inventory manifest.json")
    g.add_argument("--input-root", help="outputs mirror input keys relative to this URI (default: the bucket root of --input, or the --input folder; "
                   "an inventory's source bucket)")
    g.add_argument("--input-format", choices=["auto", "images", "tar", "parquet"], default="auto")
    g.add_argument("--split", help="split of a Parquet dataset input (default test)")
    g.add_argument("--output", help=f"output prefix (URI); default {DEFAULT_OUTPUT}")
    g.add_argument("--checkpoint", help=f"adapter .safetensors, a checkpoint folder, or a training run folder (its best checkpoint); default {DEFAULT_RUN}")
    g.add_argument("--sam-checkpoint", help="the official SAM weights the adapter was trained on (path or URI)")
    g.add_argument("--save-probs", action="store_true", help="also write 8-bit probability maps under probs/")
    g.add_argument("--overlays", action="store_true", help="also write image | overlay pictures under overlays/")
    g = p.add_argument_group("what a night does")
    g.add_argument("--dry-run", action="store_true", help="plan only and print the table (listed, done, known failures, to do); builds no model")
    g.add_argument("--backfill", action="store_true", help="also redo inputs that only other (older) models segmented")
    g.add_argument("--retry-failed", action="store_true", help="retry inputs that failed permanently before (bad image files)")
    g.add_argument("--force", action="store_true", help="redo every input")
    g.add_argument("--max-failed-fraction", type=float, default=0.01, help="exit 1 above this fraction of failures among tonight's inputs (default 0.01)")
    g = p.add_argument_group("model and resources")
    g.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="auto (default): GPUs wherever the cluster has or can scale up GPUs, else CPU; cpu: run on CPUs on purpose")
    g.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per model actor (default: 1, or 0 where no GPU can exist)")
    g.add_argument("--min-actors", type=int, default=1, help="smallest model actor pool (default 1)")
    g.add_argument("--max-actors", type=int, default=None, help="largest model actor pool (default: the GPUs the cluster can scale to)")
    g.add_argument("--gpu-wait-minutes", type=float, default=20.0, help="fail if the first GPU nodes are not up after this long (default 20)")
    g.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    g.add_argument("--ledger-rows-per-file", type=int, default=20_000,
                   help="ledger rows per Parquet file written by the workers (default 20000; a killed run redoes at most this many per writer)")
    g.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks (default 0.5)")
    g.add_argument("--resize-mode", choices=["squash", "pad"], default="squash", help="how images are fitted to the model input (default squash, as trained)")
    g.add_argument("--attention", choices=["auto", "fast", "original"], default="auto", help="encoder attention path (default auto: fast for SAM's 14-token windows, original for tiny)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model in each actor (slower start, faster steady state on GPU)")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    embedded = args.input is None and args.input_list is None and args.checkpoint is None
    if args.input is None and args.input_list is None:
        from samadapter.data.records import DATASET_INFO_FILE
        from samadapter.train.config import DataConfig

        args.input = DataConfig().dataset_uri()
        args.split = args.split or "test"
        if not os.path.exists(os.path.join(args.input, DATASET_INFO_FILE)):
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
            input=args.input, input_list=args.input_list, input_root=args.input_root, output=args.output,
            checkpoint=args.checkpoint, sam_checkpoint=args.sam_checkpoint, input_format=args.input_format, split=args.split,
            batch_size=args.batch_size, device=args.device, gpus_per_actor=args.gpus_per_actor, min_actors=args.min_actors,
            max_actors=args.max_actors, gpu_wait_minutes=args.gpu_wait_minutes, save_probs=args.save_probs,
            overlays=args.overlays, force=args.force, backfill=args.backfill, retry_failed=args.retry_failed,
            dry_run=args.dry_run, max_failed_fraction=args.max_failed_fraction, threshold=args.threshold,
            resize_mode=args.resize_mode, attention=args.attention, compile=args.compile,
            ledger_rows_per_file=args.ledger_rows_per_file,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from samadapter.modeling.weights import CheckpointError
    from samadapter.segment.run import run_segmentation, summary_lines

    try:
        s = run_segmentation(cfg, progress=not args.no_progress)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        if not storage_error(exc):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - object storage problems are one line, anything else a traceback
        if storage_error(exc):
            return 2
        raise
    print()
    print("\n".join(summary_lines(s)))
    if cfg.dry_run:
        return 0
    print(f"masks:     {cfg.output}/masks/")
    if cfg.save_probs:
        print(f"probs:     {cfg.output}/probs/")
    if cfg.overlays:
        print(f"overlays:  {cfg.output}/overlays/")
    print(f"ledger:    {cfg.output}/ledger/")
    if s.listed == 0:
        print(f"error: no inputs under {cfg.input or cfg.input_list}", file=sys.stderr)
        return 1
    if s.todo == 0:
        print("nothing new tonight: every listed input is already in the ledger")
        return 0
    if s.work and s.ok == 0:
        print(f"error: nothing could be processed: all {s.work} inputs failed", file=sys.stderr)
        return 1
    if s.failed_fraction > cfg.max_failed_fraction:
        print(f"error: {s.failed_total}/{s.work} of tonight's inputs failed ({s.failed_fraction:.1%} > "
              f"--max-failed-fraction {cfg.max_failed_fraction:.1%})", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
