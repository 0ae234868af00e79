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
    python jobs/segment.py --compact-ledger --output s3://bucket/masks/   (the ledger's files into a few)

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
models segmented, --retry-failed retries failures, --force redoes everything. A ledger
file that cannot be read is moved to ledger/_quarantine/ (named in a warning) and its
inputs are redone.

Exit statuses:
{statuses}
"""

from __future__ import annotations

import argparse
import os
import sys

from samadapter.ray_session import setup_logging
from samadapter import config as settings
from samadapter.cli import doc_parser, guarded
from samadapter.config import ConfigError
from samadapter.segment.run import EXIT_STATUSES, SegmentConfig

__doc__ = __doc__.format(statuses="\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_STATUSES.items()))

DEFAULT_RUN = os.path.join("runs", "local-tiny")
DEFAULT_OUTPUT = os.path.join("outputs", "segment-local-tiny")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("segment.py", __doc__)
    settings.add_arguments(p, SegmentConfig)  # every SegmentConfig field, with its default and choices
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")
    p.add_argument("--verbose", action="store_true", help="show Ray's own INFO log lines (default: its warnings and errors)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        values = settings.resolve(SegmentConfig, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if values.get("compact_ledger"):
        return _compact(values)
    embedded = values.get("input") is None and values.get("input_list") is None and values.get("checkpoint") is None
    if values.get("input") is None and values.get("input_list") is None:
        from samadapter.data.records import DATASET_INFO_FILE
        from samadapter.train.config import DataConfig

        values["input"] = DataConfig().dataset_uri()
        values["split"] = values.get("split") or "test"
        if not os.path.exists(os.path.join(values["input"], DATASET_INFO_FILE)):
            print(f"error: the embedded synthetic dataset is not at {values['input']}; run `python jobs/train.py` "
                  "first (it creates the dataset and a checkpoint), or pass --input", file=sys.stderr)
            return 2
    if values.get("checkpoint") is None:
        values["checkpoint"] = os.path.abspath(DEFAULT_RUN)
        if not os.path.isdir(values["checkpoint"]):
            print(f"error: no checkpoint given and no training run at {values['checkpoint']}; run "
                  "`python jobs/train.py` first, or pass --checkpoint", file=sys.stderr)
            return 2
    if values.get("output") is None:
        values["output"] = os.path.abspath(DEFAULT_OUTPUT)
    if embedded:
        values["overlays"] = True
    try:
        cfg = settings.from_dict(SegmentConfig, values)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from samadapter.modeling.weights import CheckpointError
    from samadapter.segment.lease import LeaseHeld
    from samadapter.segment.run import (LEASE_STATUS, MODEL_START_STATUS, STORAGE_STATUS, ModelStartError,
                                        run_segmentation, summary_lines)

    s, status = guarded(lambda: run_segmentation(cfg, progress=not args.no_progress),
                        (FileNotFoundError, CheckpointError, ValueError), storage_status=STORAGE_STATUS,
                        own_errors={ModelStartError: MODEL_START_STATUS, LeaseHeld: LEASE_STATUS})
    if status is not None:
        return status
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


def _compact(values: dict) -> int:
    from samadapter.segment.lease import LeaseHeld
    from samadapter.segment.run import LEASE_STATUS, STORAGE_STATUS, compact_ledger

    output = values.get("output")
    if not output:
        print("error: --compact-ledger needs --output (the nightly's output prefix)", file=sys.stderr)
        return 2
    defaults = settings.defaults(SegmentConfig)
    wait = values.get("wait_for_lease", defaults["wait_for_lease"])
    timeout = values.get("lease_timeout_minutes", defaults["lease_timeout_minutes"])
    done, status = guarded(lambda: compact_ledger(output, wait, timeout), (FileNotFoundError, ValueError),
                           storage_status=STORAGE_STATUS, own_errors={LeaseHeld: LEASE_STATUS})
    if status is not None:
        return status
    for fp, n in sorted(done.items()):
        print(f"fingerprint={fp}: {n} ledger files compacted")
    if not done:
        print(f"nothing to compact under {output}/ledger/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
