"""samadapter/ray_compat.py against the pinned Ray: a Ray upgrade that moves a private
function fails here first. (The functions that need a running cluster, gcs_node_groups,
autoscaler_status and standing_resource_request, run in tests/test_cluster.py on Ray's
fake multi-node autoscaler.)"""

from __future__ import annotations

import os
import re

import yaml

from samadapter import ray_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_ray_these_were_written_against():
    import ray

    pinned = re.search(r'"ray\[[^"]*\]==([0-9.]+)"', open(os.path.join(ROOT, "pyproject.toml")).read()).group(1)
    assert ray.__version__ == pinned == "2.60.0"


def test_nodes_for_is_rays_scheduler_on_a_cluster_config():
    config = yaml.safe_load(open(os.path.join(ROOT, "ray_cluster.yaml")))
    # the defect it exists to show: best fit puts 5 one-GPU bundles on one 8-GPU node
    assert ray_compat.nodes_for(config, [{"CPU": 1, "GPU": 1}] * 4) == ({"gpu.infer": 4}, [])
    assert ray_compat.nodes_for(config, [{"CPU": 1, "GPU": 1}] * 5) == ({"gpu.train": 1}, [])
    assert ray_compat.nodes_for(config, [{"GPU": 16}]) == ({}, [{"GPU": 16}])


def test_a_raycluster_as_the_autoscaler_reads_it():
    cr = yaml.safe_load(open(os.path.join(ROOT, "cluster", "raycluster.yaml")))
    config = ray_compat.autoscaling_config_from_ray_cr(cr)
    infer = config["available_node_types"]["gpu-infer"]
    assert infer["resources"]["GPU"] == 1 and infer["resources"]["accelerator_type:A10G"] == 1
    assert infer["max_workers"] == 8 and config["head_node_type"] == "headgroup"
