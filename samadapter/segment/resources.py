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

Where a cluster has GPU node types of several kinds (A10G for inference, A100 for
training), the actors and the pool's request carry ``--accelerator-type``: Ray's
scheduler otherwise places five one-GPU bundles on one 8-GPU training node, the best
fit. Only node types of that kind count towards the pool's size. ``pool_requested``
releases the request however the driver ends, SIGTERM included: a request lasts until
the next ``request_resources`` call, and would keep GPU nodes up after a stopped night.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


# What Ray adds to a task's or actor's resources for ``accelerator_type=T`` (a tiny share
# of the node's ``accelerator_type:T`` resource): node types without it cannot take them.
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_SHARE = 0.001


def accelerator_resource(accelerator_type: str) -> str:
    return ACCELERATOR_PREFIX + accelerator_type


@dataclass
class GpuGroup:
    """A node type (VM node type, KubeRay worker group) that has GPUs."""

    name: str
    gpus_per_node: float
    max_nodes: int
    accelerator_type: Optional[str]  # from its ``accelerator_type:<T>`` resource; None: not declared


def gpu_groups(node_types: dict, head_node_type: Optional[str] = None, default_max: int = 0) -> List[GpuGroup]:
    """The GPU node types of an autoscaler config's ``available_node_types``."""
    groups = []
    for name, node in (node_types or {}).items():
        res = node.get("resources") or {}
        gpus = float(res.get("GPU", 0))
        if not gpus:
            continue
        count = 1 if name == head_node_type else int(node.get("max_workers", default_max))
        types = [k[len(ACCELERATOR_PREFIX):] for k in res if k.startswith(ACCELERATOR_PREFIX)]
        groups.append(GpuGroup(name, gpus, count, types[0] if types else None))
    return groups


def matching(groups: List[GpuGroup], accelerator_type: Optional[str]) -> List[GpuGroup]:
    return [g for g in groups if accelerator_type is None or g.accelerator_type == accelerator_type]


@dataclass
class ClusterView:
    gpus_now: float  # GPUs up now (of the accelerator type asked for, when one is)
    max_gpus: Optional[float]  # what the cluster can scale to; None: not known
    autoscaling: bool  # an autoscaler is running
    source: str  # where max_gpus came from
    groups: List[GpuGroup] = field(default_factory=list)  # the GPU node types, when known

    @property
    def gpus_possible(self) -> bool:
        return self.gpus_now > 0 or bool(self.max_gpus) or self.autoscaling

    @property
    def accelerator_types(self) -> List[str]:
        return sorted({g.accelerator_type or "undeclared" for g in self.groups})


def _groups_in_autoscaler_config(path: str) -> List[GpuGroup]:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    return gpu_groups(config.get("available_node_types"), config.get("head_node_type"), config.get("max_workers", 0))


