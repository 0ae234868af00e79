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

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
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
    # The placement is under test, not start-up timing: with 40 tiny images the first actor
    # up can finish everything before the second has loaded its model, so the pool starts
    # work only once both actors are ready.
    ctx = ray.data.DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
    try:
        summary = run_segmentation(cfg, progress=False)
    finally:
        ctx.wait_for_min_actors_s = saved
    assert summary.ok == 40
    rows = read_ledger_table(str(tmp_path / "out")).to_pylist()
    assert sorted(os.path.basename(r["uri"]) for r in rows) == sorted(os.listdir(inp))  # each image exactly once
    actors = {r["actor"] for r in rows}
    assert len(actors) == 2, actors
    gpu_nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Resources"].get("GPU")}
    assert {a.split(":")[0] for a in actors} == gpu_nodes  # one actor on each GPU node
