"""Sweeps: Ray Tune over recipe fields, every trial a Ray Train run of the recipe.

A sweep is a base recipe, fixed assignments (``set``) and the fields to vary:

    recipe: local-tiny.yaml            # relative to the sweep file (or a path / --config)
    set: {optim.epochs: 6}
    search: grid                       # grid: every combination; random: num_samples draws
    num_samples: 1
    grid:                              # a list: every value (grid) or one of them (random)
      model.overrides.knowledge: [fft, embedding, fft+embedding]
      optim.lr: {loguniform: [1.0e-4, 1.0e-3]}    # or uniform / randint / choice

The layout of a sweep, in one place:

    <storage>/<sweep>/                 run.storage of every trial
        <trial run>/                   a training run (checkpoints.py's layout); rerunning the
                                       sweep resumes it from its latest checkpoint
        _tune/                         Ray Tune's experiment state
        results.md  results.json       one row per trial, best first
        chart.png                      the selection metric per trial
        best.yaml                      the best trial's resolved recipe

Trials are Tune function trials that hold no CPU or GPU of their own: each starts a Ray
Train run whose workers Ray schedules like any other, so trials share the cluster (and an
autoscaler adds nodes for the ones waiting); ``max_concurrent`` bounds how many run at once.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional


from .. import storage, tracking
from ..ray_session import connect
from .. import config as settings
from ..config import option
from .config import ConfigError, TrainConfig
from ..tasks import Task, get_task

log = logging.getLogger(__name__)

RESULTS_MD, RESULTS_JSON, CHART_PNG, BEST_RECIPE, TUNE_DIR = "results.md", "results.json", "chart.png", "best.yaml", "_tune"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# A trial only waits for its Ray Train run; Tune needs some resource to place it, and a
# CPU fraction would leave Ray Data less than the whole CPU its read tasks need on a
# small machine: one byte of memory it is.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1}


@dataclass
class SweepSpec:
    """What to sweep; see the module docstring for the file format."""

    recipe: Optional[str] = option(None, "the base recipe YAML (relative to the sweep file; none: TrainConfig's "
                                         "defaults; jobs/sweep.py gives configs/local-tiny.yaml)")
    set: Dict[str, Any] = option(help="fixed recipe values of every trial, by dotted key", factory=dict)
    grid: Dict[str, Any] = option(help="recipe keys to vary: a list of values or a distribution", factory=dict)
    search: str = option("grid", "grid (every combination x num_samples) or random (num_samples draws)",
                         choices=("grid", "random"))
    num_samples: int = option(1, "grid: repeats of the grid; random: number of trials")
    max_concurrent: Optional[int] = option(None, "trials at once (default: as many as the cluster's GPUs, or half "
                                                 "its CPUs, hold now)")
    name: Optional[str] = option(None, "the sweep's name: its folder under the storage (default: the base run "
                                       "name + -sweep)")

    def __post_init__(self) -> None:
        if self.search not in ("grid", "random"):
            raise ConfigError(f"search {self.search!r}: choose grid or random")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if not self.grid:
            raise ConfigError("nothing to sweep: give --grid KEY=V1,V2 (repeatable) or a sweep file with a grid")
        if "task" in self.grid:
            raise ConfigError("a sweep compares trials of one task (their metrics differ): set task, do not sweep it")
        for key, values in self.grid.items():
            if isinstance(values, dict):
                if len(values) != 1 or next(iter(values)) not in DISTRIBUTIONS:
                    raise ConfigError(f"grid {key}: a distribution is one of {list(DISTRIBUTIONS)}, e.g. {{uniform: [0, 1]}}")
            elif not isinstance(values, list) or not values:
                raise ConfigError(f"grid {key}: give a non-empty list of values or a distribution")
        base = self.base_config()
        for key, values in self.grid.items():  # every key a recipe field, every value valid
            for value in values if isinstance(values, list) else []:
                try:
                    apply_params(base, {key: value})
                except ConfigError as exc:
                    raise ConfigError(f"grid {key}={value!r}: {str(exc).split(': ', 1)[-1]}") from None

    @classmethod
    def from_file(cls, path: str, **changes) -> "SweepSpec":
        try:
            return settings.from_dict(cls, {**read_file(path), **{k: v for k, v in changes.items() if v not in (None, {}, [])}})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def base_config(self) -> TrainConfig:
        cfg = TrainConfig.from_yaml(self.recipe) if self.recipe else TrainConfig()
        return cfg.with_values(self.set)

    def sweep_name(self) -> str:
        return self.name or f"{self.base_config().run.name}-sweep"


def read_file(path: str) -> Dict[str, Any]:
    """A sweep file as a dict, its recipe path made absolute (relative to the file)."""
    d = settings.load_yaml(path, "--sweep")
    if d.get("recipe") and not os.path.isabs(d["recipe"]):
        d["recipe"] = os.path.join(os.path.dirname(os.path.abspath(path)), d["recipe"])
    return d


def parse_grid(items: List[str]) -> Dict[str, list]:
    """``KEY=V1,V2,...`` -> {KEY: [V1, V2, ...]}, each value parsed for the recipe field's
    type (``samadapter/config.py``: ``1e-4`` a float, YAML inside mappings)."""
    grid = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. model.overrides.knowledge=fft,fft+edges")
        key = key.strip()
        try:
            tp = settings.field_type(TrainConfig, key)
            grid[key] = [settings.parse_text(v, tp, key) for v in raw.split(",")]
        except ConfigError as exc:
            raise ConfigError(f"--grid {item!r}: {exc}") from None
    return grid


def apply_params(cfg: TrainConfig, params: Dict[str, Any]) -> TrainConfig:
    """The recipe with a trial's values (dotted recipe keys) assigned."""
    return cfg.with_values(params)


