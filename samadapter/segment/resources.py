"""How many GPUs the segmentation actors get, and getting the nodes booted in parallel.

A nightly job starts on a cluster whose GPU nodes are scaled to zero: what matters is what
the cluster *can* have, not what is up when the job starts. ``cluster_view`` finds out,
from (in order):

1. the cluster config Ray publishes in the GCS (node groups and their maximum counts;
   what Ray Train itself uses),
2. the autoscaler's own config file (``--autoscaling-config`` of the autoscaler process
   named in the GCS, e.g. ``~/ray_bootstrap_config.yaml`` on a ``ray up`` head), readable
   when the driver runs on the head node, as ``ray job submit`` and the crontab do,
3. the GPUs that are up now.

``ActorPlan`` turns that into GPUs per actor and the pool's maximum; ``request_pool`` asks
the autoscaler for the whole pool at once (``ray.autoscaler.sdk.request_resources``), so
the nodes boot in parallel instead of one per pool step; the run then starts the pool
with all of those actors pending (``ActorPoolStrategy(initial_size=...)``), a demand the
autoscaler keeps seeing whatever else calls ``request_resources``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


@dataclass
class ClusterView:
    gpus_now: float
    max_gpus: Optional[float]  # what the cluster can scale to; None: not known
    autoscaling: bool  # an autoscaler is running
    source: str  # where max_gpus came from

    @property
    def gpus_possible(self) -> bool:
        return self.gpus_now > 0 or bool(self.max_gpus) or self.autoscaling


def _autoscaler_status() -> Optional[dict]:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get("__autoscaling_status")
    return json.loads(raw) if raw else None


def _gpus_in_autoscaler_config(path: str) -> Optional[float]:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    total = 0.0
    head = config.get("head_node_type")
    for name, node in (config.get("available_node_types") or {}).items():
        gpus = float((node.get("resources") or {}).get("GPU", 0))
        count = 1 if name == head else int(node.get("max_workers", config.get("max_workers", 0)))
        total += gpus * count
    return total


def _monitor_args(pid) -> Optional[list]:
    """The command line of the autoscaler process, when it runs on this node."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except (OSError, TypeError, ValueError):
        return None
    return args if any(a.endswith("monitor.py") for a in args) else None


def cluster_view() -> ClusterView:
    import ray

    gpus_now = float(ray.cluster_resources().get("GPU", 0))
    try:
        from ray._private.state import state

        max_res = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - not published by every Ray deployment
        max_res = None
    if max_res and max_res.get("GPU"):
        return ClusterView(gpus_now, float(max_res["GPU"]), True, "the cluster config in the GCS")
    status = _autoscaler_status() or {}
    if not status.get("autoscaler_report"):
        return ClusterView(gpus_now, None, False, "GPUs up now")
    args = _monitor_args(status.get("monitor_pid"))
    if args is None:  # an autoscaler on another node or in another container: capacity unknown
        return ClusterView(gpus_now, None, True, "GPUs up now (the autoscaler runs elsewhere)")
    config = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    if config is None:  # a local Ray: its autoscaler only watches this machine
        return ClusterView(gpus_now, None, False, "GPUs up now")
    return ClusterView(gpus_now, _gpus_in_autoscaler_config(config), True, f"the autoscaler config {config}")


@dataclass
class ActorPlan:
    gpus_per_actor: float
    min_actors: int
    max_actors: int
    cpus_per_actor: float
    why: str


def plan_actors(view: ClusterView, arch: str, device: str, gpus_per_actor: Optional[float], min_actors: int,
                max_actors: Optional[int], cpus_per_actor: float) -> ActorPlan:
    """GPUs per actor and the pool's size; a ValueError that says the fix when they do not fit."""
    if device not in DEVICES:
        raise ValueError(f"--device {device!r}: choose one of {DEVICES}")
    if gpus_per_actor is None:
        gpus_per_actor = 0.0 if device == "cpu" else 1.0 if (device == "cuda" or view.gpus_possible) else 0.0
    if gpus_per_actor == 0 and device != "cpu" and arch != "tiny" and view.gpus_possible:
        raise ValueError(
            f"{arch} would run on CPUs in a cluster that has or can scale up GPUs ({view.source}): pass "
            "--gpus-per-actor 1 (or leave it unset), or --device cpu to run on CPUs on purpose"
        )
    if gpus_per_actor > 0 and device == "cpu":
        raise ValueError("--device cpu with --gpus-per-actor > 0: choose one")
    if max_actors is None:
        if gpus_per_actor == 0:
            max_actors = min_actors
            why = "CPU actors"
        else:
            cap = view.max_gpus if view.max_gpus is not None else view.gpus_now
            if cap < gpus_per_actor:
                raise ValueError(
                    "cannot tell how many GPUs this cluster can scale to (no cluster config in the GCS, no "
                    "autoscaler config readable on this node, no GPU up now): pass --max-actors N"
                )
            max_actors = max(min_actors, int(cap // gpus_per_actor))
            why = f"{cap:g} GPUs from {view.source}"
    else:
        why = "--max-actors"
    return ActorPlan(float(gpus_per_actor), min_actors, int(max_actors), cpus_per_actor, why)


def request_pool(plan: ActorPlan, actors: int) -> None:
    """Ask the autoscaler for ``actors`` model actors' resources at once (nodes boot in parallel)."""
    from ray.autoscaler.sdk import request_resources
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    # Ray caches which autoscaler a process talks to; a process that connected to another
    # cluster before (a notebook, a test) would send the request where nobody reads it.
    is_autoscaler_v2(fetch_from_server=True)
    bundle = {"CPU": plan.cpus_per_actor}
    if plan.gpus_per_actor:
        bundle["GPU"] = plan.gpus_per_actor
    request_resources(bundles=[dict(bundle) for _ in range(actors)])


def release_pool() -> None:
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception as exc:  # noqa: BLE001 - best effort at the end of a run
        log.warning("could not clear the resource request: %s", exc)


def wait_for_gpus(needed: float, minutes: float, refresh=None, poll_s: float = 5.0) -> float:
    """Wait until the cluster has ``needed`` GPUs; a RuntimeError that says the fix after ``minutes``.

    ``refresh`` is called at every poll: it re-sends the pool's resource request, which
    other requesters (Ray Data's autoscaling coordinator ticks every 20 s) overwrite.
    """
    import ray

    deadline = time.monotonic() + minutes * 60
    last_log = 0.0
    while True:
        have = float(ray.cluster_resources().get("GPU", 0))
        if have >= needed:
            return have
        if refresh is not None:
            refresh()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {have:g} of {needed:g} GPUs came up in {minutes:g} min: check the cluster's GPU node types "
                "and quotas (`ray status`), raise --gpu-wait-minutes, or pass --device cpu"
            )
        if time.monotonic() - last_log > 30:
            log.info("waiting for GPU nodes: %g of %g GPUs up", have, needed)
            last_log = time.monotonic()
        time.sleep(poll_s)


