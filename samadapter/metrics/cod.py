"""COD metrics with pysodmetrics: S-measure (alpha 0.5), mean E-measure, weighted F, MAE.

Scores are computed per image at the ground truth's original size, so that workers can
score their share of a split and the shares can be merged: every metric is a mean over
images (the E-measure curve is averaged over images, then over its 256 thresholds),
exactly as pysodmetrics aggregates them.

pysodmetrics expects uint8 arrays in 0..255 (ground truth foreground where > 128); a
boolean ground truth would silently become all background, so inputs are converted here.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .accumulator import ScoreAccumulator

METRIC_NAMES = ("s_measure", "e_measure", "weighted_f", "mae")


def _as_uint8(a: np.ndarray, what: str, binary: bool) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be H x W, got shape {a.shape}")
    if a.dtype == bool or (binary and a.max(initial=0) <= 1):
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if a.max(initial=0) <= 1.0:
            return (a * 255).round().clip(0, 255).astype(np.uint8)
        return a.round().clip(0, 255).astype(np.uint8)
    return a.clip(0, 255).astype(np.uint8)


def image_scores(pred: np.ndarray, gt: np.ndarray) -> Dict[str, object]:
    """Scores of one image.

    Args:
        pred: H x W prediction: probabilities in [0, 1] (float) or 0..255 (uint8).
        gt: H x W ground truth: {0, 1}, bool or 0/255, same size as ``pred``.

    Returns:
        ``s``, ``wf``, ``mae`` floats and ``em_curve`` (256 floats).
    """
    p = _as_uint8(pred, "prediction", binary=False)
    g = _as_uint8(gt, "ground truth", binary=True)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size; resize to the ground truth")
    import py_sod_metrics as sod  # sklearn behind it: ~2 s to import, so only when scoring

    sm, em, wfm, mae = sod.Smeasure(alpha=0.5), sod.Emeasure(), sod.WeightedFmeasure(), sod.MAE()
    for m in (sm, em, wfm, mae):
        m.step(pred=p, gt=g)
    return {
        "s": float(sm.get_results()["sm"]),
        "wf": float(wfm.get_results()["wfm"]),
        "mae": float(mae.get_results()["mae"]),
        "em_curve": np.asarray(em.get_results()["em"]["curve"], dtype=np.float64),
    }


class CODMetrics(ScoreAccumulator):
    """The four numbers COD papers report, each a mean over images."""

    names = METRIC_NAMES
    image_key = "s"
    image_higher_is_better = True

    def image_score(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, object]:
        return image_scores(pred, gt)

    def summarize(self) -> Dict[str, float]:
        curve = np.mean([s["em_curve"] for s in self.scores], axis=0)
        return {
            "s_measure": float(np.mean([s["s"] for s in self.scores])),
            "e_measure": float(curve.mean()),
            "weighted_f": float(np.mean([s["wf"] for s in self.scores])),
            "mae": float(np.mean([s["mae"] for s in self.scores])),
        }
