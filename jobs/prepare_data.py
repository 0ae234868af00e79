"""Convert a segmentation dataset into samadapter's Parquet layout at any URI.

Examples:
    python jobs/prepare_data.py --source synthetic --num-train 64 --num-test 16 --output /tmp/synth
    python jobs/prepare_data.py --source cod10k --input /data/COD10K-v3 --output s3://bucket/cod10k
    python jobs/prepare_data.py --source paired --images imgs/ --masks gts/ --split test --output out/
    python jobs/prepare_data.py --source istd --input /data/ISTD_Dataset --output s3://bucket/istd
    python jobs/prepare_data.py --source kvasir --input /data/Kvasir-SEG --output s3://bucket/kvasir
    python jobs/prepare_data.py --source synthetic --kind shadow --output /tmp/shadow

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


from samadapter.cli import doc_parser, guarded
from samadapter.data import sources
from samadapter.data.prepare import prepare_dataset
from samadapter.data.synthetic import SCENES
from samadapter.data.records import DEFAULT_SHARD_MB, DatasetExistsError
from samadapter.data.transforms import DEFAULT_MAX_PIXELS


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("prepare_data.py", __doc__)
    p.add_argument("--source", required=True, choices=["cod10k", *sources.TASK_LAYOUTS, "paired", "synthetic"],
                   help="cod10k: a COD10K-v3 or COD release folder (layout detected); istd, sbu (shadows), "
                        "kvasir, cvc (polyps): the dataset's released folder; paired: any image/mask folder "
                        "pair matched by file stem; synthetic: generated scenes (--kind)")
    p.add_argument("--output", required=True, help="dataset URI: local path, file://, s3://bucket/prefix, ...")
    g = p.add_argument_group("cod10k, istd, sbu, kvasir, cvc")
    g.add_argument("--input", help="the dataset folder (local path or URI)")
    g.add_argument("--include-noncam", action="store_true", help="keep COD10K-v3 NonCAM images (skipped by default)")
    g.add_argument("--test-percent", type=float, default=10.0,
                   help="kvasir, cvc: percent of images put in the test split (default 10)")
    g = p.add_argument_group("paired")
    g.add_argument("--images", help="folder of images")
    g.add_argument("--masks", help="folder of masks, same file stems as the images")
    g.add_argument("--split", help="split name for the paired folders, e.g. train or test")
    g = p.add_argument_group("synthetic")
    g.add_argument("--num-train", type=int, default=256, help="training scenes (default 256)")
    g.add_argument("--num-test", type=int, default=64, help="test scenes (default 64)")
    g.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256)")
    g.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    g.add_argument("--kind", choices=sorted(SCENES), default="camouflage",
                   help="scenes: camouflage (default), shadow or polyp")
    g = p.add_argument_group("output")
    g.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help=f"target shard size in MB (default {DEFAULT_SHARD_MB:g})")
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --output")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS})")
    g.add_argument("--workers", type=int, default=None, help="decode threads (default: CPU count, at most 8)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--summary-json", help="also write the summary (with every skipped file) to this local file")
    args = p.parse_args(argv)
    if (args.source == "cod10k" or args.source in sources.TASK_LAYOUTS) and not args.input:
        p.error(f"--source {args.source} needs --input DIR")
    if not 0 <= args.test_percent <= 100:
        p.error("--test-percent must be in [0, 100]")
    if args.source == "paired" and not (args.images and args.masks and args.split):
        p.error("--source paired needs --images DIR --masks DIR --split NAME")
    return args


def _listing(args: argparse.Namespace) -> sources.SourceListing:
    if args.source == "cod10k":
        return sources.cod_listing(args.input, include_noncam=args.include_noncam)
    if args.source in sources.TASK_LAYOUTS:
        return sources.task_listing(args.source, args.input, test_percent=args.test_percent)
    if args.source == "paired":
        return sources.paired_listing(args.images, args.masks, args.split)
    return sources.synthetic_listing(args.num_train, args.num_test, args.size, args.seed, kind=args.kind)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    listing, status = guarded(lambda: _listing(args), (ValueError, FileNotFoundError))
    if status is not None:
        return status
    print(f"source: {listing.description}; {len(listing.candidates)} candidates")
    summary, status = guarded(lambda: prepare_dataset(listing, args.output, shard_mb=args.shard_mb,
                                                      overwrite=args.overwrite, max_pixels=args.max_pixels,
                                                      workers=args.workers, progress=not args.no_progress),
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
