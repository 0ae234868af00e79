"""Shadow detection: balanced error rate (BER) with its shadow and non-shadow errors, in percent.

Per image the confusion counts at threshold 0.5 are kept (true positives TP among the Np
shadow pixels, true negatives TN among the Nn non-shadow pixels). The split's numbers are
**pooled counts**, the standard way of the SBU/ISTD literature's evaluation code:

    shadow error     = 100 * (1 - sum TP / sum Np)
    non-shadow error = 100 * (1 - sum TN / sum Nn)
    BER              = (shadow error + non-shadow error) / 2

``ber_per_image`` is the mean of per-image BERs as well (an image without shadow pixels
counts its non-shadow error only; one without non-shadow pixels its shadow error only).
Lower is better for all of them.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from ._binary import binarize
from .accumulator import ScoreAccumulator

NAMES = ("ber", "shadow_error", "non_shadow_error", "ber_per_image")


def confusion(pred: np.ndarray, gt: np.ndarray) -> Dict[str, int]:
    p, g = binarize(pred, gt)
    return {"tp": int((p & g).sum()), "tn": int((~p & ~g).sum()), "pos": int(g.sum()), "neg": int((~g).sum())}


def image_ber(c: Dict[str, int]) -> float:
    errors = []
    if c["pos"]:
        errors.append(1 - c["tp"] / c["pos"])
    if c["neg"]:
        errors.append(1 - c["tn"] / c["neg"])
    return 100.0 * float(np.mean(errors)) if errors else 0.0


class BERMetrics(ScoreAccumulator):
    """Per-image confusion counts; the split's errors from the pooled counts."""

    names = NAMES
    image_key = "ber"
    image_higher_is_better = False

    def image_score(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
        c = confusion(pred, gt)
        return {**c, "ber": image_ber(c)}

    def summarize(self) -> Dict[str, float]:
        tp, tn, pos, neg = (sum(s[k] for s in self.scores) for k in ("tp", "tn", "pos", "neg"))
        shadow = 100.0 * (1 - tp / pos) if pos else 0.0
        non_shadow = 100.0 * (1 - tn / neg) if neg else 0.0
        return {
            "ber": (shadow + non_shadow) / 2 if pos and neg else shadow + non_shadow,
            "shadow_error": shadow,
            "non_shadow_error": non_shadow,
            "ber_per_image": float(np.mean([s["ber"] for s in self.scores])),
        }
