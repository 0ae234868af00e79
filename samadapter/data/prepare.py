"""Convert a source listing into the Parquet dataset layout (used by jobs/prepare_data.py)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from ..progress import progress as show_progress
from .records import DEFAULT_SHARD_MB, DatasetWriter, Sample
from .sources import Candidate, SourceListing
from .labels import encode_label_png
from .transforms import DEFAULT_MAX_PIXELS, decode_sample, encode_mask_png

log = logging.getLogger(__name__)


def _validate(candidate: Candidate, max_pixels: int, num_classes: int = 1):
    """(Sample, None) for a good candidate, (None, (status, reason)) for a bad one."""
    try:
        image, mask = candidate.load()
    except FileNotFoundError as exc:
        return None, ("missing_file", str(exc))
    except OSError as exc:
        return None, ("read_error", f"{type(exc).__name__}: {exc}")
    decoded = decode_sample(image, mask, require_mask=True, max_pixels=max_pixels, num_classes=num_classes)
    if not decoded.ok:
        return None, (decoded.status, decoded.reason)
    h, w = decoded.image.shape[:2]
    return Sample(
        image_id=candidate.image_id,
        image=image,  # the original encoded bytes
        mask=encode_label_png(decoded.mask) if num_classes > 1 else encode_mask_png(decoded.mask),
        height=h,
        width=w,
        split=candidate.split,
        source=candidate.source,
    ), None


def prepare_dataset(
    listing: SourceListing,
    output: str,
    *,
    shard_mb: float = DEFAULT_SHARD_MB,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: Optional[int] = None,
    progress: bool = True,
) -> dict:
    """Validate every candidate and write the good ones as Parquet shards at ``output``.

    Returns:
        A summary: ``{"output", "description", "written": {split: n}, "skipped": [{"item",
        "status", "reason"}], "skipped_by_status": {status: n}}``.
    """
    writer = DatasetWriter(output, shard_mb=shard_mb, overwrite=overwrite)
    skipped = [{"item": what, "status": status, "reason": reason} for what, status, reason in listing.skipped]
    seen = set()
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with writer, ThreadPoolExecutor(workers) as pool:
        num_classes = len(listing.classes) if listing.classes else 1
        results = pool.map(lambda c: (c, _validate(c, max_pixels, num_classes)), listing.candidates)
        for candidate, (sample, bad) in show_progress(results, len(listing.candidates), "prepare", "img", progress):
            item = candidate.origin or candidate.image_id
            if bad is not None:
                skipped.append({"item": item, "status": bad[0], "reason": bad[1]})
                continue
            if sample.image_id in seen:
                skipped.append({"item": item, "status": "duplicate_id", "reason": f"image_id {sample.image_id!r} already written"})
                continue
            seen.add(sample.image_id)
            writer.add(sample)
        writer.extra["description"] = listing.description
        if listing.task:
            writer.extra["task"] = listing.task
        if listing.classes:
            writer.extra["classes"] = list(listing.classes)
        writer.extra["skipped"] = len(skipped)
    return {
        "output": output,
        "description": listing.description,
        "written": dict(sorted(writer.counts.items())),
        "skipped": skipped,
        "skipped_by_status": dict(Counter(s["status"] for s in skipped)),
        "manifest": writer.manifest,
    }
