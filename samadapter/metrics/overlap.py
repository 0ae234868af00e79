"""Overlap metrics: Dice and IoU at threshold 0.5, and MAE, each a mean over images.

Polyp segmentation papers (Kvasir-SEG, CVC-ClinicDB) report mean Dice and mean IoU: the
per-image scores averaged over the split, which is what ``results`` gives. An image where
both the prediction and the ground truth are empty scores 1 (nothing to find, nothing found).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from ._binary import as_probability, binarize
from .accumulator import ScoreAccumulator

NAMES = ("dice", "iou", "mae")


def image_overlap(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    p, g = binarize(pred, gt)
    tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
    empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if empty else tp / (tp + fp + fn),
        "mae": float(np.abs(as_probability(pred) - g).mean()),
    }


class OverlapMetrics(ScoreAccumulator):
    """Per-image Dice / IoU / MAE, each averaged over the split."""

    names = NAMES
    image_key = "dice"
    image_higher_is_better = True

    def image_score(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
        return image_overlap(pred, gt)

    def summarize(self) -> Dict[str, float]:
        return {k: float(np.mean([s[k] for s in self.scores])) for k in NAMES}
