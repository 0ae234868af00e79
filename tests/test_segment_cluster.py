"""Simulated multi-node segmentation: two nodes with one logical GPU each, no CUDA."""

from __future__ import annotations

import os

import pytest
import torch

from .conftest import tiny_adapter_and_images

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def two_gpu_nodes():
    import ray
    from ray.cluster_utils import Cluster

    from .conftest import own_ray_only
    from .rayheads import free_port

    own_ray_only()
    # a free dashboard port: another Ray on the machine may hold the default 8265
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "dashboard_port": free_port()})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_one_actor_per_gpu_node_with_cpu_fallback(two_gpu_nodes, tmp_path):
    import ray
    import ray.data

    from samadapter.segment.ledger import read_ledger_table
    from samadapter.segment.run import SegmentConfig, run_segmentation

    adapter, inp = tiny_adapter_and_images(tmp_path, 40)

    assert ray.cluster_resources().get("GPU") == 2
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback of actors given logical GPUs; this host has a CUDA device")
    cfg = SegmentConfig(input=str(inp), output=str(tmp_path / "out"), checkpoint=adapter,
                        gpus_per_actor=1, min_actors=2, max_actors=2, batch_size=2,
                        read_batch_size=2)  # many small bundles, so both actors get work
    # Both actors are placed (and so have a node) before work starts.
    ctx = ray.data.DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
    try:
        summary = run_segmentation(cfg, progress=False)
    finally:
        ctx.wait_for_min_actors_s = saved
    assert summary.ok == 40
    rows = read_ledger_table(str(tmp_path / "out")).to_pylist()
    assert sorted(os.path.basename(r["uri"]) for r in rows) == sorted(os.listdir(inp))  # each image exactly once
    # Placement, from Ray's own record of the pool's actors (alive or already gone): one on
    # each GPU node. Which of them got blocks is Ray Data's business (locality, load): with
    # 40 tiny images one actor may well do them all.
    from ray.util.state import list_actors

    pool = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(Segmenter))")], detail=True, limit=100)
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU")}
    assert len(pool) == 2 and {a.node_id for a in pool} == gpu_nodes, [(a.node_id, a.state) for a in pool]
    # the ledger names the actor that segmented each image: a pool actor on a GPU node
    assert {r["actor"].split(":")[0] for r in rows} <= {n[:8] for n in gpu_nodes}
