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


def test_the_autoscalers_command_line_only_from_a_monitor_process(tmp_path):
    import subprocess
    import sys
    import time

    monitor = tmp_path / "monitor.py"
    monitor.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(monitor), "--autoscaling-config=/tmp/x.yaml"])
    try:
        deadline = time.monotonic() + 10  # /proc shows the new command line once exec is done
        while (args := ray_compat.autoscaler_command_line({"monitor_pid": proc.pid})) is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert args is not None and "--autoscaling-config=/tmp/x.yaml" in args
        assert ray_compat.autoscaler_command_line({"monitor_pid": os.getpid()}) is None  # not a monitor
        assert ray_compat.autoscaler_command_line({}) is None
        assert ray_compat.autoscaler_command_line({"monitor_pid": 2**22 + 7}) is None  # no such process
    finally:
        proc.kill()
        proc.wait()


def test_what_ray_trains_data_config_applies_to_a_split_dataset():
    from ray.train import DataConfig

    options, locality = ray_compat.data_config_split_options(DataConfig(), "val")
    assert type(options).__name__ == "ExecutionOptions" and locality in (True, False)


def test_the_logger_ray_train_reports_through():
    from ray.train.v2._internal.execution import context

    assert ray_compat.train_report_logger() is context.logger and context.logger.name.endswith("context.py")
    assert not context.logger.name.startswith("ray")  # outside the tree Ray Train's LoggingConfig governs


def test_the_gcs_port_variable_is_rays():
    from ray._private import ray_constants

    from samadapter.ray_compat import GCS_PORT_VARIABLE

    assert ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE == GCS_PORT_VARIABLE
