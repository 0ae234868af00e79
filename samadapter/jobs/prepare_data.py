"""Convert a segmentation dataset into samadapter's Parquet layout at any URI.

Examples:
    python jobs/prepare_data.py --source synthetic --num-train 64 --num-test 16 --output /tmp/synth
    python jobs/prepare_data.py --source cod10k --input /data/COD10K-v3 --output s3://bucket/cod10k
    python jobs/prepare_data.py --source paired --images imgs/ --masks gts/ --split test --output out/
    python jobs/prepare_data.py --source istd --input /data/ISTD_Dataset --output s3://bucket/istd
    python jobs/prepare_data.py --source kvasir --input /data/Kvasir-SEG --output s3://bucket/kvasir
    python jobs/prepare_data.py --source synthetic --kind shadow --output /tmp/shadow
    python jobs/prepare_data.py --source indexed --images imgs/ --masks labels/ --classes classes.txt --split train --output out/
    python jobs/prepare_data.py --source synthetic --kind multiclass --output /tmp/classes

Released layouts: istd train/{train_A,train_B} + test/{test_A,test_B}; sbu
SBUTrain4KRecoveredSmall/{ShadowImages,ShadowMasks} + SBU-Test/{ShadowImages,ShadowMasks};
kvasir images/ + masks/; cvc Original/ + "Ground Truth"/ (TIFF). Kvasir-SEG and CVC-ClinicDB
have no official split: --test-percent of the file names (by a stable hash) become "test".

Layout written: <output>/<split>/part-NNNNN.parquet (image_id, image, mask, height, width,
split, source) and <output>/_dataset.json (counts per split; written last). S3-compatible
endpoints (MinIO, ...) come from AWS_ENDPOINT_URL; credentials from the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter


from dataclasses import dataclass
from typing import Optional

from samadapter import config as settings
from samadapter.cli import doc_parser, guarded
from samadapter.config import ConfigError, option
from samadapter.data import sources
from samadapter.data.prepare import prepare_dataset
from samadapter.data.synthetic import SCENES
from samadapter.data.records import DEFAULT_SHARD_MB, DatasetExistsError
from samadapter.data.transforms import DEFAULT_MAX_PIXELS
from samadapter.tasks import TASKS


SOURCES = ("cod10k", *sources.TASK_LAYOUTS, "paired", "indexed", "synthetic")
RELEASED, PAIRED, SYNTHETIC, OUTPUT = "cod10k, istd, sbu, kvasir, cvc", "paired, indexed", "synthetic", "output"


@dataclass
class PrepareConfig:
    """What to convert and where to."""

    source: str = option(help="cod10k: a COD10K-v3 or COD release folder (layout detected); istd, sbu (shadows), "
                              "kvasir, cvc (polyps): the dataset's released folder; paired: any image/mask folder "
                              "pair matched by file stem; indexed: the same with index masks of several classes "
                              "(--classes); synthetic: generated scenes (--kind)", choices=SOURCES)
    output: str = option(help="dataset URI: local path, file://, s3://bucket/prefix, ...")
    input: Optional[str] = option(None, "the dataset folder (local path or URI)", group=RELEASED)
    include_noncam: bool = option(False, "keep COD10K-v3 NonCAM images (skipped by default)", group=RELEASED)
    test_percent: float = option(10.0, "kvasir, cvc: percent of images put in the test split", group=RELEASED)
    images: Optional[str] = option(None, "folder of images", group=PAIRED)
    masks: Optional[str] = option(None, "folder of masks, same file stems as the images", group=PAIRED)
    split: Optional[str] = option(None, "split name for the paired folders, e.g. train or test", group=PAIRED)
    classes: Optional[str] = option(None, "indexed: a text file of class names, one a line (line i names mask "
                                          "value i; the background first)", group=PAIRED)
    num_train: int = option(256, "training scenes", group=SYNTHETIC)
    num_test: int = option(64, "test scenes", group=SYNTHETIC)
    size: int = option(256, "scene side in pixels", group=SYNTHETIC)
    seed: int = option(0, "scene seed", group=SYNTHETIC)
    kind: str = option("camouflage", "the scenes' kind", group=SYNTHETIC, choices=sorted(SCENES))
    task: Optional[str] = option(None, "what the dataset is for, recorded in _dataset.json: training and evaluation "
                                       "default to it (default: the source's - cod10k camouflage, istd/sbu shadow, "
                                       "kvasir/cvc polyp, synthetic its kind; paired: none)", group=OUTPUT,
                                 choices=sorted(TASKS))
    shard_mb: float = option(DEFAULT_SHARD_MB, "target shard size in MB", group=OUTPUT)
    overwrite: bool = option(False, "replace an existing dataset at --output", group=OUTPUT)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images larger than this many pixels", group=OUTPUT)
    workers: Optional[int] = option(None, "decode threads (default: CPU count, at most 8)", group=OUTPUT)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"--source {self.source!r}: choose one of {list(SOURCES)}")
        if (self.source == "cod10k" or self.source in sources.TASK_LAYOUTS) and not self.input:
            raise ConfigError(f"--source {self.source} needs --input DIR")
        if not 0 <= self.test_percent <= 100:
            raise ConfigError("--test-percent must be in [0, 100]")
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}: choose one of {sorted(TASKS)}")
        if self.source in ("paired", "indexed") and not (self.images and self.masks and self.split):
            raise ConfigError(f"--source {self.source} needs --images DIR --masks DIR --split NAME")
        if self.source == "indexed" and not self.classes:
            raise ConfigError("--source indexed needs --classes FILE (class names, one a line, the background first)")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("prepare_data.py", __doc__)
    settings.add_arguments(p, PrepareConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary-json", help="also write the summary (with every skipped file) to this local file")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _listing(cfg: PrepareConfig) -> sources.SourceListing:
    if cfg.source == "cod10k":
        return sources.cod_listing(cfg.input, include_noncam=cfg.include_noncam)
    if cfg.source in sources.TASK_LAYOUTS:
        return sources.task_listing(cfg.source, cfg.input, test_percent=cfg.test_percent)
    if cfg.source == "paired":
        return sources.paired_listing(cfg.images, cfg.masks, cfg.split)
    if cfg.source == "indexed":
        return sources.indexed_listing(cfg.images, cfg.masks, cfg.split, cfg.classes)
    return sources.synthetic_listing(cfg.num_train, cfg.num_test, cfg.size, cfg.seed, kind=cfg.kind)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = settings.build(PrepareConfig, args)
    except ConfigError as exc:
        print(f"prepare_data.py: error: {exc}", file=sys.stderr)
        return 2
    listing, status = guarded(lambda: _listing(cfg), (ValueError, FileNotFoundError))
    if status is not None:
        return status
    if cfg.task:
        listing.task = cfg.task
    if (listing.task == "multiclass") != bool(listing.classes):
        print("prepare_data.py: error: the multiclass task is for masks of several classes (--source indexed, or "
              "synthetic --kind multiclass), and those are for it alone", file=sys.stderr)
        return 2
    print(f"source: {listing.description}; {len(listing.candidates)} candidates; task: {listing.task or 'not recorded'}")
    summary, status = guarded(lambda: prepare_dataset(listing, cfg.output, shard_mb=cfg.shard_mb,
                                                      overwrite=cfg.overwrite, max_pixels=cfg.max_pixels,
                                                      workers=cfg.workers, progress=not args.no_progress),
                              (DatasetExistsError,))
    if status is not None:
        return status
    print(f"\nwritten to {summary['output']}:")
    for split, n in summary["written"].items():
        print(f"  {split:<16} {n:>7} rows  ({len(summary['manifest']['shards'][split])} shard(s))")
    skipped = summary["skipped"]
    print(f"skipped: {len(skipped)}")
    for status, n in sorted(Counter(s["status"] for s in skipped).items()):
        print(f"  {status:<20} {n}")
    for s in skipped[:20]:
        print(f"    {s['item']}: {s['status']} ({s['reason']})")
    if len(skipped) > 20:
        print(f"    ... {len(skipped) - 20} more (--summary-json FILE lists them all)")
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "manifest"}, f, indent=2)
    if not summary["written"]:
        print("error: nothing was written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
