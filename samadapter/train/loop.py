"""The per-worker training loop (runs inside Ray Train workers), in named steps.

``train_loop_per_worker``: ``setup`` (model, optimizer, schedule) -> ``restore`` (from
Ray Train's latest checkpoint) -> ``wrap_for_ddp`` -> per epoch ``train_epoch`` (calls
``train_step``, always through the DDP wrapper so gradients are all-reduced; ends with the
replica check) -> ``run_validation`` (``validation.py``: this worker's share of the split,
gathered) -> ``save_checkpoint`` (rank 0 attaches it; every rank reports). Model inputs
arrive as uint8 and are normalised on the device (``ops.to_model_input``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from .. import storage
from ..modeling import build_model
from ..modeling import weights as weights_mod
from ..ops import to_model_input
from .config import TrainConfig
from .losses import segmentation_loss
from .. import tracking
from ..checkpoints import ADAPTER_FILE, CHECKPOINT_METRICS, CURVES_FILE, STATE_FILE, append_metrics_line, read_metrics_lines
from .curves import draw_curves
from .validation import TRAIN, VAL, rank_and_world, validate

log = logging.getLogger("samadapter.train")


# -------------------------------------------------------------- schedule
def lr_factor(progress: float, lr: float, min_lr: float, schedule: str) -> float:
    """Multiplier of the base lr at ``progress`` in [0, 1] (cosine from lr to min_lr)."""
    if schedule == "constant":
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


# ------------------------------------------------------------ replicas
def replicas_in_sync(params: List[torch.nn.Parameter]) -> bool:
    """Whether every worker holds bit-identical trainable weights (DDP all-reduced them).

    Raises:
        RuntimeError: when they differ - gradients were not all-reduced, a bug.
    """
    rank, world = rank_and_world()
    if world == 1:
        return True
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().numpy().tobytes())
    hashes: List[Optional[str]] = [None] * world
    dist.all_gather_object(hashes, digest.hexdigest())
    if len(set(hashes)) != 1:
        raise RuntimeError(f"trainable weights differ across workers after the epoch: {hashes}")
    return True


# --------------------------------------------------------------- the loop
@dataclass
class Worker:
    """What one training worker holds between steps."""

    cfg: TrainConfig
    model: Any  # the SamAdapter
    ddp_model: Any  # its DDP wrapper: always call this one in training, so gradients are all-reduced
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    bf16: bool
    rank: int
    world: int
    run_uri: str
    epoch: int = 0  # epochs completed
    global_step: int = 0
    tracking_uri: Optional[str] = None  # MLflow (tracking.py): rank 0 logs into this run
    tracking_run_id: Optional[str] = None
    steps: List[dict] = field(default_factory=list)  # logged steps not yet in the metrics log


def setup(config: dict) -> Worker:
    """Model (frozen SAM + adapter) on this worker's device, optimizer, LR schedule."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    bf16 = cfg.run.bf16 if cfg.run.bf16 is not None else on_gpu
    if bf16 and not on_gpu:
        log.warning("bf16 autocast on CPU is slow and not what the recipes use; consider run.bf16=false")
    torch.manual_seed(cfg.run.seed)
    # Official SAM weights: fetched once per node (file lock), then read from local disk.
    sam_path = storage.local_copy(cfg.model.sam_checkpoint) if cfg.model.sam_checkpoint else None
    model = build_model(cfg.model.arch, sam_checkpoint=sam_path, attention=cfg.model.attention, **cfg.model.overrides)
    ac = cfg.model.activation_checkpointing if cfg.model.activation_checkpointing is not None else on_gpu
    model.image_encoder.checkpoint_blocks = bool(ac)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = max(1, math.ceil(config["num_train_rows"] // world / cfg.optim.batch_size))
    total = cfg.optim.epochs * (steps_per_epoch if cfg.optim.schedule_unit == "step" else 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s / total, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.schedule))
    track = config.get("tracking") or {}
    return Worker(cfg, model, None, optimizer, scheduler, device, bf16, rank, world, config["run_uri"],
                  tracking_uri=track.get("uri"), tracking_run_id=track.get("run_id"))


def restore(worker: Worker) -> bool:
    """Continue from Ray Train's latest checkpoint, if any: adapter, optimizer, schedule,
    epoch and step. Returns whether it resumed."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    # A private download per worker: workers on one node must not read a shared download
    # directory while another worker is still filling it.
    with tempfile.TemporaryDirectory(prefix="samadapter-ckpt-") as d:
        checkpoint.to_directory(d)
        weights_mod.load_adapter(worker.model, os.path.join(d, ADAPTER_FILE))
        state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    worker.optimizer.load_state_dict(state["optimizer"])
    worker.scheduler.load_state_dict(state["scheduler"])
    worker.epoch, worker.global_step = int(state["epoch"]), int(state["global_step"])
    if worker.rank == 0:
        log.info("resumed from checkpoint at epoch %d (step %d)", worker.epoch, worker.global_step)
        append_metrics_line(worker.run_uri, {"phase": "resumed", "epoch": worker.epoch, "global_step": worker.global_step})
    return True


def wrap_for_ddp(worker: Worker) -> None:
    """Move the model to the device and wrap it in DDP over the trainable parameters only
    (frozen ones are not registered, so no ``find_unused_parameters``)."""
    import ray.train.torch

    worker.model.to(worker.device)
    worker.ddp_model = ray.train.torch.prepare_model(worker.model, move_to_device=False)


def train_step(worker: Worker, batch: Dict[str, Any]) -> float:
    """One optimizer step on a batch of uint8 images (normalised on the device) and masks."""
    cfg = worker.cfg
    x = to_model_input(batch["images"], worker.model)
    y = torch.from_numpy(batch["masks"]).to(worker.device, non_blocking=True)[:, None].float()
    with torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=worker.bf16):
        logits = worker.ddp_model(x)  # the DDP wrapper: gradients are all-reduced
    loss = segmentation_loss(logits, y, cfg.optim.bce_weight, cfg.optim.iou_weight, cfg.loss, cfg.optim.dice_weight)
    worker.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(worker.model.trainable_parameters(), cfg.optim.grad_clip)
    worker.optimizer.step()
    if cfg.optim.schedule_unit == "step":
        worker.scheduler.step()
    worker.global_step += 1
    return loss.item()


def train_epoch(worker: Worker, shard, fail_after_first_step: bool = False) -> dict:
    """One pass over this worker's training shard; returns the epoch's record (mean loss
    over all workers, images/s, whether the replicas are bit-identical).
    ``fail_after_first_step``: the injected failure of recovery tests (``INJECT_FAILURE``)."""
    cfg = worker.cfg
    worker.model.train()
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    t_interval, n_interval = t0, 0
    for batch in shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="numpy", prefetch_batches=2):
        loss = train_step(worker, batch)
        if fail_after_first_step:
            raise RuntimeError(f"injected failure on rank {worker.rank} in epoch {worker.epoch + 1} ({INJECT_FAILURE})")
        n = len(batch["masks"])
        loss_sum, seen, n_interval = loss_sum + loss * n, seen + n, n_interval + n
        if worker.rank == 0 and worker.global_step % cfg.run.log_every == 0:
            now = time.perf_counter()
            step = {"loss": loss, "lr": worker.optimizer.param_groups[0]["lr"],
                    "images_per_s": n_interval * worker.world / max(now - t_interval, 1e-9),
                    "peak_memory_gib": peak_memory_gib(worker.device)}
            log.info("epoch %d/%d step %d loss %.4f lr %.2e images/s %.1f peak mem %.2f GiB", worker.epoch + 1,
                     cfg.optim.epochs, worker.global_step, *step.values())
            tracking.log_metrics(worker.tracking_uri, worker.tracking_run_id, step, worker.global_step)
            worker.steps.append({"phase": "step", "epoch": worker.epoch + 1, "global_step": worker.global_step, **step})
            t_interval, n_interval = now, 0
    if cfg.optim.schedule_unit == "epoch":
        worker.scheduler.step()
    elapsed = time.perf_counter() - t0
    in_sync = replicas_in_sync(worker.model.trainable_parameters())
    totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
    if worker.world > 1:
        dist.all_reduce(totals)
    worker.epoch += 1
    return {"epoch": worker.epoch, "train_loss": float(totals[0] / max(totals[1], 1.0)), "lr": worker.optimizer.param_groups[0]["lr"],
            "images_per_s": float(totals[1]) / max(elapsed, 1e-9), "train_seconds": elapsed,
            "global_step": worker.global_step, "replicas_in_sync": in_sync}


def run_validation(worker: Worker, shard) -> dict:
    t0 = time.perf_counter()
    scores = validate(worker.model, shard, max(1, worker.cfg.optim.batch_size * 2), worker.cfg.data.resize_mode, worker.bf16,
                      task=worker.cfg.task)
    scores["val_seconds"] = time.perf_counter() - t0
    scores["task"] = worker.cfg.task
    return scores


def describe_scores(task, scores: dict) -> str:
    """``S-alpha 0.830  mean E-phi 0.873 ...``: the task's metrics in one log line."""
    from ..metrics import METRIC_TITLES

    return "  ".join(f"{METRIC_TITLES.get(m, m)} {scores[m]:.3f}" for m in task.names)


# MLflow keys logged at the global step; a validation's record is logged at its epoch without them
_STEP_SERIES = ("epoch", "global_step", "loss", "lr", "images_per_s", "peak_memory_gib")


def record_validation(worker: Worker, record: dict) -> None:
    """Rank 0: the steps logged since the last validation and this validation's record into
    the metrics log (one write), its numbers to MLflow (step: the epoch), ``curves.png``
    redrawn."""
    append_metrics_line(worker.run_uri, *worker.steps, record)
    worker.steps.clear()
    per_epoch = {k: v for k, v in record.items() if k not in _STEP_SERIES}  # (lr, images/s: the step series')
    tracking.log_metrics(worker.tracking_uri, worker.tracking_run_id, per_epoch, record["epoch"])
    try:
        storage.write_bytes(storage.join(worker.run_uri, CURVES_FILE),
                            draw_curves(read_metrics_lines(worker.run_uri), worker.cfg.task_spec))
    except Exception as exc:  # noqa: BLE001 - a picture is not worth a failed run
        log.warning("curves.png not drawn: %s: %s", type(exc).__name__, exc)


def save_checkpoint(worker: Worker, record: dict) -> None:
    """Report the epoch with a checkpoint (adapter, optimizer and schedule state, metrics)
    from rank 0; every rank reports."""
    import ray.train
    from ray.train import Checkpoint

    if worker.rank != 0:
        ray.train.report(record)
        return
    record_validation(worker, {"phase": "validation", **record})
    with tempfile.TemporaryDirectory() as tmp:
        storage.write_bytes(os.path.join(tmp, ADAPTER_FILE),
                            weights_mod.adapter_bytes(worker.model, {"epoch": str(worker.epoch), "run": worker.cfg.run.name,
                                                               "task": worker.cfg.task}))
        torch.save({"optimizer": worker.optimizer.state_dict(), "scheduler": worker.scheduler.state_dict(),
                    "epoch": worker.epoch, "global_step": worker.global_step}, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, CHECKPOINT_METRICS), "w") as f:
            json.dump(record, f, indent=2)
        ray.train.report(record, checkpoint=Checkpoint.from_directory(tmp))


