"""What every metric of ``samadapter/metrics/`` shares: per-image scores kept as small dicts,
so that workers can score their share of a split and the shares can be merged."""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np


class ScoreAccumulator:
    """``add(pred, gt)`` scores one image (``image_score``) into ``scores``; ``extend`` adds
    another worker's scores; ``results()`` summarises the split (``summarize``) plus
    ``num_images``. ``names`` are the result's columns, ``image_key`` the per-image score
    that ranks examples, in the direction ``image_higher_is_better``."""

    names: Tuple[str, ...] = ()
    image_key = ""
    image_higher_is_better = True

    def __init__(self) -> None:
        self.scores: List[Dict[str, object]] = []

    def image_score(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, object]:
        raise NotImplementedError

    def summarize(self) -> Dict[str, float]:
        raise NotImplementedError

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.scores.append(self.image_score(pred, gt))

    def extend(self, scores: Iterable[Dict[str, object]]) -> None:
        self.scores.extend(scores)

    def __len__(self) -> int:
        return len(self.scores)

    def results(self) -> Dict[str, float]:
        if not self.scores:
            raise ValueError("no images were scored")
        return {**self.summarize(), "num_images": len(self.scores)}
