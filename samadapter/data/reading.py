"""Reading a dataset split: as a Ray Data dataset, or as decoded numpy batches without Ray."""

from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow.dataset as pads

from .. import storage
from .records import COLUMNS, read_dataset_info, split_uri
from .transforms import DEFAULT_MAX_PIXELS, decode_sample, prepare_uint8, thumbnail

log = logging.getLogger(__name__)


def _check_split(dataset_uri: str, split: str) -> dict:
    manifest = read_dataset_info(dataset_uri)
    if split not in manifest["splits"]:
        raise ValueError(
            f"{dataset_uri} has no split {split!r}; it has {sorted(manifest['splits'])}"
        )
    return manifest


def read_split(dataset_uri: str, split: str, columns: Optional[Sequence[str]] = None, **read_kwargs):
    """A Ray Data dataset of one split (``read_parquet`` with column pruning).

    Args:
        dataset_uri: the dataset root (local, ``file://``, ``s3://``, ...).
        split: e.g. ``train`` or ``test``.
        columns: columns to read (default: all); e.g. ``["image_id", "image"]`` for inference.
    """
    from ..ray_compat import read_parquet_footers_once

    _check_split(dataset_uri, split)
    fs, path = storage.pyarrow_filesystem(split_uri(dataset_uri, split))
    cols = list(columns) if columns is not None else list(COLUMNS)
    unknown = sorted(set(cols) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown columns {unknown}; the schema has {list(COLUMNS)}")
    # read every epoch and every validation: the footers once, not on each pass
    return read_parquet_footers_once(path, filesystem=fs, **read_kwargs).select_columns(cols)


def iter_records(dataset_uri: str, split: str, columns: Optional[Sequence[str]] = None, batch_size: int = 16) -> Iterator[Dict[str, list]]:
    """Raw rows of a split in batches (dict of column -> list), read with pyarrow only."""
    _check_split(dataset_uri, split)
    fs, path = storage.pyarrow_filesystem(split_uri(dataset_uri, split))
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    cols = list(columns) if columns is not None else list(COLUMNS)
    for batch in dataset.to_batches(columns=cols, batch_size=batch_size):
        yield batch.to_pydict()


def decode_records(
    batch: Dict[str, Sequence],
    img_size: int,
    *,
    resize_mode: str = "squash",
    with_masks: bool = True,
    flip_rng: Optional[np.random.Generator] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_classes: int = 1,
) -> Dict[str, np.ndarray]:
    """Decode a batch of records into model inputs; bad rows are dropped and reported.

    Args:
        batch: columns ``image_id``, ``image`` and (``with_masks``) ``mask``.
        img_size: model input side S.
        resize_mode: ``squash`` (the paper) or ``pad``.
        with_masks: decode and return the masks (training / evaluation).
        flip_rng: when given, each row is flipped horizontally with probability 0.5.
        num_classes: 1, binary masks; C > 1, masks of class indices (resized by nearest neighbour).

    Returns:
        ``image_id`` (N,), ``images`` N x S x S x 3 uint8 (normalised on the device by
        ``samadapter.ops.to_model_input``), ``masks`` N x S x S uint8
        (with_masks), ``height``/``width`` (N,) original size, ``valid_h``/``valid_w`` (N,),
        and ``bad_id``/``bad_status``/``bad_reason`` for the rows that were dropped.
    """
    ids: List[str] = []
    images, masks, heights, widths, valid = [], [], [], [], []
    bad_id, bad_status, bad_reason = [], [], []
    image_col = batch["image"]
    mask_col = batch.get("mask") if with_masks else None
    for i, image_id in enumerate(batch["image_id"]):
        mask_bytes = mask_col[i] if mask_col is not None else None
        decoded = decode_sample(image_col[i], mask_bytes, require_mask=with_masks, max_pixels=max_pixels,
                                num_classes=num_classes)
        if not decoded.ok:
            bad_id.append(str(image_id))
            bad_status.append(decoded.status)
            bad_reason.append(decoded.reason)
            continue
        flip = bool(flip_rng is not None and flip_rng.random() < 0.5)
        x, y, vs = prepare_uint8(decoded.image, img_size, resize_mode, decoded.mask if with_masks else None, flip,
                                 num_classes)
        ids.append(str(image_id))
        images.append(x)
        if with_masks:
            masks.append(y)
        heights.append(decoded.image.shape[0])
        widths.append(decoded.image.shape[1])
        valid.append(vs)
    n = len(ids)
    out = {
        "image_id": np.asarray(ids, dtype=object),
        "images": np.stack(images) if n else np.zeros((0, img_size, img_size, 3), np.uint8),
        "height": np.asarray(heights, dtype=np.int32),
        "width": np.asarray(widths, dtype=np.int32),
        "valid_h": np.asarray([v[0] for v in valid], dtype=np.int32),
        "valid_w": np.asarray([v[1] for v in valid], dtype=np.int32),
        "bad_id": np.asarray(bad_id, dtype=object),
        "bad_status": np.asarray(bad_status, dtype=object),
        "bad_reason": np.asarray(bad_reason, dtype=object),
    }
    if with_masks:
        out["masks"] = np.stack(masks) if n else np.zeros((0, img_size, img_size), np.uint8)
    return out


def decode_for_training(batch: Dict[str, np.ndarray], img_size: int, resize_mode: str, hflip: bool,
                        num_classes: int = 1) -> Dict[str, np.ndarray]:
    """Ray Data ``map_batches`` stage of training: encoded rows -> images + masks at the
    model size, randomly flipped when ``hflip``.

    Rows that fail to decode are dropped (and logged): the columns returned all have
    one entry per good row. It lives here, away from torch, so that Ray's decode tasks
    import only the data path.
    """
    out = decode_records(
        batch,
        img_size,
        resize_mode=resize_mode,
        with_masks=True,
        flip_rng=np.random.default_rng() if hflip else None,
        num_classes=num_classes,
    )
    for bid, status, reason in zip(out["bad_id"], out["bad_status"], out["bad_reason"]):
        log.warning("skipping %s: %s (%s)", bid, status, reason)
    return {"images": out["images"], "masks": out["masks"]}


def decode_for_validation(batch: Dict[str, np.ndarray], img_size: int, resize_mode: str,
                          thumb_height: int = 0, num_classes: int = 1) -> Dict[str, np.ndarray]:
    """Decode a split's rows for scoring (training's validation, ``jobs/evaluate.py``): one
    output row per input row.

    ``images`` N x S x S x 3 uint8 model inputs, the ground truth at its original size as
    packed bits (``gt_bits``, ``gt_h``, ``gt_w``: H*W/8 bytes, not H*W; with ``num_classes`` > 1
    the class indices, a byte a pixel), ``valid_h``/``valid_w``
    for ``pad`` mode, and ``ok``: rows that failed to decode stay (zero image, ``ok`` False,
    ``status``/``reason`` saying why) so that scoring counts them once instead of losing them.
    ``thumb_height`` > 0 adds ``thumb``: the image at that height (evaluation's examples).
    """
    n = len(batch["image_id"])
    images = np.zeros((n, img_size, img_size, 3), np.uint8)
    ok = np.zeros(n, bool)
    gt_bits: List[bytes] = [b""] * n
    status, reason, thumbs = ["ok"] * n, [""] * n, [None] * n
    gt_h, gt_w, valid_h, valid_w = (np.zeros(n, np.int32) for _ in range(4))
    for i in range(n):
        decoded = decode_sample(batch["image"][i], batch["mask"][i], require_mask=True, num_classes=num_classes)
        if not decoded.ok:
            log.warning("row %s: %s (%s)", batch["image_id"][i], decoded.status, decoded.reason)
            status[i], reason[i] = decoded.status, decoded.reason
            continue
        images[i], _, (valid_h[i], valid_w[i]) = prepare_uint8(decoded.image, img_size, resize_mode)
        gt_h[i], gt_w[i] = decoded.mask.shape
        gt_bits[i] = decoded.mask.tobytes() if num_classes > 1 else np.packbits(decoded.mask.astype(bool)).tobytes()
        if thumb_height:
            thumbs[i] = thumbnail(decoded.image, thumb_height)
        ok[i] = True
    out = {"image_id": np.asarray([str(x) for x in batch["image_id"]], dtype=object), "images": images, "ok": ok,
           "gt_bits": np.asarray(gt_bits, dtype=object), "gt_h": gt_h, "gt_w": gt_w, "valid_h": valid_h,
           "valid_w": valid_w, "status": np.asarray(status, dtype=object), "reason": np.asarray(reason, dtype=object)}
    if thumb_height:
        out["thumb"] = np.empty(n, dtype=object)
        out["thumb"][:] = thumbs
    return out


def unpack_ground_truth(bits: bytes, height: int, width: int, num_classes: int = 1) -> np.ndarray:
    """``decode_for_validation``'s packed ground truth -> H x W uint8 in {0, 1} (or the class
    indices with ``num_classes`` > 1)."""
    if num_classes > 1:
        return np.frombuffer(bits, np.uint8).reshape(height, width)
    return np.unpackbits(np.frombuffer(bits, np.uint8), count=height * width).reshape(height, width)

