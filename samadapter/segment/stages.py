"""The CPU stages of the segmentation pipeline: read, decode, postprocess.

They run as short-lived Ray tasks and never import torch (a task's worker would pay its
import, about 2 s of CPU). The model stage is ``model.Segmenter``. Every stage takes and
returns column batches; rows whose status is already final (``skipped``, ``unsafe_key``,
``read_error``, ...) pass through untouched and become ledger rows at the end.

read:        input rows (``listing.INPUT_COLUMNS``) -> + ``data`` (the encoded bytes)
decode:      -> ``image`` (S x S x 3 uint8 model input; large JPEGs decoded at a reduced
             DCT scale), ``height``/``width`` (original, from the header)
model:       -> ``logits`` (``model.Segmenter``: the decoder's S/4 x S/4 float16 logits)
postprocess: -> 1-bit mask PNGs written; ledger rows (``ledger.add_row``)
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .. import storage
from ..data.transforms import (
    NOT_AN_IMAGE, OK, ZERO_BYTES, decode_image, encode_png, low_res_mask, low_res_probs, resize_for_model, resized_size,
)
from ..data.labels import class_colours, low_res_labels
from . import layout, ledger
from .listing import PENDING, SNIFF

log = logging.getLogger(__name__)

_TO_READ = (PENDING, SNIFF)


def _read(uris: List[str], offsets: List[int], lengths: List[int]) -> List[Tuple[Optional[bytes], str]]:
    """(bytes, error) per input: whole objects, or byte ranges (tar members), fetched
    concurrently where the filesystem can (s3fs)."""
    if not uris:
        return []
    fs, _ = storage.fsspec_filesystem(uris[0])  # one filesystem per batch, not per object
    paths = [u.split("://", 1)[1] if "://" in u else u for u in uris]
    out: List[Tuple[Optional[bytes], str]] = [(None, "")] * len(uris)
    whole = [i for i, o in enumerate(offsets) if o < 0]
    ranged = [i for i, o in enumerate(offsets) if o >= 0]
    if whole:
        try:
            got = fs.cat([paths[i] for i in whole], on_error="return")
            if not isinstance(got, dict):  # a single path returns bytes
                got = {paths[whole[0]]: got}
        except Exception as exc:  # noqa: BLE001 - one by one below
            log.warning("batched read failed (%s); reading one by one", exc)
            got = {}
        for i in whole:
            v = got.get(paths[i])
            if not isinstance(v, (bytes, bytearray)):
                try:
                    v = fs.cat_file(paths[i])
                except Exception as exc:  # noqa: BLE001 - a read error is a row
                    v = exc
            out[i] = (bytes(v), "") if isinstance(v, (bytes, bytearray)) else (None, f"{type(v).__name__}: {v}")
    if ranged:
        archives = [_archive_path(paths[i], uris[i]) for i in ranged]
        try:
            got = fs.cat_ranges(archives, [offsets[i] for i in ranged], [offsets[i] + lengths[i] for i in ranged], on_error="return")
        except Exception as exc:  # noqa: BLE001
            got = [exc] * len(ranged)
        for i, v in zip(ranged, got):
            out[i] = (bytes(v), "") if isinstance(v, (bytes, bytearray)) else (None, f"{type(v).__name__}: {v}")
    return out


def _archive_path(member_path: str, uri: str) -> str:
    """The filesystem path of the archive a member URI belongs to (the ``.tar`` segment)."""
    parts = member_path.split("/")
    for j in range(len(parts) - 1, 0, -1):
        if parts[j - 1].lower().endswith(".tar"):
            return "/".join(parts[:j])
    raise ValueError(f"{uri}: a byte range outside a .tar archive")


def read_stage(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """I/O: input rows -> + ``data`` (empty bytes where nothing was read)."""
    n = len(batch["uri"])
    status = [str(s) for s in batch["status"]]
    reason = [str(r) for r in batch["reason"]]
    data = list(batch["data"]) if "data" in batch else [b""] * n
    todo = [i for i in range(n) if status[i] in _TO_READ and not ("data" in batch and data[i] is not None and len(data[i]))]
    got = _read([str(batch["uri"][i]) for i in todo], [int(batch["offset"][i]) for i in todo], [int(batch["length"][i]) for i in todo])
    for i, (payload, err) in zip(todo, got):
        if err:
            status[i], reason[i], data[i] = ledger.READ_ERROR, err, b""
        else:
            data[i] = payload
    out = {k: batch[k] for k in ("uri", "rel", "version")}
    out["status"] = np.asarray(status, dtype=object)
    out["reason"] = np.asarray(reason, dtype=object)
    out["data"] = np.asarray([d if d is not None else b"" for d in data], dtype=object)
    return out


def decode_stage(batch: Dict[str, np.ndarray], img_size: int, resize_mode: str, max_pixels: int, keep_bytes: bool) -> Dict[str, np.ndarray]:
    """CPU: bytes -> size x size x 3 uint8 model inputs plus the original size and status.

    ``sniff`` rows (no extension) whose content is not an image become ``skipped``.
    """
    n = len(batch["uri"])
    images = np.zeros((n, img_size, img_size, 3), dtype=np.uint8)
    heights = np.zeros(n, np.int32)
    widths = np.zeros(n, np.int32)
    status = [str(s) for s in batch["status"]]
    reason = [str(r) for r in batch["reason"]]
    seconds = np.zeros(n, np.float64)
    for i in range(n):
        if status[i] not in _TO_READ:
            continue
        t0 = time.perf_counter()
        d = decode_image(batch["data"][i], max_pixels=max_pixels, draft_size=(img_size, resize_mode))
        if status[i] == SNIFF and d.status in (NOT_AN_IMAGE, ZERO_BYTES):
            status[i], reason[i] = ledger.SKIPPED, f"not an image (no extension; {d.reason})"
        else:
            status[i], reason[i] = d.status, d.reason
        if d.ok:
            heights[i], widths[i] = d.original_size
            images[i] = resize_for_model(d.image, img_size, resize_mode)
        seconds[i] = time.perf_counter() - t0
    out = {k: batch[k] for k in ("uri", "rel", "version")}
    out.update(image=images, height=heights, width=widths, status=np.asarray(status, dtype=object),
               reason=np.asarray(reason, dtype=object), seconds=seconds)
    if keep_bytes:
        out["data"] = batch["data"]
    return out


def _overlay(data: bytes, mask: np.ndarray, classes: bool = False) -> np.ndarray:
    """image | image with the mask tinted (red; several classes: each class in its palette
    colour, the background untouched), side by side (H x 2W x 3)."""
    image = decode_image(data).image
    tinted = image.astype(np.float32)
    fore = mask > 0
    colour = class_colours(int(mask.max()) + 1)[mask[fore]].astype(np.float32) if classes else \
        np.array([255, 40, 40], np.float32)
    tinted[fore] = 0.45 * tinted[fore] + 0.55 * colour
    return np.concatenate([image, tinted.astype(np.uint8)], axis=1)


def postprocess_stage(batch: Dict[str, np.ndarray], output: str, threshold: float, resize_mode: str,
                      save_probs: bool, overlays: bool, img_size: int) -> Dict[str, np.ndarray]:
    """CPU: low-resolution logits -> mask at the original size (one resize in C) -> 1-bit
    PNG (8-bit probabilities with ``save_probs``); returns ledger rows."""
    cols = ledger.empty_rows()
    logit_threshold = float(np.log(threshold / (1 - threshold)))
    for i, uri in enumerate(batch["uri"]):
        t0 = time.perf_counter()
        status, reason = str(batch["status"][i]), str(batch["reason"][i])
        h, w = int(batch["height"][i]), int(batch["width"][i])
        out_key = ""
        if status == OK:
            try:
                valid = resized_size(h, w, img_size, resize_mode) if resize_mode == "pad" else None
                logits = batch["logits"][i]
                if logits.ndim == 3:  # several classes: an indexed PNG of the classes
                    mask = low_res_labels(logits, (h, w), img_size, valid)
                else:
                    mask = low_res_mask(logits, (h, w), img_size, logit_threshold, valid)
                rel = str(batch["rel"][i])
                out_key = layout.output_key(layout.MASKS, rel)
                storage.write_bytes(storage.join(output, out_key), encode_png(mask))
                if save_probs and logits.ndim == 2:
                    probs = low_res_probs(batch["logits"][i], (h, w), img_size, valid)
                    storage.write_bytes(storage.join(output, layout.output_key(layout.PROBS, rel)), encode_png(probs))
                if overlays:
                    overlay = _overlay(batch["data"][i], np.asarray(mask, dtype=np.uint8), logits.ndim == 3)
                    storage.write_bytes(storage.join(output, layout.output_key(layout.OVERLAYS, rel)), encode_png(Image.fromarray(overlay)))
            except OSError as exc:
                # a name that cannot exist there is permanent; any other failure is retried
                status = ledger.NAME_TOO_LONG if exc.errno == errno.ENAMETOOLONG else ledger.WRITE_ERROR
                reason, out_key = f"{type(exc).__name__}: {exc}", ""
            except Exception as exc:  # noqa: BLE001 - a failed write is a row, not a crash
                status, reason, out_key = ledger.WRITE_ERROR, f"{type(exc).__name__}: {exc}", ""
        ledger.add_row(cols, uri=str(uri), version=str(batch["version"][i]), status=status, reason=reason,
                       output_key=out_key, height=h, width=w,
                       seconds=float(batch["seconds"][i]) + time.perf_counter() - t0, actor=str(batch["actor"][i]))
    return ledger.to_numpy(cols)
