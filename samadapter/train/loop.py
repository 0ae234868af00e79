"""The per-worker training loop (runs inside Ray Train workers).

One call of :func:`train_loop_per_worker` per worker: build the model (frozen SAM +
adapter), wrap it in DDP through ``ray.train.torch.prepare_model`` and always call the
wrapped module so gradients are all-reduced, train on this worker's shard, validate on
this worker's share of the validation split (gathered across workers), and report.
Rank 0 attaches the checkpoint; every rank calls ``ray.train.report``.
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
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..data import storage
from ..metrics import CODMetrics
from ..modeling import build_model
from ..modeling import weights as weights_mod
from ..predict import predict_split
from .config import TrainConfig
from .losses import segmentation_loss

log = logging.getLogger("samadapter.train")

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


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


# ------------------------------------------------------------ validation
def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def validate(model, cfg: TrainConfig, dataset_uri: str, bf16: bool) -> Dict[str, float]:
    """Score the whole validation split at the original ground-truth sizes.

    Each worker scores rows ``i`` with ``i % world == rank``; per-image scores are gathered
    so every worker returns the metrics of the whole split.
    """
    rank, world = _world()
    metrics = CODMetrics()
    bad = 0
    for _, decoded, prob in predict_split(
        model, dataset_uri, cfg.data.val_split, batch_size=max(1, cfg.optim.batch_size * 2),
        resize_mode=cfg.data.resize_mode, bf16=bf16, select=lambda i: i % world == rank,
    ):
        if prob is None:
            bad += 1
        else:
            metrics.add(prob, decoded.mask)
    scores = metrics.scores
    if world > 1:
        gathered: List[Optional[list]] = [None] * world
        dist.all_gather_object(gathered, (scores, bad))
        merged = CODMetrics()
        bad = 0
        for part, part_bad in gathered:
            merged.extend(part)
            bad += part_bad
        metrics = merged
    results = metrics.results()
    results["val_skipped"] = bad
    return results


def replicas_in_sync(params: List[torch.nn.Parameter]) -> bool:
    """Whether every worker holds bit-identical trainable weights (DDP all-reduced them).

    Raises:
        RuntimeError: when they differ - gradients were not all-reduced, a bug.
    """
    rank, world = _world()
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


# --------------------------------------------------------------- metrics log
def append_metrics_line(run_uri: str, record: dict) -> None:
    """Append one JSON line to ``<run>/metrics.jsonl`` (rewritten whole: object stores
    cannot append)."""
    uri = storage.join(run_uri, METRICS_FILE)
    try:
        existing = storage.read_bytes(uri)
    except FileNotFoundError:
        existing = b""
    storage.write_bytes(uri, existing + (json.dumps(record) + "\n").encode())


def read_metrics_lines(run_uri: str) -> List[dict]:
    try:
        data = storage.read_bytes(storage.join(run_uri, METRICS_FILE))
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


# --------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config``: ``{"train": TrainConfig dict, "dataset": URI,
    "run_uri": URI, "num_train_rows": int}``."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    start_epoch, global_step = 0, 0
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    rows_per_worker = config["num_train_rows"] // world
    steps_per_epoch = max(1, math.ceil(rows_per_worker / cfg.optim.batch_size))
    total = cfg.optim.epochs * (steps_per_epoch if cfg.optim.schedule_unit == "step" else 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s / total, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.schedule)
    )

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # A private download per worker: workers on one node must not read a shared
        # download directory while another worker is still filling it.
        with tempfile.TemporaryDirectory(prefix="samadapter-ckpt-") as d:
            checkpoint.to_directory(d)
            weights_mod.load_adapter(model, os.path.join(d, ADAPTER_FILE))
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        if rank == 0:
            log.info("resumed from checkpoint at epoch %d (step %d)", start_epoch, global_step)
            append_metrics_line(config["run_uri"], {"phase": "resumed", "epoch": start_epoch, "global_step": global_step})

    model.to(device)
    # DDP over the trainable parameters only (frozen ones are not registered), so no
    # find_unused_parameters is needed.
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    trainable = model.trainable_parameters()
    run_uri = config["run_uri"]
    dataset_uri = config["dataset"]

    if start_epoch == 0:
        before = validate(model, cfg, dataset_uri, bf16)
        if rank == 0:
            append_metrics_line(run_uri, {"epoch": 0, "phase": "before training", **before})
            log.info("before training: S %.3f  E %.3f  wF %.3f  MAE %.3f", before["s_measure"], before["e_measure"], before["weighted_f"], before["mae"])
        ray.train.report({"epoch": 0, **{f"before_{k}": v for k, v in before.items()}})

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.optim.epochs):
        if cfg.run.fail_at_epoch == epoch and rank == cfg.run.fail_rank and start_epoch < epoch:
            raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch} (run.fail_at_epoch test hook)")
        model.train()
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        t_interval, n_interval = t0, 0
        for batch in shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="numpy", prefetch_batches=2):
            x = torch.from_numpy(batch["images"]).to(device, non_blocking=True)
            y = torch.from_numpy(batch["masks"]).to(device, non_blocking=True)[:, None].float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = ddp_model(x)  # the DDP wrapper: gradients are all-reduced
            loss = segmentation_loss(logits, y, cfg.optim.bce_weight, cfg.optim.iou_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            optimizer.step()
            if cfg.optim.schedule_unit == "step":
                scheduler.step()
            global_step += 1
            loss_sum += loss.item() * len(x)
            seen += len(x)
            n_interval += len(x)
            if rank == 0 and global_step % cfg.run.log_every == 0:
                now = time.perf_counter()
                log.info(
                    "epoch %d/%d step %d loss %.4f lr %.2e images/s %.1f peak mem %.2f GiB",
                    epoch + 1, cfg.optim.epochs, global_step, loss.item(), optimizer.param_groups[0]["lr"],
                    n_interval * world / max(now - t_interval, 1e-9), peak_memory_gib(device),
                )
                t_interval, n_interval = now, 0
        if cfg.optim.schedule_unit == "epoch":
            scheduler.step()
        elapsed = time.perf_counter() - t0
        in_sync = replicas_in_sync(trainable)
        totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        train_loss = float(totals[0] / max(totals[1], 1.0))
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": float(totals[1]) / max(elapsed, 1e-9),
            "global_step": global_step,
            "replicas_in_sync": in_sync,
        }
        if (epoch + 1) % cfg.run.val_every != 0 and epoch + 1 != cfg.optim.epochs:
            if rank == 0:
                log.info("epoch %d: train loss %.4f", epoch + 1, train_loss)
            ray.train.report(record)
            continue
        record.update(validate(model, cfg, dataset_uri, bf16))
        if rank == 0:
            log.info(
                "epoch %d: train loss %.4f | val S %.3f E %.3f wF %.3f MAE %.3f",
                epoch + 1, train_loss, record["s_measure"], record["e_measure"], record["weighted_f"], record["mae"],
            )
            append_metrics_line(run_uri, {"phase": "validation", **record})
            with tempfile.TemporaryDirectory() as tmp:
                storage.write_bytes(
                    os.path.join(tmp, ADAPTER_FILE),
                    weights_mod.adapter_bytes(model, {"epoch": str(epoch + 1), "run": cfg.run.name}),
                )
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1,
                        "global_step": global_step,
                    },
                    os.path.join(tmp, STATE_FILE),
                )
                with open(os.path.join(tmp, "metrics.json"), "w") as f:
                    json.dump(record, f, indent=2)
                ray.train.report(record, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(record)
