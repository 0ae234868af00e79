"""Tasks: what a recipe's ``task`` selects, in one place.

SAM-Adapter was shown on three task families; each has its loss, its metrics, and the
metric that picks the best checkpoint:

| task       | default loss  | metrics (samadapter/metrics/)                 | best checkpoint |
|------------|---------------|-----------------------------------------------|-----------------|
| camouflage | bce_iou       | S-measure, mean E-measure, weighted F, MAE     | S-measure, max  |
| shadow     | balanced_bce  | BER, shadow / non-shadow error, BER image mean | BER, min        |
| polyp      | dice_bce      | Dice, IoU (per-image means), MAE               | Dice, max       |
| generic    | bce_iou       | Dice, IoU, MAE                                 | IoU, max        |
| multiclass | ce_dice       | mIoU, IoU per class, pixel accuracy            | mIoU, max       |

Every task but ``multiclass`` is one foreground mask (``num_classes`` 1); ``multiclass`` is
C >= 2 classes with the background as class 0 (``model.overrides.num_classes``, default the
dataset's class count).

Torch-free: the segment job's driver and evaluation read it.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Callable, Dict, Optional, Tuple

from .metrics import BERMetrics, CODMetrics, MulticlassMetrics, OverlapMetrics

log = logging.getLogger(__name__)

DEFAULT_TASK = "camouflage"
LOSSES = ("bce_iou", "balanced_bce", "dice_bce", "ce_dice")
MULTICLASS = "multiclass"


@dataclass(frozen=True)
class Task:
    name: str
    loss: str                      # the default of optim.loss ("auto")
    metrics: Callable[[], object]  # a fresh accumulator (samadapter/metrics/)
    select_by: str                 # the metric that picks the best checkpoint
    higher_is_better: bool
    synthetic: str                 # the kind of the embedded synthetic scenes

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self.metrics.names)

    @property
    def mode(self) -> str:
        """``max`` or ``min``: Ray's spelling of the selection order."""
        return "max" if self.higher_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def worst(self) -> float:
        return float("-inf") if self.higher_is_better else float("inf")

    def best_of(self, records, key: str = None):
        """The record with the best ``select_by`` (or ``key``)."""
        key = key or self.select_by
        pick = max if self.higher_is_better else min
        return pick(records, key=lambda r: r[key])


TASKS: Dict[str, Task] = {
    "camouflage": Task("camouflage", "bce_iou", CODMetrics, "s_measure", True, "camouflage"),
    "shadow": Task("shadow", "balanced_bce", BERMetrics, "ber", False, "shadow"),
    "polyp": Task("polyp", "dice_bce", OverlapMetrics, "dice", True, "polyp"),
    "generic": Task("generic", "bce_iou", OverlapMetrics, "iou", True, "camouflage"),
    MULTICLASS: Task(MULTICLASS, "ce_dice", MulticlassMetrics, "miou", True, MULTICLASS),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def resolve_task(explicit: Optional[str], dataset: Optional[str], adapter: Optional[str] = None,
                 dataset_uri: str = "the dataset", adapter_uri: str = "the adapter") -> str:
    """The task a job runs: the one given explicitly (``--task``) wins, then the dataset's
    (``_dataset.json``), then the adapter's (its metadata), then camouflage. A dataset and an
    adapter that disagree cost one warning naming both."""
    if dataset and adapter and dataset != adapter:
        chosen = explicit or dataset
        log.warning("%s was converted for task %r but %s was trained for %r; scoring as %r%s", dataset_uri, dataset,
                    adapter_uri, adapter, chosen, "" if explicit else " (the dataset's; --task overrides)")
    task = explicit or dataset or adapter or DEFAULT_TASK
    get_task(task)
    return task
