"""Ray's private API, in one place: each use says what public API is missing.

Every function here may break on a Ray upgrade; ``tests/test_ray_compat.py`` runs them
against the pinned Ray (pyproject.toml) so that an upgrade fails there first.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Dict, List, Optional, Tuple

# The environment variable that sets a new head's GCS port
# (ray._private.ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE): ray.init(address="local") takes no
# port, and a job's local Ray must be findable by address from its own processes (ray_session.py).
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"


def nodes_for(autoscaler_config: dict, bundles: List[Dict[str, float]]) -> Tuple[Dict[str, int], List[Dict[str, float]]]:
    """The worker nodes Ray's autoscaler would launch for ``bundles`` on a cluster whose
    only node is its head: ``({node_type: count}, bundles that fit no node type)``.

    No public API answers "what would this demand launch": this is the function the
    autoscaler itself calls (``resource_demand_scheduler.get_nodes_for``), with its default
    utilization scorer."""
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary

    node_types = autoscaler_config["available_node_types"]
    head = autoscaler_config["head_node_type"]
    max_workers = autoscaler_config.get("max_workers", sum(t.get("max_workers", 0) for t in node_types.values()))
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    nodes, residual = get_nodes_for(node_types, {head: 1}, head, max_workers, [dict(b) for b in bundles], scorer)
    return {k: v for k, v in nodes.items() if v}, residual


def autoscaling_config_from_ray_cr(ray_cluster: dict) -> dict:
    """A KubeRay RayCluster as the autoscaler reads it (worker groups -> node types with
    their Ray resources, from rayStartParams and container limits). KubeRay's autoscaler
    does this translation in Ray's code; no public function exposes it."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(ray_cluster)


def gcs_node_groups() -> Optional[Dict[str, dict]]:
    """The node groups of the cluster config the autoscaler publishes in the GCS, as
    ``{name: {"resources": ..., "max_workers": ...}}``; None where none is published. Ray
    Train reads it the same way (``ray._private.state``); there is no public accessor."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not published by every Ray deployment
        return None
    if config is None or not config.node_group_configs:
        return None
    return {g.name or f"group{i}": {"resources": dict(g.resources), "max_workers": g.max_count}
            for i, g in enumerate(config.node_group_configs)}


def autoscaler_status() -> Optional[dict]:
    """The autoscaler's last report (``ray status`` reads it from the same internal KV key);
    None on a Ray without an autoscaler. Public ``ray status`` only prints it."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get("__autoscaling_status")
    return json.loads(raw) if raw else None


def standing_resource_request() -> List[Dict[str, float]]:
    """The cluster's standing ``request_resources`` bundles (what a driver asked for and
    nobody cleared), read where the autoscaler reads them: the GCS's cluster resource
    constraints (autoscaler v2) or the internal KV key (v1). The SDK can set the request
    but not read it back."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2(fetch_from_server=True):
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        constraints = get_cluster_resource_state(internal_kv_get_gcs_client()).cluster_resource_constraints
        return [dict(b.request.resources_bundle) for c in constraints for b in c.resource_requests
                for _ in range(b.count)]
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def autoscaler_command_line(status: dict) -> Optional[List[str]]:
    """The autoscaler's command line (``monitor.py --autoscaling-config=...``) when it runs
    on this node, from the pid in its status report; None elsewhere. Which config file the
    autoscaler scales by is published nowhere: its report names only its pid."""
    try:
        with open(f"/proc/{int(status.get('monitor_pid'))}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except (OSError, TypeError, ValueError):
        return None
    return args if any(a.endswith("monitor.py") for a in args) else None


def refresh_autoscaler_version() -> bool:
    """Ask the GCS again which autoscaler (v1 or v2) the connected cluster runs. Ray caches
    the answer per process, and ``request_resources`` sends to the cached one: a process
    that was connected to another cluster before (a notebook, a test) would send its request
    where nobody reads it. The SDK has no way to reset that cache."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    return is_autoscaler_v2(fetch_from_server=True)


def data_config_split_options(data_config, dataset_name: str):
    """``(execution options, locality hints on?)`` that Ray Train's ``DataConfig`` gives
    the datasets it splits, for a subclass that splits one more dataset its own way (the
    validation set, ``equal=False``). ``DataConfig.configure`` is public; the two things it
    applies per dataset are not."""
    return data_config._resolve_execution_options(dataset_name), data_config._enable_shard_locality


def train_report_logger() -> logging.Logger:
    """The logger through which Ray Train's workers log every ``ray.train.report`` (a line
    with the whole metrics dict, per report and rank). Ray 2.60 names it by its file path
    (``logging.getLogger(__file__)`` in ``ray/train/v2/_internal/execution/context.py``), so
    it sits outside the ``ray`` logger tree that Ray Train's ``LoggingConfig`` governs; the
    level has to be set on it by that name."""
    import importlib.util

    return logging.getLogger(importlib.util.find_spec("ray.train.v2._internal.execution.context").origin)


def read_parquet_footers_once(paths, **read_kwargs):
    """``ray.data.read_parquet`` with Ray Data's V1 Parquet reader: the files' footers are
    read once, when the dataset is made, not on every pass over it.

    Ray 2.60's default reader (DataSourceV2) lists the files and reads their footers at the
    start of every execution, through a pool of ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` (32)
    new actors spread over the cluster. A training split of a few shards is passed over
    every epoch and every validation: 32 actor starts and ~1-2 s each time (an epoch of 32
    rows: 1.5-2 s with V2, 0.1 s with V1 on a 2-vCPU machine). No read option chooses the
    reader or the pool's size; ``DataContext.use_datasource_v2`` (``RAY_DATA_USE_DATASOURCE_V2``)
    is the documented switch, and only ``read_parquet`` consults it, when called."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, **read_kwargs)
    finally:
        ctx.use_datasource_v2 = saved
