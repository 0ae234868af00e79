"""Binarising a prediction and a ground truth the same way for every count-based metric."""

from __future__ import annotations

from typing import Tuple

import numpy as np

THRESHOLD = 0.5  # on probabilities; uint8 predictions are read as /255


def binarize(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(prediction >= 0.5, ground truth foreground) as booleans of the same H x W.

    ``pred``: probabilities in [0, 1] (float), 0..255 (uint8) or booleans; ``gt``: {0, 1},
    bool or 0/255 (foreground above half its range).
    """
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 2 or g.ndim != 2:
        raise ValueError(f"prediction and ground truth must be H x W, got {p.shape} and {g.shape}")
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size; resize to the ground truth")
    if p.dtype != bool:
        p = p.astype(np.float32) / (255.0 if p.dtype == np.uint8 else 1.0) >= THRESHOLD
    if g.dtype != bool:
        g = g > (127 if g.dtype == np.uint8 and g.max(initial=0) > 1 else 0.5)
    return p, g


def as_probability(pred: np.ndarray) -> np.ndarray:
    p = np.asarray(pred)
    if p.dtype == bool:
        return p.astype(np.float32)
    return p.astype(np.float32) / (255.0 if p.dtype == np.uint8 else 1.0)
