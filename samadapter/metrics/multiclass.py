"""Several classes: mean IoU, IoU per class and pixel accuracy, at the ground truth's size.

Semantic-segmentation benchmarks (PASCAL VOC, Cityscapes, ADE20K) pool the counts over the
split: the IoU of class c is the sum over images of |pred = c and gt = c| over the sum of
|pred = c or gt = c|, and mIoU is the mean over the classes that occur (in the ground truth or
the predictions) anywhere in the split. Pixel accuracy is the share of all pixels labelled
right. Both take H x W class maps (index 0: the background).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .accumulator import ScoreAccumulator

NAMES = ("miou", "pixel_accuracy")


def class_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Dict[str, object]:
    """Per class intersection and union counts, and the image's correct / total pixels."""
    pred, gt = np.asarray(pred).astype(np.int64).ravel(), np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
    n = max(num_classes, int(pred.max(initial=0)) + 1, int(gt.max(initial=0)) + 1)
    confusion = np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return {"inter": inter.tolist(), "union": union.tolist(), "correct": int(inter.sum()), "total": int(gt.size)}


def _ious(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class that occurs nowhere (left out of the mean)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


class MulticlassMetrics(ScoreAccumulator):
    """Pooled per-class IoU, their mean (``miou``), ``pixel_accuracy``; per image the image's
    own mIoU ranks the examples."""

    names = NAMES
    image_key = "miou"
    image_higher_is_better = True

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes

    def image_score(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, object]:
        counts = class_counts(pred, gt, self.num_classes)
        counts["miou"] = float(np.nanmean(_ious(np.array(counts["inter"]), np.array(counts["union"]))))
        return counts

    def summarize(self) -> Dict[str, float]:
        n = max(len(s["inter"]) for s in self.scores)
        inter, union = np.zeros(n), np.zeros(n)
        for s in self.scores:
            inter[: len(s["inter"])] += s["inter"]
            union[: len(s["union"])] += s["union"]
        ious = _ious(inter, union)
        out = {"miou": float(np.nanmean(ious)),
               "pixel_accuracy": sum(s["correct"] for s in self.scores) / sum(s["total"] for s in self.scores)}
        out.update({f"iou_{c}": float(v) for c, v in enumerate(ious) if not np.isnan(v)})
        return out
