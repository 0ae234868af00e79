"""Which Ray a job runs on, and how much of Ray's own logging it shows.

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for every job it runs; ``RAY_ADDRESS=auto``
  on a cluster node): the job joins that cluster.
- Unset: the job starts a local Ray of its own (``address="local"``), never another
  program's Ray that happens to run on this machine (Ray's default would join it).
- Ray's own console lines (Train's per-report dicts, Data's plans, ...) at WARNING and
  above, in the driver and in every worker, unless ``verbose`` (Ray's session log files keep
  everything); samadapter's own lines at INFO, driver and workers alike (``worker_setup``
  runs in each worker process; Ray Train takes the level through its RunConfig).
"""

from __future__ import annotations

import logging
import os

from .ray_compat import GCS_PORT_VARIABLE, train_report_logger

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray's log level for the job's processes; set by setup_logging, read by worker_setup.
RAY_LOG_LEVEL = "SAMADAPTER_RAY_LOG_LEVEL"


def ray_log_level() -> str:
    """Ray's log level for this job's console: INFO, or WARNING unless ``--verbose``."""
    return os.environ.get(RAY_LOG_LEVEL, "INFO")


def setup_logging(verbose: bool = False) -> None:
    """A job's logging: samadapter's lines at INFO on stderr, Ray's at WARNING and above
    unless ``verbose``. Call first in a job's ``main``."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    os.environ[RAY_LOG_LEVEL] = "INFO" if verbose else "WARNING"  # applied by connect(), when Ray is used


def _ray_console_at(level: str) -> None:
    """Ray's loggers print to the console from ``level`` up. Ray Data configures its logger
    (console and a session file) when imported: only its console handlers change, so its
    file in the session's log folder keeps every line."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger

    logging.getLogger("ray").setLevel(level)
    train_report_logger().setLevel(level)
    for handler in logging.getLogger("ray.data").handlers:
        if "File" not in type(handler).__name__:
            handler.setLevel(level)


def worker_setup() -> None:
    """Run by Ray in every worker process of the job (``worker_process_setup_hook``)."""
    _ray_console_at(ray_log_level())
    ours = logging.getLogger("samadapter")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def connect(**init_kwargs) -> None:
    """``ray.init`` for a job, unless Ray is already up in this process (a test, a notebook)."""
    import ray

    if ray.is_initialized():
        return
    _ray_console_at(ray_log_level())  # this driver's Ray loggers; worker_setup does the workers'
    address = os.environ.get("RAY_ADDRESS") or "local"
    runtime_env = {"worker_process_setup_hook": "samadapter.ray_session.worker_setup",
                   "env_vars": {RAY_LOG_LEVEL: ray_log_level()}}
    if address != "local":
        ray.init(address=address, runtime_env=runtime_env, **init_kwargs)
        return
    log.info("starting a local Ray of this job's own (RAY_ADDRESS=auto joins the cluster this machine is in)")
    # Ray's own code inside the processes of this Ray (Train's PlacementGroupCleaner asks the
    # State API for "the" Ray with no address) must find this one even when another Ray runs on
    # the machine: its GCS port is chosen here and every process it starts inherits
    # RAY_ADDRESS naming it. The driver's environment is restored after the start.
    port = _free_port()
    pinned = {GCS_PORT_VARIABLE: str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in pinned}
    os.environ.update(pinned)
    try:
        ray.init(address="local", runtime_env=runtime_env, **init_kwargs)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
