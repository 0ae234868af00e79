"""`jobs/benchmark.py train-epoch`: seconds of a training epoch, split into training and
validation, and rows read per validation across all workers.

A synthetic dataset (``train_rows`` / ``val_rows`` scenes) is trained for ``epochs`` epochs
by ``run_training`` on a local Ray with ``workers`` workers, validating every epoch. Per
validation (the one before training included) the loop records its seconds and how many
validation rows the workers received together: with the split streamed across workers that
is the split's size, not workers x size. Per epoch it records the training seconds.
"""

from __future__ import annotations

import os
import tempfile
from typing import List


def bench_train_epoch(arch: str = "tiny", img_size: int = 128, workers: int = 2, train_rows: int = 32,
                      val_rows: int = 16, epochs: int = 2, batch_size: int = 4) -> List[dict]:
    import ray

    from ..data.prepare import prepare_dataset
    from ..data.sources import synthetic_listing
    from ..train.config import TrainConfig
    from ..train.driver import run_training
    from ..checkpoints import read_metrics_lines

    with tempfile.TemporaryDirectory(prefix="samadapter-train-epoch-") as tmp:
        dataset = os.path.join(tmp, "data")
        prepare_dataset(synthetic_listing(train_rows, val_rows, size=img_size, seed=7), dataset, progress=False)
        cfg = TrainConfig().with_overrides([
            f"model.arch={arch}", f"model.overrides.img_size={img_size}", f"data.dataset={dataset}",
            f"run.storage={os.path.join(tmp, 'runs')}", "run.name=bench", f"run.workers={workers}",
            "run.cpus_per_worker=0.5", f"optim.epochs={epochs}", f"optim.batch_size={batch_size}", "run.val_every=1",
        ])
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        outcome = run_training(cfg, progress=False)
        lines = read_metrics_lines(outcome.run_uri)
    return epoch_rows(lines, workers, train_rows, val_rows)


def epoch_rows(lines: List[dict], workers: int, train_rows: int, val_rows: int) -> List[dict]:
    """The benchmark's rows from a run's metrics lines: one per validation (the one before
    training included), with that epoch's training seconds."""
    rows = []
    for r in lines:
        if r.get("phase") not in ("before training", "validation"):
            continue
        rows.append({
            "epoch": r["epoch"], "workers": workers, "train_rows": train_rows, "val_rows": val_rows,
            "val_rows_read": r["val_rows_read"], "train_seconds": r.get("train_seconds"), "val_seconds": r["val_seconds"],
            "train_images_per_s": r.get("images_per_s"), "s_measure": r["s_measure"],
        })
    return rows
