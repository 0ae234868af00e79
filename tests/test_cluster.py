"""Autoscaling on Ray's fake multi-node cluster: the segment job's GPU actors bring GPU
nodes up from zero, only of the accelerator type it asks for, and a stopped driver gives
its request back. (The cluster files themselves: tests/test_cluster_configs.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import tiny_adapter_and_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# alone: under -n 2, contention changes what Ray Data asks the autoscaler for (docs/cluster.md,
# "Ray Data's own resource requests");
# one xdist group: both tests in one process, one after the other
pytestmark = [pytest.mark.slow, pytest.mark.alone, pytest.mark.xdist_group("cluster")]


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    """A head without GPUs and two GPU worker types that scale from zero, as on
    ray_cluster.yaml: inference (one A10G a node, at most 2) and training (four A100s, at
    most 1): a best-fit scheduler would put 3+ one-GPU bundles on the training node."""
    import ray

    from .conftest import own_ray_only
    from .rayheads import free_port, start_head

    port = free_port()
    config = {
        "cluster_name": "samadapter-fake", "max_workers": 3, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "auth": {}, "docker": {}, "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu.infer": {"resources": {"CPU": 2, "GPU": 1, "accelerator_type:A10G": 1}, "node_config": {},
                          "min_workers": 0, "max_workers": 2},
            "gpu.train": {"resources": {"CPU": 2, "GPU": 4, "accelerator_type:A100": 1}, "node_config": {},
                          "min_workers": 0, "max_workers": 1},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    config_path = tmp_path_factory.mktemp("fake") / "autoscaler.yaml"
    config_path.write_text(json.dumps(config))
    head = start_head(num_cpus=2, extra_args=[f"--autoscaling-config={config_path}"],
                      extra_env={"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}, port=port)
    try:
        own_ray_only()
        ray.init(head.gcs_address, log_to_driver=False)
        yield head
    finally:
        ray.shutdown()
        head.stop()


@pytest.mark.timeout(600)
def test_segment_job_scales_its_own_gpu_nodes_up_from_zero(fake_cluster, tmp_path):
    """The job is given its accelerator type and no pool settings: it reads what the
    cluster can scale to from the autoscaler (only the A10G nodes count), its actors ask for
    A10G GPUs, and only inference nodes come up."""
    import ray

    from samadapter.segment.ledger import read_ledger_table
    from samadapter.segment.run import SegmentConfig, run_segmentation

    assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node yet
    adapter, inp = tiny_adapter_and_images(tmp_path, 30, hw=(36, 48), seed=1)
    without = SegmentConfig(input=str(inp), output=str(tmp_path / "x"), checkpoint=adapter)
    with pytest.raises(ValueError, match="--accelerator-type"):  # two GPU kinds: the job must say which
        run_segmentation(without, progress=False)
    cfg = SegmentConfig(input=str(inp), output=str(tmp_path / "out"), checkpoint=adapter, batch_size=2,
                        read_batch_size=2, gpu_wait_minutes=4, accelerator_type="A10G")
    summary = run_segmentation(cfg, progress=False)
    assert summary.ok == 30
    assert summary.actors.startswith("1-2 actors x 1 GPU (2 A10G GPUs from the autoscaler config"), summary.actors
    rows = read_ledger_table(str(tmp_path / "out")).to_pylist()
    assert sorted(os.path.basename(r["uri"]) for r in rows) == sorted(os.listdir(inp))  # each exactly once
    gpu_nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    assert 1 <= len(gpu_nodes) <= 2  # scaled up from zero, within max_workers
    assert all("accelerator_type:A10G" in n["Resources"] for n in gpu_nodes), [n["Resources"] for n in gpu_nodes]
    assert {r["actor"].split(":")[0] for r in rows} <= {n["NodeID"][:8] for n in gpu_nodes}  # actors on GPU nodes


@pytest.mark.timeout(300)
def test_sigterm_to_a_segment_driver_clears_its_gpu_request(fake_cluster, tmp_path):
    """`ray job stop` sends SIGTERM: the pool's resource request must not outlive the driver
    (it lasts until the next request_resources call, and would keep GPU nodes up)."""
    from samadapter.ray_compat import standing_resource_request

    adapter, inp = tiny_adapter_and_images(tmp_path, 8, hw=(36, 48), seed=2)
    # 3 actors of at least 1 A10G each, on a cluster that can have 2: the driver waits for GPUs
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "segment.py"), "--input", str(inp), "--output",
           str(tmp_path / "out"), "--checkpoint", adapter, "--accelerator-type", "A10G", "--min-actors", "3",
           "--max-actors", "3", "--gpu-wait-minutes", "10", "--no-progress"]
    env = {**fake_cluster.env, "RAY_ADDRESS": fake_cluster.gcs_address}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            request = standing_resource_request()
            if len(request) == 3:
                break
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            time.sleep(0.5)
        assert request == [{"CPU": 1.0, "GPU": 1.0, "accelerator_type:A10G": 0.001}] * 3, request
        driver.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        while standing_resource_request() and time.monotonic() - sent < 10:
            time.sleep(0.2)
        assert standing_resource_request() == [], "the request outlived the driver by 10 s"
        out, _ = driver.communicate(timeout=60)
        assert driver.returncode == 128 + signal.SIGTERM and "released the GPU pool's resource request" in out, out[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