def param_space(spec: SweepSpec) -> Dict[str, Any]:
    from ray import tune

    space = {}
    for key, values in spec.grid.items():
        if isinstance(values, dict):
            (kind, args), = values.items()
            space[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:
            space[key] = tune.grid_search(values) if spec.search == "grid" else tune.choice(values)
    return space


def trial_label(params: Dict[str, Any]) -> str:
    """``knowledge=fft+edges lr=0.0003``: the varied values, by the last part of their key."""
    def show(v):
        return f"{v:.3g}" if isinstance(v, float) else v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

    return " ".join(f"{k.rsplit('.', 1)[-1]}={show(v)}" for k, v in sorted(params.items()))


def trial_run_name(params: Dict[str, Any], suffix: str = "") -> str:
    """A run name (no '/') from the trial's values: the same trial of a rerun resumes its run."""
    slug = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", trial_label(params).replace(" ", "_"))
    if len(slug) > 80:
        slug = slug[:60] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug + (f"-{suffix}" if suffix else "")


def run_trial(params: Dict[str, Any], base: dict, sweep_uri: str, random_search: bool,
              parent_run_id: Optional[str] = None) -> None:
    """One Tune trial: the base recipe with ``params``, trained with Ray Train under the
    sweep; Train's reports reach Tune as they happen, then the best validation."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .driver import run_training

    suffix = ray.tune.get_context().get_trial_id() if random_search else ""
    cfg = apply_params(TrainConfig.from_dict(copy.deepcopy(base)), params).with_values(
        {"run.storage": sweep_uri, "run.name": trial_run_name(params, suffix)})
    outcome = run_training(cfg, progress=False, callbacks=[TuneReportCallback()], parent_run_id=parent_run_id)
    if not outcome.validations:
        raise RuntimeError(f"run {outcome.run_uri} recorded no validation")
    task = cfg.task_spec
    best = task.best_of(outcome.validations)
    before = outcome.before or {}
    ray.tune.report({
        **{f"best_{k}": best[k] for k in task.names},
        "best_epoch": best["epoch"],
        **{f"before_{k}": before[k] for k in task.names if k in before},
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in outcome.validations),
        "run_uri": outcome.run_uri,
        "best_checkpoint": outcome.best_checkpoint or "",
        "tracking_uri": outcome.tracking_uri or "",
        "tracking_run_id": outcome.tracking_run_id or "",
    })


def default_max_concurrent(cfg: TrainConfig, num_trials: int) -> int:
    """As many trials as the cluster's GPUs (or half its CPUs, the rest left to Ray Data)
    hold now; at least 1. On a cluster that scales from zero, pass it explicitly."""
    import ray

    have = ray.cluster_resources()
    if cfg.run.use_gpu:
        fits = have.get("GPU", 0) // (cfg.run.workers * cfg.run.gpus_per_worker)
    else:
        need = cfg.run.workers * max(cfg.run.cpus_per_worker, 0.1)
        fits = (have.get("CPU", 0) / 2) // need
    return int(max(1, min(num_trials, fits)))


def run_sweep(spec: SweepSpec, storage_uri: Optional[str] = None) -> Dict[str, str]:
    """Run the sweep on the current (or a new local) Ray; write the results; return their URIs."""
    from ray import tune
    from ray.tune import RunConfig as TuneRunConfig

    from .driver import _absolute, ensure_embedded_dataset

    base_cfg = spec.base_config()
    root = _absolute(storage_uri or base_cfg.run.storage_uri())
    sweep_uri = storage.join(root, spec.sweep_name())
    base_cfg.data.dataset = _absolute(ensure_embedded_dataset(base_cfg))  # once, not per trial
    base_cfg = base_cfg.with_task_resolved()  # the sweep's metric is the task's
    track_uri = tracking.default_uri(base_cfg.run.tracking_uri, root, storage.is_local(root))
    parent_run_id = None
    if track_uri:  # one parent run; each trial a run nested under it, in the same store
        base_cfg.run.tracking_uri = track_uri
        parent_run_id = tracking.open_run(track_uri, base_cfg.run.experiment, spec.sweep_name(),
                                          {**tracking.flatten({"grid": spec.grid}), "search": spec.search,
                                           "num_samples": str(spec.num_samples)},
                                          {"samadapter.sweep_uri": sweep_uri, "task": base_cfg.task})
        if parent_run_id:
            log.info("tracking: %s (MLflow parent run %s)", track_uri, parent_run_id)
    base = base_cfg.to_dict()
    connect()
    grid_size = 1
    for values in spec.grid.values():
        if isinstance(values, list) and spec.search == "grid":
            grid_size *= len(values)
    num_trials = grid_size * spec.num_samples
    concurrent = spec.max_concurrent or default_max_concurrent(base_cfg, num_trials)
    log.info("sweep %s: %d trials, at most %d at once, under %s", spec.sweep_name(), num_trials, concurrent, sweep_uri)

    trainable = tune.with_parameters(run_trial, base=base, sweep_uri=sweep_uri, random_search=spec.search == "random",
                                     parent_run_id=parent_run_id)
    fs, path = storage.pyarrow_filesystem(sweep_uri)
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_RESOURCES),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(num_samples=spec.num_samples, max_concurrent_trials=concurrent),
        run_config=TuneRunConfig(name=TUNE_DIR, storage_path=path, storage_filesystem=fs, verbose=1),
    )
    grid = tuner.fit()
    rows = []
    for result in grid:
        params = {k: result.config[k] for k in spec.grid}
        row = {"trial": trial_label(params), "params": params, "error": None}
        if result.error is not None:
            row["error"] = str(result.error).strip().splitlines()[-1][:200]
        else:
            row.update({k: v for k, v in result.metrics.items()
                        if k.startswith(("best_", "before_")) or k in ("train_seconds", "run_uri", "tracking_uri",
                                                                      "tracking_run_id")})
        rows.append(row)
    uris = write_results(sweep_uri, rank(rows, base_cfg.task_spec), base, spec)
    if parent_run_id:
        with tempfile.TemporaryDirectory() as tmp:
            files = [os.path.join(tmp, name) for name in (RESULTS_MD, CHART_PNG)]
            for f in files:
                storage.write_bytes(f, storage.read_bytes(uris[os.path.basename(f)]))
            tracking.log_artifacts(track_uri, parent_run_id, files)
        tracking.end_run(track_uri, parent_run_id)
    return uris


def rank(rows: List[dict], task: Task) -> List[dict]:
    """The best ``task.select_by`` first, failed trials last."""
    sign = -1 if task.higher_is_better else 1
    return sorted(rows, key=lambda r: (bool(r["error"]), sign * r.get(f"best_{task.select_by}", 0.0)))


def results_table(rows: List[dict], task: Task) -> str:
    """Markdown: one row per trial in the task's metrics, the best first (failed trials last)."""
    from ..metrics import METRIC_TITLES

    rows = rank(rows, task)
    names = task.names
    head = ("| trial | " + " | ".join(METRIC_TITLES[m] for m in names)
            + f" | best epoch | before {METRIC_TITLES[task.select_by]} | train s | MLflow run |")
    lines = [head, "|---|" + "---:|" * (len(names) + 3) + "---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['trial']} | failed: {r['error']} |" + " |" * (len(names) + 3))
            continue
        before = r.get(f"before_{task.select_by}")
        lines.append(
            f"| {r['trial']} | " + " | ".join(f"{r[f'best_{m}']:.3f}" for m in names)
            + f" | {r['best_epoch']} | {'' if before is None else f'{before:.3f}'} | {r.get('train_seconds', 0):.0f} |"
            + f" {run_link(r.get('tracking_uri'), r.get('tracking_run_id'))} |"
        )
    return "\n".join(lines)


def run_link(uri: Optional[str], run_id: Optional[str]) -> str:
    """A trial's MLflow run in a Markdown cell: a link into the tracking server's UI where it
    has one (http), else the run id."""
    if not run_id:
        return ""
    if uri and uri.startswith(("http://", "https://")):
        return f"[{run_id[:8]}]({uri.rstrip('/')}/#/runs/{run_id})"
    return f"`{run_id}`"


def bar_chart(rows: List[dict], metric: str) -> bytes:
    """A PNG (matplotlib, headless) of horizontal bars, one per finished trial, of
    ``best_<metric>``, in the given (ranked) order: the best on top, in another colour."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from ..metrics import METRIC_TITLES

    done = [r for r in rows if not r["error"]]
    fig = Figure(figsize=(8, 1.2 + 0.4 * max(len(done), 1)), dpi=100)
    ax = fig.subplots()
    values = [float(r[f"best_{metric}"]) for r in done]
    bars = ax.barh(range(len(done)), values, color=["#dc7828"] + ["#466eb4"] * (len(done) - 1))
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_yticks(range(len(done)), [r["trial"] for r in done], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"best {METRIC_TITLES.get(metric, metric)} per trial (best first)", fontsize=10)
    ax.margins(x=0.15)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_results(sweep_uri: str, rows: List[dict], base: dict, spec: SweepSpec) -> Dict[str, str]:
    task = get_task(base.get("task", "camouflage"))
    uris = {k: storage.join(sweep_uri, k) for k in (RESULTS_MD, RESULTS_JSON, CHART_PNG, BEST_RECIPE)}
    table = results_table(rows, task)
    storage.write_bytes(uris[RESULTS_MD], (table + "\n").encode())
    storage.write_bytes(uris[RESULTS_JSON], json.dumps(rows, indent=1, default=str).encode())
    storage.write_bytes(uris[CHART_PNG], bar_chart(rows, task.select_by))
    best = next((r for r in rows if not r["error"]), None)
    if best is None:
        uris.pop(BEST_RECIPE)
    else:
        cfg = apply_params(TrainConfig.from_dict(copy.deepcopy(base)), best["params"])
        cfg.run.name = f"{spec.sweep_name()}-best"
        header = (f"# The best trial of sweep {spec.sweep_name()} "
                  f"({best['trial']}: {task.select_by} {best[f'best_{task.select_by}']:.3f}).\n")
        storage.write_bytes(uris[BEST_RECIPE], (header + cfg.to_yaml()).encode())
    uris["table"] = table
    return uris
