"""Validation as a split dataset: every row read, decoded and scored once per validation
across all workers.

Driver side: ``validation_dataset`` (Ray Data: read the split, decode in CPU tasks to uint8
model inputs plus the packed ground truth at its original size) and ``TrainDataConfig``,
which splits the training set evenly (DDP needs equal step counts) and the validation set
without dropping rows. Worker side: ``validate`` scores this worker's stream and gathers
the per-image scores, so every worker returns the metrics of the whole split.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch.distributed as dist

from ..data.reading import decode_for_validation, read_split
from ..evaluate.predict import predict_batches
from ..tasks import DEFAULT_TASK, get_task

TRAIN, VAL = "train", "val"


def validation_dataset(dataset_uri: str, split: str, img_size: int, resize_mode: str, decode_batch: int = 16,
                       num_classes: int = 1):
    return read_split(dataset_uri, split, columns=["image_id", "image", "mask"]).map_batches(
        decode_for_validation, fn_kwargs={"img_size": img_size, "resize_mode": resize_mode, "num_classes": num_classes},
        batch_size=decode_batch, batch_format="numpy")


def train_data_config():
    """Ray Train's DataConfig with the validation set split ``equal=False``: Ray's default
    (``equal=True``) may drop rows to even the shards, which training needs and validation
    must not do."""
    from ray.train import DataConfig

    from ..ray_compat import data_config_split_options

    class TrainDataConfig(DataConfig):
        def __init__(self):
            super().__init__(datasets_to_split=[TRAIN])

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            others = {k: v for k, v in datasets.items() if k != VAL}
            output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
            if VAL in datasets:
                ds = datasets[VAL].copy(datasets[VAL])
                if ds.name is None:
                    ds.set_name(VAL)
                ds.context.execution_options, locality = data_config_split_options(self, VAL)
                hints = worker_node_ids if locality else None
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    output[i][VAL] = split
            return output

    return TrainDataConfig()


def rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def score_batches(model, batches, resize_mode: str, bf16: bool, task: str = DEFAULT_TASK) -> Tuple[object, int, int]:
    """(metrics, rows that failed to decode, rows seen) over ``decode_for_validation``
    batches, scored with the task's metrics at each ground truth's original size (the one
    inference path, ``evaluate/predict.py``, that ``jobs/evaluate.py`` takes too)."""
    metrics, bad, rows = get_task(task).metrics(), 0, 0
    for p in predict_batches(model, batches, resize_mode, bf16):
        rows += 1
        if p.prob is None:
            bad += 1
        else:
            metrics.add(p.prob, p.gt)
    return metrics, bad, rows


def validate(model, shard, batch_size: int, resize_mode: str, bf16: bool, task: str = DEFAULT_TASK) -> Dict[str, float]:
    """Score this worker's stream of the validation split; gather across workers.

    Returns the split's metrics plus ``val_skipped`` (rows that failed to decode) and
    ``val_rows_read`` (rows the workers received together: the split's size, each row once).
    """
    batches = shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)
    metrics, bad, rows = score_batches(model, batches, resize_mode, bf16, task)
    rank, world = rank_and_world()
    if world > 1:
        gathered: List[Optional[tuple]] = [None] * world
        dist.all_gather_object(gathered, (metrics.scores, bad, rows))
        metrics, bad, rows = get_task(task).metrics(), 0, 0
        for part, part_bad, part_rows in gathered:
            metrics.extend(part)
            bad += part_bad
            rows += part_rows
    results = metrics.results()
    results["val_skipped"] = bad
    results["val_rows_read"] = rows
    return results