def gpus_up(accelerator_type: Optional[str] = None) -> float:
    """GPUs on live nodes now; with ``accelerator_type``, only on nodes of that type."""
    import ray

    if accelerator_type is None:
        return float(ray.cluster_resources().get("GPU", 0))
    key = accelerator_resource(accelerator_type)
    return float(sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive") and key in n["Resources"]))


def view_from_groups(gpus_now: float, groups: List[GpuGroup], accelerator_type: Optional[str], source: str) -> ClusterView:
    """A cluster that can scale to ``groups``: only those of ``accelerator_type`` (when
    given) count towards what the pool can have."""
    mine = matching(groups, accelerator_type)
    return ClusterView(gpus_now, sum(g.gpus_per_node * g.max_nodes for g in mine), True, source, groups)


def cluster_view(accelerator_type: Optional[str] = None) -> ClusterView:
    """What GPUs the cluster has and can scale to; only node types of ``accelerator_type``
    count when one is given."""
    from ..ray_compat import autoscaler_command_line, autoscaler_status, gcs_node_groups

    gpus_now = gpus_up(accelerator_type)
    groups = gpu_groups(gcs_node_groups() or {})
    if groups:
        return view_from_groups(gpus_now, groups, accelerator_type, "the cluster config in the GCS")
    status = autoscaler_status() or {}
    if not status.get("autoscaler_report"):
        return ClusterView(gpus_now, None, False, "GPUs up now")
    args = autoscaler_command_line(status)
    if args is None:  # an autoscaler on another node or in another container: capacity unknown
        return ClusterView(gpus_now, None, True, "GPUs up now (the autoscaler runs elsewhere)")
    config = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    if config is None:  # a local Ray: its autoscaler only watches this machine
        return ClusterView(gpus_now, None, False, "GPUs up now")
    return view_from_groups(gpus_now, _groups_in_autoscaler_config(config), accelerator_type,
                            f"the autoscaler config {config}")


@dataclass
class ActorPlan:
    gpus_per_actor: float
    min_actors: int
    max_actors: int
    cpus_per_actor: float
    why: str
    accelerator_type: Optional[str] = None  # the GPU model the actors (and the pool's request) ask for

    def bundle(self) -> dict:
        """One model actor's resources, as its Ray options and the autoscaler request say them."""
        bundle = {"CPU": self.cpus_per_actor}
        if self.gpus_per_actor:
            bundle["GPU"] = self.gpus_per_actor
            if self.accelerator_type:
                bundle[accelerator_resource(self.accelerator_type)] = ACCELERATOR_SHARE
        return bundle


def plan_actors(view: ClusterView, arch: str, device: str, gpus_per_actor: Optional[float], min_actors: int,
                max_actors: Optional[int], cpus_per_actor: float, accelerator_type: Optional[str] = None) -> ActorPlan:
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
    if gpus_per_actor == 0:
        accelerator_type = None
    elif accelerator_type is None and len(view.accelerator_types) > 1:
        # Ray's scheduler picks whichever node type fits the request best: 5 one-GPU
        # actors fit one 8-GPU training node better than five 1-GPU nodes.
        raise ValueError(
            f"this cluster has GPU node types of several kinds ({', '.join(view.accelerator_types)}; "
            f"{view.source}): pass --accelerator-type so that the actors land only on their own node type"
        )
    elif accelerator_type is not None and view.groups and not matching(view.groups, accelerator_type):
        raise ValueError(
            f"--accelerator-type {accelerator_type}: no GPU node type of the cluster has it "
            f"({', '.join(view.accelerator_types)}; {view.source})"
        )
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
            kind = f" {accelerator_type}" if accelerator_type else ""
            why = f"{cap:g}{kind} GPUs from {view.source}"
    else:
        why = "--max-actors"
    return ActorPlan(float(gpus_per_actor), min_actors, int(max_actors), cpus_per_actor, why, accelerator_type)


def request_pool(plan: ActorPlan, actors: int) -> None:
    """Ask the autoscaler for ``actors`` model actors' resources at once (nodes boot in parallel)."""
    from ray.autoscaler.sdk import request_resources

    from ..ray_compat import refresh_autoscaler_version

    refresh_autoscaler_version()
    request_resources(bundles=[plan.bundle() for _ in range(actors)])


def release_pool() -> None:
    """Clear this cluster's standing resource request (``request_resources`` lasts until the next call)."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception as exc:  # noqa: BLE001 - best effort at the end of a run
        log.warning("could not clear the resource request: %s", exc)


@contextlib.contextmanager
def pool_requested(plan: ActorPlan, actors: int):
    """The pool's request held for the ``with`` block and released however it ends: normally,
    by an exception, or by SIGTERM (``ray job stop``, a pod's termination) or SIGINT, which
    release the request first and then end the driver (exit status 128 + signal)."""
    import signal
    import threading

    request_pool(plan, actors)
    previous = {}

    def on_signal(signum, frame):
        release_pool()
        log.warning("%s: released the GPU pool's resource request; stopping", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        release_pool()


def wait_for_gpus(needed: float, minutes: float, refresh=None, poll_s: float = 5.0,
                  accelerator_type: Optional[str] = None) -> float:
    """Wait until the cluster has ``needed`` GPUs (of ``accelerator_type``, when given); a
    RuntimeError that says the fix after ``minutes``.

    ``refresh`` is called at every poll: it re-sends the pool's resource request, which
    other requesters (Ray Data's autoscaling coordinator ticks every 20 s) overwrite.
    """
    deadline = time.monotonic() + minutes * 60
    last_log = 0.0
    kind = f" {accelerator_type}" if accelerator_type else ""
    while True:
        have = gpus_up(accelerator_type)
        if have >= needed:
            return have
        if refresh is not None:
            refresh()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {have:g} of {needed:g}{kind} GPUs came up in {minutes:g} min: check the cluster's GPU node "
                "types and quotas (`ray status`), raise --gpu-wait-minutes, or pass --device cpu"
            )
        if time.monotonic() - last_log > 30:
            log.info("waiting for GPU nodes: %g of %g%s GPUs up", have, needed, kind)
            last_log = time.monotonic()
        time.sleep(poll_s)


def main(argv=None) -> int:
    """``python -m samadapter.segment.resources release``: clear the cluster's resource request
    (what ``jobs/nightly.py`` submits after stopping a night, whose driver could not)."""
    import argparse

    import ray

    p = argparse.ArgumentParser(prog="python -m samadapter.segment.resources", description=main.__doc__)
    p.add_argument("action", choices=["release"])
    p.parse_args(argv)
    ray.init(address="auto", log_to_driver=False)
    release_pool()
    print("cleared the cluster's resource request")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