# Tests of recovery set this in the workers' environment: "<run name>:<epoch>:<rank>" makes
# that rank of that run raise once, after its first step past that many epochs (not again
# after the restart). After a step, not before it: the step's all-reduce waits for every rank,
# so rank 0 has reported the last epoch's checkpoint by then; a rank that raised at once could
# beat that report (an upload to S3 takes a while) and the group would restart from the
# checkpoint before it.
INJECT_FAILURE = "SAMADAPTER_INJECT_FAILURE"


def _failure_injected(run_name: str, worker) -> bool:
    spec = os.environ.get(INJECT_FAILURE, "")
    return bool(spec) and spec == f"{run_name}:{worker.epoch}:{worker.rank}"


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config``: ``{"train": TrainConfig dict, "run_uri": URI,
    "num_train_rows": int}``; datasets ``train`` and ``val`` (``validation.py``)."""
    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = setup(config)
    resumed = restore(worker)
    wrap_for_ddp(worker)
    cfg = worker.cfg
    train_shard, val_shard = ray.train.get_dataset_shard(TRAIN), ray.train.get_dataset_shard(VAL)
    start_epoch = worker.epoch

    if not resumed:
        if worker.rank == 0:
            log.info("model ready on %d worker(s); validating the %s split before training", worker.world,
                     cfg.data.val_split)
        before = run_validation(worker, val_shard)
        if worker.rank == 0:
            record_validation(worker, {"epoch": 0, "phase": "before training", "global_step": 0, **before})
            log.info("before training: %s", describe_scores(cfg.task_spec, before))
        ray.train.report({"epoch": 0, **{f"before_{k}": v for k, v in before.items()}})

    while worker.epoch < cfg.optim.epochs:
        record = train_epoch(worker, train_shard, _failure_injected(cfg.run.name, worker) and start_epoch < worker.epoch)
        if worker.epoch % cfg.run.val_every != 0 and worker.epoch != cfg.optim.epochs:
            if worker.rank == 0:
                log.info("epoch %d: train loss %.4f", worker.epoch, record["train_loss"])
            ray.train.report(record)
            continue
        record.update(run_validation(worker, val_shard))
        if worker.rank == 0:
            log.info("epoch %d: train loss %.4f | val %s", worker.epoch, record["train_loss"], describe_scores(cfg.task_spec, record))
        save_checkpoint(worker, record)
