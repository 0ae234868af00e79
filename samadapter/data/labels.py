"""Masks of several classes: index PNGs (the pixel's value is its class, 0 the background),
the class palette they are drawn in, and the segment job's class map at the original size.
One foreground mask (the other tasks) is ``transforms.py``'s."""

from __future__ import annotations

import io
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from .transforms import _low_res_box


def mask_to_labels(im: Image.Image, num_classes: int) -> Tuple[Optional[np.ndarray], str]:
    """A class mask (an index PNG: mode P, or L with the class as the grey value) -> (H x W
    uint8 class indices, "") or (None, why not)."""
    if im.mode not in ("P", "L", "1") and not im.mode.startswith("I"):
        return None, f"a class mask is a single-channel index image (mode P or L), not mode {im.mode}"
    labels = np.asarray(im)
    top = int(labels.max(initial=0))
    if top >= num_classes or labels.min(initial=0) < 0:
        return None, f"class {top} in the mask, but there are {num_classes} classes (0..{num_classes - 1})"
    return labels.astype(np.uint8), ""


# Class colours of index masks, outputs and pictures (class 0, the background, black).
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def class_colours(num_classes: int) -> np.ndarray:
    """num_classes x 3 uint8 colours: ``PALETTE``, then a deterministic spread beyond it."""
    extra = [tuple(int(v) for v in np.random.default_rng(c).integers(40, 256, 3)) for c in range(len(PALETTE), num_classes)]
    return np.asarray((PALETTE + extra)[:num_classes], dtype=np.uint8)


def encode_label_png(labels: np.ndarray) -> bytes:
    """H x W class indices (< 256) -> an 8-bit indexed PNG with the class palette: read back as
    the indices (``np.asarray(Image.open(...))``), shown in the classes' colours."""
    im = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    im.putpalette(class_colours(256).ravel().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def low_res_labels(logits: np.ndarray, original_size: Tuple[int, int], input_size: int,
                   valid_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """C x s x s low-resolution class logits -> H x W class indices at the original size (an
    8-bit indexed image with the class palette): each class's logits resized like
    ``low_res_mask`` (bilinear, the valid area as the source box), then the argmax."""
    x = np.asarray(logits, dtype=np.float32)
    h, w = int(original_size[0]), int(original_size[1])
    box = _low_res_box(x.shape[-1], input_size, valid_size)
    best = np.full((h, w), -np.inf, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.uint8)
    for c in range(x.shape[0]):  # one class at a time: two H x W float planes, not C
        plane = np.asarray(Image.fromarray(x[c], mode="F").resize((w, h), Image.BILINEAR, box=box))
        better = plane > best
        labels[better], best = c, np.where(better, plane, best)
    im = Image.fromarray(labels, mode="P")
    im.putpalette(class_colours(256).ravel().tolist())
    return im
