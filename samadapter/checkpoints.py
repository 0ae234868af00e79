"""Training runs and their checkpoints: the layout of a run, in one place, and how an
adapter is found in it. Training writes runs; evaluation, the segment job and sweeps read
them through this module (torch-free: a driver imports it before Ray starts).

    <storage>/<name>/                   a run (rerunning the same name resumes it)
        config.yaml                     the resolved TrainConfig
        metrics.jsonl                   one JSON line per phase: before training, step (every run.log_every),
                                        validation, resumed; append-only (read_metrics_lines: the
                                        lines of the run's state, without work a restart discarded)
        curves.png                      loss and validation metrics so far (train/curves.py)
        tracking.json                   the MLflow tracking URI and run id (tracking.py): a resumed run
                                        logs into the same MLflow run
        checkpoint_*/                   Ray Train's checkpoints (the best by the task's metric, and the latest)
            adapter.safetensors         the adapter (weights.py's format)
            train_state.pt              optimizer, scheduler, epoch, step (weights_only)
            metrics.json                the epoch's record (with its task: tasks.py picks the best)
"""

from __future__ import annotations

import json
import logging
from typing import List, Optional

from . import storage

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_PREFIX = "checkpoint_"
ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "train_state.pt"
CHECKPOINT_METRICS = "metrics.json"
CURVES_FILE = "curves.png"
TRACKING_FILE = "tracking.json"


def checkpoint_dirs(run_uri: str) -> List[str]:
    """URIs of the run's checkpoint folders (none when the run does not exist)."""
    fs, path = storage.fsspec_filesystem(run_uri)
    if not fs.exists(path):
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True) if e["type"] == "directory"]
    return [storage.join(run_uri, n) for n in sorted(names) if n.startswith(CHECKPOINT_PREFIX)]


def run_exists(run_uri: str) -> bool:
    """Whether a run has checkpoints to continue from."""
    return bool(checkpoint_dirs(run_uri))


def best_checkpoint(run_uri: str) -> Optional[str]:
    """The checkpoint folder with the best score that holds an adapter, or None. The score
    is the run's task's selection metric (``tasks.py``: S-measure up for camouflage, BER
    down for shadows, Dice up for polyps), read from each checkpoint's record."""
    from .tasks import DEFAULT_TASK, get_task

    best, best_score, best_task = None, None, None
    for ckpt in checkpoint_dirs(run_uri):
        try:
            metrics = json.loads(storage.read_bytes(storage.join(ckpt, CHECKPOINT_METRICS)))
        except FileNotFoundError:
            continue
        task = get_task(metrics.get("task", DEFAULT_TASK))
        if task.select_by not in metrics or not storage.exists(storage.join(ckpt, ADAPTER_FILE)):
            continue
        score = float(metrics[task.select_by])
        if best is None or task.better(score, best_score):
            best, best_score, best_task = ckpt, score, task
    if best is not None:
        log.info("best checkpoint of %s (%s %.3f, %s is better): %s", run_uri, best_task.select_by, best_score,
                 "higher" if best_task.higher_is_better else "lower", best)
    return best


def resolve_adapter(uri: str) -> str:
    """An adapter file from an adapter path, a checkpoint folder or a run folder (its best
    checkpoint)."""
    uri = str(uri).rstrip("/")
    if uri.endswith(".safetensors"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"checkpoint {uri} does not exist")
        return uri
    adapter = storage.join(uri, ADAPTER_FILE)
    if storage.exists(adapter):
        return adapter
    fs, path = storage.fsspec_filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"checkpoint {uri} does not exist")
    best = best_checkpoint(uri)
    if best is None:
        raise FileNotFoundError(
            f"{uri}: no adapter checkpoint found (expected an adapter .safetensors file, a checkpoint "
            f"folder with {ADAPTER_FILE}, or a training run folder with {CHECKPOINT_PREFIX}* folders)")
    return storage.join(best, ADAPTER_FILE)


def append_metrics_line(run_uri: str, *records: dict) -> None:
    """Append a JSON line per record to the run's metrics log (rewritten whole: object stores
    cannot append)."""
    uri = storage.join(run_uri, METRICS_FILE)
    try:
        existing = storage.read_bytes(uri)
    except FileNotFoundError:
        existing = b""
    storage.write_bytes(uri, existing + "".join(json.dumps(r) + "\n" for r in records).encode())


def read_tracking(run_uri: str) -> dict:
    """``{"uri", "run_id"}`` of the run's MLflow run, or {} when it has none yet."""
    try:
        return json.loads(storage.read_bytes(storage.join(run_uri, TRACKING_FILE)))
    except FileNotFoundError:
        return {}


def write_tracking(run_uri: str, uri: str, run_id: str) -> None:
    storage.write_bytes(storage.join(run_uri, TRACKING_FILE), json.dumps({"uri": uri, "run_id": run_id}).encode())


def read_metrics_lines(run_uri: str) -> List[dict]:
    """The run's metrics lines as its state has them. The file is append-only, and a worker
    group that restarts goes back to a checkpoint: a ``resumed`` line at epoch E means the
    lines written before it for epochs after E came from work that was thrown away (a worker
    lost before that epoch's checkpoint was registered; the epoch is trained and validated
    again), and a ``before training`` line means the run started again from nothing. Those
    lines stay in the file; they are not returned."""
    try:
        data = storage.read_bytes(storage.join(run_uri, METRICS_FILE))
    except FileNotFoundError:
        return []
    lines: List[dict] = []
    for line in data.decode().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("phase") == "before training":
            lines = []
        elif record.get("phase") == "resumed":
            lines = [r for r in lines if r.get("epoch", 0) <= record.get("epoch", 0)]
        lines.append(record)
    return lines
