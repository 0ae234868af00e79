"""MLflow tracking of training runs: the driver opens (or reopens) the run, rank 0 logs into it.

Ray Train V2 takes no logger callbacks; Ray's guidance is to call the tracking library from
the training function. Here every call goes through ``MlflowClient`` with an explicit run id
(no process-global active run), so the driver, rank 0 and a sweep's trials each log into the
run they are given:

- the driver (``open_run``): the tracking URI (``run.tracking_uri``; default a local SQLite
  store beside the runs when their storage is a local path; none for remote storage),
  the run created with the resolved recipe as flattened params and tags (arch, task,
  knowledge sources, git commit, Ray and torch versions), or reopened when the training run
  resumes (its id is kept in the run folder: ``checkpoints.TRACKING_FILE``);
- rank 0: metrics per ``run.log_every`` steps and per validation (``log_metrics``);
- the driver at the end: the best adapter and its ``metrics.json`` as artifacts.

A tracking server that does not answer costs one warning line; training goes on untracked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Any, Dict, Iterable, Optional

log = logging.getLogger(__name__)

# The MLflow client's HTTP retries default to minutes of back-off per call; a training step
# should not wait on them. Set unless the environment says otherwise.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_failed: set = set()  # tracking URIs that failed in this process: warned once, not tried again


def client(uri: str):
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic"):  # their INFO lines (a local store's migrations) in the job log
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"


def default_uri(tracking_uri: Optional[str], storage_uri: str, is_local: bool) -> Optional[str]:
    """The tracking URI a run uses: the one given, else a local SQLite store beside the runs
    (``<storage>/mlflow.db``, artifacts in ``<storage>/mlartifacts``) when their storage is
    a local path, else none. (MLflow 3 refuses its old ``mlruns`` file store.)"""
    if tracking_uri:
        return tracking_uri
    if is_local:
        return "sqlite:///" + os.path.join(os.path.abspath(storage_uri), LOCAL_DB)
    return None


def _artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment of a local SQLite store keeps its artifacts: beside the database
    (MLflow's default is ./mlruns under the current directory); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///"):]), LOCAL_ARTIFACTS)
    return None


def _warn(uri: str, exc: BaseException) -> None:
    if uri not in _failed:
        _failed.add(uri)
        log.warning("tracking: %s does not answer (%s: %s); the run goes on untracked", uri, type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "")


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": "0.0001"}`` (MLflow params are strings)."""
    out: Dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def open_run(uri: str, experiment: str, run_name: str, params: Dict[str, str], tags: Dict[str, str],
             run_id: Optional[str] = None, parent_run_id: Optional[str] = None) -> Optional[str]:
    """The MLflow run to log into: ``run_id`` reopened when given (a resumed training run),
    else a new run in ``experiment`` (created when missing) with ``params`` and ``tags``
    (a child of ``parent_run_id``: a sweep's trial). None after one warning when the
    tracking server does not answer."""
    if uri in _failed:
        return None
    try:
        c = client(uri)
        if run_id:
            c.update_run(run_id, status="RUNNING")
            return run_id
        found = c.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else c.create_experiment(
            experiment, artifact_location=_artifact_location(uri))
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = c.create_run(experiment_id, run_name=run_name, tags=tags)
        _log_params(c, run.info.run_id, params)
        return run.info.run_id
    except Exception as exc:  # noqa: BLE001 - any failure of the tracking server: one warning, go on
        _warn(uri, exc)
        return None


def _log_params(c, run_id: str, params: Dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # the server's batch limit
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(uri: Optional[str], run_id: Optional[str], metrics: Dict[str, Any], step: int) -> None:
    """Numeric ``metrics`` at ``step``; nothing when tracking is off or has failed."""
    if not uri or not run_id or uri in _failed:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in sorted(metrics.items())
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    try:
        client(uri).log_batch(run_id, metrics=items)
    except Exception as exc:  # noqa: BLE001
        _warn(uri, exc)


def log_artifacts(uri: Optional[str], run_id: Optional[str], files: Iterable[str], path: Optional[str] = None) -> None:
    """Local ``files`` as artifacts of the run (under ``path``)."""
    if not uri or not run_id or uri in _failed:
        return
    try:
        c = client(uri)
        for f in files:
            c.log_artifact(run_id, f, artifact_path=path)
    except Exception as exc:  # noqa: BLE001
        _warn(uri, exc)


def end_run(uri: Optional[str], run_id: Optional[str], status: str = "FINISHED") -> None:
    if not uri or not run_id or uri in _failed:
        return
    try:
        client(uri).set_terminated(run_id, status=status)
    except Exception as exc:  # noqa: BLE001
        _warn(uri, exc)
