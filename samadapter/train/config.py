"""Typed training configuration: a task and four sections, model, data, optim and run.

Recipes are YAML files under ``configs/``: a ``task`` (camouflage, shadow, polyp, generic;
``samadapter/tasks.py``) and the four sections. ``jobs/train.py`` takes every field as a
flag (``--optim.lr 1e-4``, ``--model.arch vit_b``) and as ``--set section.key=value``
(``samadapter/config.py``: one mechanism for every job). Field defaults follow the paper's
optimisation recipe and a local run (tiny model, synthetic scenes, two CPU workers);
``jobs/train.py`` without ``--config`` uses ``configs/local-tiny.yaml``.

Torch-free: the checks that need the model's registry import it when a config is built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

import yaml

from .. import config as settings
from .. import storage
from ..config import ConfigError, option
from ..constants import ATTENTION_IMPLS
from ..data.synthetic import SCENES
from ..data.transforms import RESIZE_MODES
from ..modeling.arch import ARCHS, arch_config
from ..tasks import DEFAULT_TASK, LOSSES, MULTICLASS, TASKS

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "OptimConfig", "RunConfig", "TrainConfig", "RECIPES"]

log = logging.getLogger(__name__)
_READ_DATASET = object()  # with_task_resolved's default: read the dataset's task from its _dataset.json

# The recipes shipped with the project (a missing --config lists them).
RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


@dataclass
class ModelConfig:
    """The model: architecture, SAM weights, attention path."""

    arch: str = option("tiny", "architecture (samadapter/modeling/arch.py)", choices=sorted(ARCHS))
    sam_checkpoint: Optional[str] = option(None, "official SAM weights, path or URI (none: a random base, "
                                                 "meaningless on real data)")
    overrides: Dict[str, Any] = option(help="any architecture field, e.g. --set model.overrides.img_size=512 or "
                                            "model.overrides.knowledge=fft+edges", factory=dict, metavar="YAML")
    activation_checkpointing: Optional[bool] = option(None, "checkpoint the frozen encoder blocks' activations "
                                                            "(default: on with GPUs, off on CPU)")
    attention: str = option("auto", "encoder attention: original (segment_anything's), fast (SDPA) or auto (fast "
                                    "for 14-token windows, original for smaller ones)", choices=ATTENTION_IMPLS)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch {self.arch!r} is unknown; choose one of {sorted(ARCHS)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention {self.attention!r}: choose one of {list(ATTENTION_IMPLS)}")
        try:
            arch_config(self.arch, **self.overrides)
        except ValueError as exc:
            raise ConfigError(f"model.overrides: {exc}") from None

    @property
    def img_size(self) -> int:
        return arch_config(self.arch, **self.overrides).img_size


@dataclass
class DataConfig:
    """The data: a dataset from jobs/prepare_data.py, or the embedded synthetic scenes."""

    dataset: Optional[str] = option(None, "dataset URI from jobs/prepare_data.py (none: the embedded synthetic "
                                          "scenes, generated once into cache_dir)")
    train_split: str = option("train", "the split trained on")
    val_split: str = option("test", "the split validated on (held out)")
    resize_mode: str = option("squash", "how images are fitted to the model input", choices=RESIZE_MODES)
    hflip: bool = option(True, "random horizontal flips while training")
    synthetic_train: int = option(256, "embedded default: training scenes")
    synthetic_test: int = option(64, "embedded default: test scenes")
    synthetic_size: int = option(256, "embedded default: scene side in pixels")
    synthetic_seed: int = option(0, "embedded default: scene seed")
    cache_dir: Optional[str] = option(None, "where the embedded scenes are generated (default ~/.cache/samadapter)")
    synthetic_kind: Optional[str] = option(None, "kind of the embedded scenes (default: the task's)",
                                           choices=sorted(SCENES))

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"data.resize_mode {self.resize_mode!r}: choose one of {list(RESIZE_MODES)}")
        if self.train_split == self.val_split:
            raise ConfigError("data.train_split and data.val_split are the same split; validate on held-out data")
        if self.synthetic_kind is not None and self.synthetic_kind not in SCENES:
            raise ConfigError(f"data.synthetic_kind {self.synthetic_kind!r}: choose one of {sorted(SCENES)}")

    def dataset_uri(self, kind: str = "camouflage") -> str:
        """The dataset to train on: ``dataset``, or the embedded synthetic scenes of ``kind``
        in the cache."""
        if self.dataset:
            return self.dataset
        cache = self.cache_dir or storage.cache_dir()
        prefix = "synthetic" if kind == "camouflage" else f"synthetic-{kind}"
        return os.path.join(
            cache,
            f"{prefix}-{self.synthetic_train}-{self.synthetic_test}-{self.synthetic_size}-{self.synthetic_seed}",
        )


@dataclass
class OptimConfig:
    """Optimisation: AdamW with a cosine or constant schedule."""

    epochs: int = option(20, "epochs")
    batch_size: int = option(2, "images per step per worker")
    lr: float = option(2e-4, "peak learning rate")
    min_lr: float = option(1e-7, "the cosine schedule's last learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    schedule: str = option("cosine", "cosine (lr -> min_lr over all epochs) or constant", choices=("cosine", "constant"))
    schedule_unit: str = option("epoch", "the schedule advances per step or per epoch", choices=("step", "epoch"))
    grad_clip: float = option(1.0, "max gradient norm; 0 disables")
    loss: str = option("auto", "loss (train/losses.py); auto: the task's", choices=("auto", *LOSSES))
    bce_weight: float = option(1.0, "weight of the BCE term")
    iou_weight: float = option(1.0, "weight of the IoU term (bce_iou)")
    dice_weight: float = option(1.0, "weight of the Dice term (dice_bce)")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size (per worker) must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule {self.schedule!r}: choose cosine or constant")
        if self.schedule_unit not in ("step", "epoch"):
            raise ConfigError(f"optim.schedule_unit {self.schedule_unit!r}: choose step or epoch")
        if self.grad_clip < 0:
            raise ConfigError("optim.grad_clip must be >= 0 (0 disables clipping)")
        if self.loss != "auto" and self.loss not in LOSSES:
            raise ConfigError(f"optim.loss {self.loss!r}: choose auto (the task's) or one of {list(LOSSES)}")


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RunConfig:
    """The run: its name and storage, workers and their resources."""

    # Keys that earlier versions wrote into a run's config.yaml and that mean nothing now: read
    # and dropped, so that an old run's config still loads.
    RETIRED_KEYS: ClassVar[tuple] = ("fail_at_epoch", "fail_rank")

    name: str = option("local-tiny", "run name: checkpoints live in <storage>/<name>; rerunning a name resumes it")
    storage: Optional[str] = option(None, "where runs are kept: a path or URI such as s3://bucket/runs "
                                          "(default ./runs)")
    workers: int = option(2, "training workers")
    gpus_per_worker: float = option(0.0, "GPUs per worker; 0 trains on CPU")
    cpus_per_worker: float = option(0.5, "CPUs reserved per worker; below the node's count, so that Ray Data has "
                                         "CPUs to decode with")
    max_failures: int = option(3, "worker-group restarts from the latest checkpoint before the run fails")
    val_every: int = option(1, "epochs between validations; a checkpoint is saved at each")
    log_every: int = option(10, "steps between log lines")
    seed: int = option(0, "seed of the data order and the adapter's init")
    bf16: Optional[bool] = option(None, "bf16 autocast (default: on GPU, fp32 on CPU)")
    accelerator_type: Optional[str] = option(None, "GPU model the workers must run on (Ray's accelerator type: A100, "
                                                   "H100, A10G, L4, ...): ties training to the node group that has it")
    tracking_uri: Optional[str] = option(None, "MLflow tracking URI (http://host:5000, databricks, file:/path, ...); "
                                               "default a local store <storage>/mlflow.db when the storage is a "
                                               "local path, none when it is remote")
    experiment: str = option("samadapter", "MLflow experiment the run is logged in")
    placement_strategy: str = option("PACK", "placement of the workers' bundles: PACK fills one node before the next "
                                             "(NVLink), SPREAD uses as many nodes as it can", choices=PLACEMENT_STRATEGIES)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"run.name {self.name!r} must be a non-empty name without '/'")
        if self.workers < 1:
            raise ConfigError(f"run.workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ConfigError("run.gpus_per_worker and run.cpus_per_worker must be >= 0")
        if self.val_every < 1:
            raise ConfigError(f"run.val_every must be >= 1 epoch, got {self.val_every}")
        if self.log_every < 1:
            raise ConfigError(f"run.log_every must be >= 1 step, got {self.log_every}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"run.placement_strategy {self.placement_strategy!r}: choose one of {list(PLACEMENT_STRATEGIES)}")
        if self.accelerator_type and not self.use_gpu:
            raise ConfigError(f"run.accelerator_type {self.accelerator_type!r} needs GPUs: set run.gpus_per_worker > 0")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def storage_uri(self) -> str:
        return self.storage or os.path.abspath("runs")


@dataclass
class TrainConfig:
    """A training recipe."""

    task: Optional[str] = option(None, "the loss, the validation metrics and the metric that picks the best "
                                       "checkpoint (samadapter/tasks.py); default: the dataset's task (its "
                                       "_dataset.json), else camouflage", choices=sorted(TASKS))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}: choose one of {sorted(TASKS)}")
        if self.data.dataset is None and self.data.synthetic_size < 32:
            raise ConfigError("data.synthetic_size must be at least 32")

    @property
    def task_spec(self):
        """The :class:`samadapter.tasks.Task` of this recipe (camouflage while the task is
        left to the dataset and not yet resolved: ``with_task_resolved``)."""
        return TASKS[self.task or DEFAULT_TASK]

    def with_task_resolved(self, manifest: Any = _READ_DATASET) -> "TrainConfig":
        """This recipe with its task decided: the recipe's (``--task``) wins, then the
        dataset's (``manifest``: its ``_dataset.json``, read from ``data.dataset`` when not
        given; None: the dataset says nothing), then the embedded scenes' kind, then
        camouflage. A recipe task that differs from the dataset's costs one warning naming
        both. Several classes: ``model.overrides.num_classes`` defaults to the dataset's
        class count, and only the multiclass task has more than one."""
        if manifest is _READ_DATASET:
            manifest = None
            if self.data.dataset:
                from ..data.records import read_dataset_info

                manifest = read_dataset_info(self.data.dataset)
        manifest = manifest or {}
        dataset_task = manifest.get("task")
        cfg = self
        if self.task is not None:
            if dataset_task and dataset_task != self.task:
                log.warning("dataset %s was converted for task %r; training task %r as the recipe says",
                            self.data.dataset or self.dataset_uri(), dataset_task, self.task)
        else:
            implied = dataset_task or (None if self.data.dataset else self.data.synthetic_kind) or DEFAULT_TASK
            cfg = self.with_values({"task": implied})
        classes = manifest.get("classes")
        if cfg.task == MULTICLASS and "num_classes" not in cfg.model.overrides and classes:
            cfg = cfg.with_values({"model.overrides": {**cfg.model.overrides, "num_classes": len(classes)}})
        if (cfg.task == MULTICLASS) != (cfg.num_classes > 1):
            raise ConfigError(f"task {cfg.task} with model.overrides.num_classes {cfg.num_classes}: the multiclass task "
                              "needs num_classes >= 2 (or a dataset that lists its classes), the other tasks 1")
        return cfg

    @property
    def num_classes(self) -> int:
        """1: one foreground mask; C >= 2: classes, background included (multiclass)."""
        return int(self.model.overrides.get("num_classes", 1))

    @property
    def loss(self) -> str:
        """The loss to train with: ``optim.loss``, or the task's default for ``auto``."""
        return self.task_spec.loss if self.optim.loss == "auto" else self.optim.loss

    @property
    def synthetic_kind(self) -> str:
        """The embedded scenes this recipe trains on without a dataset: ``data.synthetic_kind``
        or the task's."""
        return self.data.synthetic_kind or self.task_spec.synthetic

    def dataset_uri(self) -> str:
        return self.data.dataset_uri(self.synthetic_kind)

    # ----------------------------------------------------------- conversions
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "TrainConfig":
        return settings.from_dict(cls, d)

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        """A recipe file; a ``ConfigError`` names the file (and, when it does not exist, the
        recipes in ``configs/``)."""
        data = settings.load_yaml(path, "--config", RECIPES)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, assignments: List[str]) -> "TrainConfig":
        """This recipe with ``section.key=value`` assignments (``--set``'s form: text parsed
        for the field's type) applied in order."""
        values = []
        for item in assignments:
            key, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=1e-4")
            key = key.strip()
            values.append((key, settings.parse_text(text, settings.field_type(TrainConfig, key), key)))
        return self.with_values(dict(values))

    def with_values(self, values: Dict[str, Any]) -> "TrainConfig":
        """This recipe with values (already typed, e.g. a sweep trial's) at dotted keys."""
        d = self.to_dict()
        for key, value in values.items():
            settings.field_type(TrainConfig, key)  # an unknown key is an error naming the known ones
            settings.assign(d, key, value)
        return TrainConfig.from_dict(d)
