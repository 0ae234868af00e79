"""Autoscaling on Ray's fake multi-node cluster: the segment job's GPU actors bring GPU
nodes up from zero. (The cluster files themselves: tests/test_cluster_configs.py.)"""

from __future__ import annotations

import os

import pytest

from .conftest import tiny_adapter_and_images


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_segment_job_scales_gpu_nodes_up_from_zero(tmp_path, monkeypatch):
    """Ray's fake multi-node autoscaler: a head without GPUs and a worker type of one
    logical GPU (min 0, max 2). The job is given no GPU or pool settings: it reads what the
    cluster can scale to from the autoscaler, its actors ask for GPUs, and the cluster
    scales up from zero."""
    import json

    import ray

    from samadapter.segment.ledger import read_ledger_table
    from samadapter.segment.run import SegmentConfig, run_segmentation

    from .rayheads import free_port, start_head

    port = free_port()
    config = {
        "cluster_name": "samadapter-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "auth": {}, "docker": {}, "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu.worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    config_path = tmp_path / "autoscaler.yaml"
    config_path.write_text(json.dumps(config))
    head = start_head(num_cpus=2, extra_args=[f"--autoscaling-config={config_path}"],
                      extra_env={"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}, port=port)
    try:
        ray.init(head.gcs_address, log_to_driver=False)
        assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node yet

        adapter, inp = tiny_adapter_and_images(tmp_path, 30, hw=(36, 48), seed=1)
        cfg = SegmentConfig(input=str(inp), output=str(tmp_path / "out"), checkpoint=adapter, batch_size=2,
                            read_batch_size=2, gpu_wait_minutes=4)
        summary = run_segmentation(cfg, progress=False)
        assert summary.ok == 30
        assert summary.actors.startswith("1-2 actors x 1 GPU (2 GPUs from the autoscaler config"), summary.actors
        rows = read_ledger_table(str(tmp_path / "out")).to_pylist()
        assert sorted(os.path.basename(r["uri"]) for r in rows) == sorted(os.listdir(inp))  # each exactly once
        gpu_nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
        assert 1 <= len(gpu_nodes) <= 2  # scaled up from zero, within max_workers
        assert {r["actor"].split(":")[0] for r in rows} <= {n["NodeID"][:8] for n in gpu_nodes}  # actors on GPU nodes
    finally:
        ray.shutdown()
        head.stop()
