"""The Ray Train driver: resolve the config, prepare data, run a TorchTrainer, summarise."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .. import storage
from ..ray_session import connect, ray_log_level
from ..data.reading import decode_for_training
from ..data.records import DATASET_INFO_FILE, read_dataset_info
from .config import ConfigError, TrainConfig
from .config import RunConfig as RunSection  # not ray.train.RunConfig
from .loop import train_loop_per_worker
from ..checkpoints import ADAPTER_FILE, CONFIG_FILE, read_metrics_lines, run_exists
from .validation import TRAIN, VAL, train_data_config, validation_dataset

log = logging.getLogger(__name__)

@dataclass
class TrainOutcome:
    run_uri: str
    resumed: bool
    before: Optional[dict]
    validations: List[dict] = field(default_factory=list)
    best_checkpoint: Optional[str] = None
    latest_checkpoint: Optional[str] = None
    best_metrics: Optional[dict] = None
    task: str = "camouflage"
    tracking_uri: Optional[str] = None  # MLflow (tracking.py)
    tracking_run_id: Optional[str] = None

    @property
    def best_adapter(self) -> Optional[str]:
        return storage.join(self.best_checkpoint, ADAPTER_FILE) if self.best_checkpoint else None


def ensure_embedded_dataset(cfg: TrainConfig, progress: bool = True) -> str:
    """The dataset URI to train on; generates the embedded synthetic dataset once."""
    uri = cfg.dataset_uri()
    if cfg.data.dataset:
        return uri
    if storage.exists(storage.join(uri, DATASET_INFO_FILE)):
        return uri
    from ..data.prepare import prepare_dataset
    from ..data.sources import synthetic_listing

    log.info("generating the embedded synthetic dataset into %s (once)", uri)
    listing = synthetic_listing(cfg.data.synthetic_train, cfg.data.synthetic_test, cfg.data.synthetic_size,
                                cfg.data.synthetic_seed, kind=cfg.synthetic_kind)
    prepare_dataset(listing, uri, overwrite=True, progress=progress)
    return uri


def _absolute(uri: str) -> str:
    return storage.local_path(uri) if storage.is_local(uri) else uri


def scaling_config(run: RunSection):
    """Ray Train's ScalingConfig from the recipe's ``run`` section: per-worker CPUs and
    GPUs, the GPU model (``accelerator_type``: Ray adds a tiny ``accelerator_type:<T>``
    resource to each bundle, which only nodes of that type have) and the bundles'
    placement strategy."""
    from ray.train import ScalingConfig

    resources = {"CPU": run.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = run.gpus_per_worker
    return ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker=resources,
                         accelerator_type=run.accelerator_type, placement_strategy=run.placement_strategy)


def run_training(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, callbacks=(),
                 parent_run_id: Optional[str] = None) -> TrainOutcome:
    """Train with Ray Train as configured; rerunning the same run name resumes it.

    Args:
        cfg: the resolved configuration.
        resume: require an existing run to continue (an error when there is none).
        progress: progress bars while generating the embedded dataset.
        callbacks: Ray Train callbacks for the run (a sweep passes Tune's reporter).
        parent_run_id: the MLflow run this run's is nested under (a sweep's).
    """
    import ray
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from ..data.reading import read_split

    storage_uri = _absolute(cfg.run.storage_uri())
    run_uri = storage.join(storage_uri, cfg.run.name)
    exists = run_exists(run_uri)
    if resume and not exists:
        raise ConfigError(f"--resume: there is no run {cfg.run.name!r} with checkpoints under {storage_uri}")
    if exists:
        log.info("run %s exists under %s: continuing from its latest checkpoint", cfg.run.name, storage_uri)

    dataset_uri = _absolute(ensure_embedded_dataset(cfg, progress=progress))
    manifest = read_dataset_info(dataset_uri)
    cfg = cfg.with_task_resolved(manifest)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in manifest["splits"]:
            raise ConfigError(f"dataset {dataset_uri} has no split {split!r} (it has {sorted(manifest['splits'])}); set data.train_split / data.val_split")
    num_train = int(manifest["splits"][cfg.data.train_split])
    if num_train < cfg.run.workers * cfg.optim.batch_size:
        raise ConfigError(
            f"{num_train} training rows cannot fill one batch of {cfg.optim.batch_size} on each of {cfg.run.workers} workers; "
            "lower run.workers or optim.batch_size"
        )

    if cfg.model.sam_checkpoint:
        if not storage.exists(cfg.model.sam_checkpoint):
            raise ConfigError(f"--sam-checkpoint {cfg.model.sam_checkpoint}: no such file")
    else:
        level = logging.INFO if cfg.model.arch == "tiny" else logging.WARNING
        log.log(level, "no --sam-checkpoint: the %s base is randomly initialised; results on real data are meaningless", cfg.model.arch)

    connect(log_to_driver=True)

    resolved = cfg.to_dict()
    resolved["data"]["dataset"] = dataset_uri
    resolved["run"]["storage"] = storage_uri
    storage.write_bytes(storage.join(run_uri, CONFIG_FILE), TrainConfig.from_dict(resolved).to_yaml().encode())
    track_uri, track_id = open_tracking(cfg, resolved, run_uri, storage_uri, parent_run_id)

    # One progress line per worker shard floods the job log; the loop logs progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    size = cfg.model.img_size
    train_ds = read_split(dataset_uri, cfg.data.train_split, columns=["image_id", "image", "mask"]).map_batches(
        decode_for_training,
        fn_kwargs={"img_size": size, "resize_mode": cfg.data.resize_mode, "hflip": cfg.data.hflip,
                   "num_classes": cfg.num_classes},
        batch_size=16,
        batch_format="numpy",
    )
    val_ds = validation_dataset(dataset_uri, cfg.data.val_split, size, cfg.data.resize_mode,
                                num_classes=cfg.num_classes)
    pa_fs, storage_path = storage.pyarrow_filesystem(storage_uri)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": resolved,
            "run_uri": run_uri,
            "num_train_rows": num_train,
            "tracking": {"uri": track_uri, "run_id": track_id},
        },
        scaling_config=scaling_config(cfg.run),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=pa_fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=list(callbacks),
            # Ray Train's own console lines (a dict per report) at the job's Ray log level
            logging_config=ray.train.LoggingConfig(log_level=ray_log_level()),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=cfg.task_spec.select_by,
                checkpoint_score_order=cfg.task_spec.mode
            ),
        ),
        datasets={TRAIN: train_ds, VAL: val_ds},
        dataset_config=train_data_config(),
    )
    log.info("starting %d training worker(s) (%g CPU%s each): each builds the model and reads its data shard",
             cfg.run.workers, cfg.run.cpus_per_worker,
             f", {cfg.run.gpus_per_worker:g} GPU" if cfg.run.use_gpu else "")
    result = trainer.fit()

    lines = read_metrics_lines(run_uri)
    before = next((r for r in lines if r.get("phase") == "before training"), None)
    validations = [r for r in lines if r.get("phase") == "validation"]
    outcome = TrainOutcome(run_uri=run_uri, resumed=exists, before=before, validations=validations, task=cfg.task,
                           tracking_uri=track_uri, tracking_run_id=track_id)
    scheme = storage.scheme(storage_uri)

    def uri_of(ckpt) -> str:
        return f"{scheme}://{ckpt.path}" if scheme and scheme not in ("file", "local") else ckpt.path

    if result.checkpoint is not None:
        outcome.latest_checkpoint = uri_of(result.checkpoint)
    best = result.get_best_checkpoint(cfg.task_spec.select_by, cfg.task_spec.mode) if result.best_checkpoints else None
    if best is not None:
        outcome.best_checkpoint = uri_of(best)
        outcome.best_metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), None)
    close_tracking(outcome)
    return outcome


def open_tracking(cfg: TrainConfig, resolved: dict, run_uri: str, storage_uri: str, parent_run_id: Optional[str] = None):
    """(tracking URI, MLflow run id) of this training run, or (None, None): the run of the
    run folder's ``tracking.json`` when it resumes, else a new one with the resolved recipe as
    params (a sweep's trial: nested under ``parent_run_id``)."""
    import ray
    import torch

    from .. import tracking
    from ..checkpoints import read_tracking, write_tracking
    from ..modeling.arch import arch_config
    from ..modeling.knowledge import describe_knowledge

    uri = tracking.default_uri(cfg.run.tracking_uri, storage_uri, storage.is_local(storage_uri))
    if uri is None:
        log.info("tracking: off (run storage %s is remote and run.tracking_uri is not set)", storage_uri)
        return None, None
    previous = read_tracking(run_uri)
    knowledge = describe_knowledge(arch_config(cfg.model.arch, **cfg.model.overrides).knowledge)
    tags = {"arch": cfg.model.arch, "task": cfg.task, "knowledge": knowledge, "ray": ray.__version__,
            "torch": torch.__version__, "samadapter.run_uri": run_uri, "mlflow.source.git.commit": tracking.git_commit()}
    run_id = tracking.open_run(uri, cfg.run.experiment, cfg.run.name, tracking.flatten(resolved),
                               {k: v for k, v in tags.items() if v}, previous.get("run_id") if previous.get("uri") == uri
                               else None, parent_run_id)
    if run_id is None:
        return None, None
    write_tracking(run_uri, uri, run_id)
    log.info("tracking: %s (MLflow run %s%s)", uri, run_id, ", continued" if previous.get("run_id") == run_id else "")
    return uri, run_id


def close_tracking(outcome: "TrainOutcome") -> None:
    """The best adapter and its metrics.json as artifacts of the MLflow run, which ends."""
    import tempfile

    from .. import tracking
    from ..checkpoints import CHECKPOINT_METRICS, CURVES_FILE

    if not outcome.tracking_run_id:
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, uri in ((ADAPTER_FILE, outcome.best_adapter),
                          (CHECKPOINT_METRICS, outcome.best_checkpoint and storage.join(outcome.best_checkpoint, CHECKPOINT_METRICS)),
                          (CURVES_FILE, storage.join(outcome.run_uri, CURVES_FILE))):
            if uri and storage.exists(uri):
                files.append(os.path.join(tmp, name))
                storage.write_bytes(files[-1], storage.read_bytes(uri))
        tracking.log_artifacts(outcome.tracking_uri, outcome.tracking_run_id, files, "best")
    tracking.end_run(outcome.tracking_uri, outcome.tracking_run_id)


def summary_table(outcome: TrainOutcome) -> str:
    """Before / best / last validation as a Markdown table, in the task's metrics."""
    from ..metrics import format_table
    from ..tasks import get_task

    task = get_task(outcome.task)
    rows: Dict[str, dict] = {}
    if outcome.before:
        rows["before training"] = outcome.before
    if outcome.validations:
        best = task.best_of(outcome.validations)
        last = outcome.validations[-1]
        rows[f"best (epoch {best['epoch']})"] = best
        if last is not best:
            rows[f"last (epoch {last['epoch']})"] = last
    return format_table(rows, task.names) if rows else "(no validation recorded)"
