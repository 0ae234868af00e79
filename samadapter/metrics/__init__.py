"""Segmentation metrics per task, at each ground truth's original size.

- ``cod``: camouflaged objects - S-measure, mean E-measure, weighted F, MAE (pysodmetrics).
- ``ber``: shadows - balanced error rate with its shadow and non-shadow errors (percent).
- ``overlap``: polyps and generic masks - Dice, IoU (per-image means), MAE.
- ``multiclass``: several classes - mean IoU, IoU per class, pixel accuracy (pooled counts).

Every accumulator is a ``ScoreAccumulator`` (``accumulator.py``): ``add(pred, gt)`` scores
one image into a small dict, ``extend`` adds another worker's dicts, ``results()`` gives the
split's numbers plus ``num_images``. ``samadapter/tasks.py`` says which task uses which.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .accumulator import ScoreAccumulator
from .ber import BERMetrics
from .cod import METRIC_NAMES, CODMetrics, image_scores
from .multiclass import MulticlassMetrics
from .overlap import OverlapMetrics

METRIC_TITLES = {
    "s_measure": "S-alpha", "e_measure": "mean E-phi", "weighted_f": "weighted F", "mae": "MAE",
    "ber": "BER %", "shadow_error": "shadow err %", "non_shadow_error": "non-shadow err %",
    "ber_per_image": "BER % (image mean)", "dice": "Dice", "iou": "IoU", "miou": "mIoU",
    "pixel_accuracy": "pixel acc.",
}


def format_table(rows: Dict[str, Dict[str, float]], names: Optional[Sequence[str]] = None) -> str:
    """A Markdown table: one row per label (e.g. 'before training', 'after'), one column
    per metric name (default the COD four)."""
    names = tuple(names or METRIC_NAMES)
    head = "| | " + " | ".join(METRIC_TITLES.get(m, m) for m in names) + " | images |"
    sep = "|---|" + "---:|" * (len(names) + 1)
    lines = [head, sep]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{r[m]:.3f}" for m in names) + f" | {r.get('num_images', '')} |")
    return "\n".join(lines)


__all__ = ["BERMetrics", "CODMetrics", "METRIC_NAMES", "METRIC_TITLES", "MulticlassMetrics", "OverlapMetrics", "ScoreAccumulator",
           "format_table", "image_scores"]
