"""Typed training configuration: model, data, optimisation, run.

Recipes are YAML files under ``configs/``: a ``task`` (camouflage, shadow, polyp, generic;
``samadapter/tasks.py``) and four sections; ``--set section.key=value`` (or ``--set
task=shadow``) overrides any field (values parsed as YAML). Field defaults follow the
paper's optimisation recipe and a local run (tiny model, synthetic scenes, two CPU
workers); ``jobs/train.py`` without ``--config`` uses ``configs/local-tiny.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .. import storage
from ..data.synthetic import SCENES
from ..data.transforms import RESIZE_MODES
from ..constants import ATTENTION_IMPLS
from ..modeling.arch import ARCHS, arch_config
from ..tasks import DEFAULT_TASK, LOSSES, TASKS


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the fix."""


@dataclass
class ModelConfig:
    arch: str = "tiny"
    # Official SAM weights (path or URI); None: random base (meaningless on real data).
    sam_checkpoint: Optional[str] = None
    # Any architecture field (img_size, scale_factor, knowledge, learnable_weights, ...).
    overrides: Dict[str, Any] = field(default_factory=dict)
    # Checkpoint the frozen encoder blocks' activations; None: on with GPUs, off on CPU.
    activation_checkpointing: Optional[bool] = None
    # Encoder attention path: original (segment_anything's), fast (SDPA) or auto
    # (fast for 14-token windows, original for smaller ones).
    attention: str = "auto"

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
    # Dataset URI written by jobs/prepare_data.py; None: the embedded synthetic dataset,
    # generated once into cache_dir.
    dataset: Optional[str] = None
    train_split: str = "train"
    val_split: str = "test"
    resize_mode: str = "squash"
    hflip: bool = True
    # The embedded default dataset.
    synthetic_train: int = 256
    synthetic_test: int = 64
    synthetic_size: int = 256
    synthetic_seed: int = 0
    cache_dir: Optional[str] = None
    # Kind of the embedded synthetic scenes: camouflage, shadow or polyp (None: the task's).
    synthetic_kind: Optional[str] = None

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
    epochs: int = 20
    batch_size: int = 2  # per worker
    lr: float = 2e-4
    min_lr: float = 1e-7
    weight_decay: float = 0.01
    # cosine (lr -> min_lr over all epochs) or constant
    schedule: str = "cosine"
    # the schedule advances per "step" or per "epoch"
    schedule_unit: str = "epoch"
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    # bce_iou, balanced_bce, dice_bce (train/losses.py) or auto: the task's default
    loss: str = "auto"
    bce_weight: float = 1.0
    iou_weight: float = 1.0
    dice_weight: float = 1.0

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
    # Run name: checkpoints live in <storage>/<name>; rerunning the same name resumes.
    name: str = "local-tiny"
    # Where runs are stored: local path or URI (s3://bucket/prefix). Default ./runs
    storage: Optional[str] = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    # CPUs reserved per worker. Keep it below the node's CPU count so Ray Data has CPUs
    # to decode with (with whole CPUs on a 2-CPU machine the data pipeline starves).
    cpus_per_worker: float = 0.5
    max_failures: int = 3
    val_every: int = 1  # epochs; a checkpoint is saved at every validation
    log_every: int = 10  # steps
    seed: int = 0
    bf16: Optional[bool] = None  # None: bf16 autocast on GPU, fp32 on CPU
    # GPU model the workers must run on (Ray's accelerator type: A100, H100, A10G, L4, ...):
    # ties training to the node group that has it (ray_cluster.yaml declares the type on
    # each GPU node group). None: any GPU node.
    accelerator_type: Optional[str] = None
    # Ray placement of the workers' bundles: PACK fills one node before the next (NVLink
    # within a node); SPREAD puts them on as many nodes as possible.
    placement_strategy: str = "PACK"

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


def _coerce(klass, key: str, value: Any) -> Any:
    """Numbers given as strings (YAML reads 1e-4 as a string) become the field's type."""
    kind = str(next(f.type for f in dataclasses.fields(klass) if f.name == key))
    if not isinstance(value, str):
        if "float" in kind and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    for name, cast in (("float", float), ("int", int)):
        if kind in (name, f"Optional[{name}]"):
            try:
                return cast(value)
            except ValueError:
                raise ConfigError(f"{klass.__name__[:-6].lower()}.{key}: {value!r} is not a{'n' if name == 'int' else ''} {name}") from None
    return value


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}
# Keys that earlier versions wrote into a run's config.yaml and that mean nothing now: read
# and dropped, so that an old run's config still loads.
_RETIRED = {"run": {"fail_at_epoch", "fail_rank"}}


@dataclass
class TrainConfig:
    # camouflage, shadow, polyp or generic: the default loss, the validation metrics and
    # the metric that picks the best checkpoint (samadapter/tasks.py)
    task: str = DEFAULT_TASK
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}: choose one of {sorted(TASKS)}")
        if self.data.dataset is None and self.data.synthetic_size < 32:
            raise ConfigError("data.synthetic_size must be at least 32")

    @property
    def task_spec(self):
        """The :class:`samadapter.tasks.Task` of this recipe."""
        return TASKS[self.task]

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
        d = dict(d or {})
        task = d.pop("task", DEFAULT_TASK)
        unknown = sorted(set(d) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}; the recipe has task and the sections {list(_SECTIONS)}")
        sections = {}
        for name, klass in _SECTIONS.items():
            values = d.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
            known = {f.name for f in dataclasses.fields(klass)}
            values = {k: v for k, v in values.items() if k not in _RETIRED.get(name, ())}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(f"unknown keys in {name}: {bad}; known: {sorted(known)}")
            values = {k: _coerce(klass, k, v) for k, v in values.items()}
            try:
                sections[name] = klass(**values)
            except TypeError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        return cls(task=task, **sections)

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        """A recipe file; a ``ConfigError`` names the file (and, when it does not exist, the
        recipes in ``configs/``)."""
        if not os.path.isfile(path):
            recipes = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
            known = sorted(f for f in os.listdir(recipes) if f.endswith(".yaml")) if os.path.isdir(recipes) else []
            raise ConfigError(f"--config {path}: no such file" + (f"; the recipes in configs/: {', '.join(known)}" if known else ""))
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, assignments: List[str]) -> "TrainConfig":
        """Apply ``section.key=value`` (or ``model.overrides.field=value``) assignments."""
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=1e-4")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            if parts == ["task"]:
                d["task"] = yaml.safe_load(raw) if raw.strip() else None
                continue
            if len(parts) < 2 or parts[0] not in _SECTIONS:
                raise ConfigError(f"--set {item!r}: the key must start with one of {list(_SECTIONS)}, e.g. run.workers=4")
            value = yaml.safe_load(raw) if raw.strip() else None
            target = d
            for p in parts[:-1]:
                if not isinstance(target.get(p), dict):
                    if p in target and target[p] is not None:
                        raise ConfigError(f"--set {item!r}: {p} is not a section")
                    target[p] = {}
                target = target[p]
            if parts[0] != "model" or parts[1] != "overrides":
                section_keys = {f.name for f in dataclasses.fields(_SECTIONS[parts[0]])}
                if len(parts) == 2 and parts[1] not in section_keys:
                    raise ConfigError(f"--set {item!r}: {parts[0]} has no key {parts[1]!r}; known: {sorted(section_keys)}")
            target[parts[-1]] = value
        return TrainConfig.from_dict(d)
