"""jobs/preflight.py on the repository's cluster files: each job lands on its own node
types, as Ray's own autoscaler scheduler places its bundles; and the segment job's pool
counts only the GPUs of its accelerator type."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from samadapter.jobs.preflight import main
from samadapter.preflight import run_preflight
from samadapter.segment import resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VM = os.path.join(ROOT, "ray_cluster.yaml")
KUBE = os.path.join(ROOT, "cluster", "raycluster.yaml")
CRONTAB = os.path.join(ROOT, "cluster", "nightly.crontab")
CRONJOB = os.path.join(ROOT, "cluster", "cronjob-segment.yaml")


@pytest.mark.parametrize("path,infer,train", [(VM, "gpu.infer", "gpu.train"), (KUBE, "gpu-infer", "gpu-train")])
def test_each_job_lands_only_on_its_own_node_type(path, infer, train):
    report = run_preflight(path)
    nightly, training = report["jobs"]["nightly"], report["jobs"]["training"]
    # the nightly at its largest pool: every A10G the file can scale to (8), one per node
    assert nightly["accelerator_type"] == "A10G" and len(nightly["bundles"]) == 8
    assert nightly["bundles"][0] == {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A10G": 0.001}
    assert nightly["node_types"] == {infer: 8} and nightly["unplaced"] == []
    # the paper's recipe: 8 workers, every GPU of one A100 node
    assert training["accelerator_type"] == "A100" and len(training["bundles"]) == 8
    assert training["node_types"] == {train: 1} and training["unplaced"] == []
    assert report["errors"] == []
    assert nightly["usd_per_hour"] == pytest.approx(8 * 1.212, abs=0.01)
    assert training["usd_per_hour"] == pytest.approx(32.7726, abs=0.01)


def _without_accelerator(src, dst):
    text = open(src).read().replace(" --accelerator-type A10G", "").replace("                - --accelerator-type=A10G\n", "")
    assert text != open(src).read()
    dst.write_text(text)
    return str(dst)


@pytest.mark.parametrize("path,schedule,train", [(VM, CRONTAB, "gpu.train"), (KUBE, CRONJOB, "gpu-train")])
def test_a_nightly_without_its_accelerator_type_fails_preflight(tmp_path, path, schedule, train):
    """What Ray's scheduler does with {CPU 1, GPU 1} bundles: one 8-GPU training node is the
    best fit for 5 or more of them."""
    bare = _without_accelerator(schedule, tmp_path / os.path.basename(schedule))
    report = run_preflight(path, schedule=bare)
    assert train in report["jobs"]["nightly"]["node_types"]
    assert any(e.startswith("nightly would launch") and "training's node type" in e for e in report["errors"])
    assert main(["--cluster", path, "--schedule", bare]) == 1




def test_the_command_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "preflight.json"
    assert main(["--cluster", VM, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| nightly | A10G |" in printed and "8 x gpu.infer (g5.2xlarge, spot)" in printed
    report = json.loads(out.read_text())
    assert report["jobs"]["nightly"]["node_types"] == {"gpu.infer": 8}
    assert any("CHANGE_AMI" in p for p in report["placeholders"])
    # placeholders are warnings; --strict makes them errors
    assert main(["--cluster", VM]) == 0 and main(["--cluster", VM, "--strict"]) == 1
    assert main(["--cluster", str(tmp_path / "missing.yaml")]) == 2


def test_missing_region_for_botocore_is_reported(tmp_path):
    config = yaml.safe_load(open(VM))
    config["docker"]["run_options"] = [o for o in config["docker"]["run_options"] if "AWS_DEFAULT_REGION" not in o]
    path = tmp_path / "ray_cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "nightly.crontab").write_text(open(CRONTAB).read())
    report = run_preflight(str(path))
    assert any("NoRegionError" in w for w in report["warnings"])
    assert not any("NoRegionError" in w for w in run_preflight(VM)["warnings"])


def test_bundles_that_fit_no_node_type_are_an_error(tmp_path):
    recipe = yaml.safe_load(open(os.path.join(ROOT, "configs", "cod10k-vit-h.yaml")))
    recipe["run"]["gpus_per_worker"] = 16  # no node has 16 GPUs
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = run_preflight(VM, recipe=str(path))
    assert report["jobs"]["training"]["unplaced"] and any("fit no node type" in e for e in report["errors"])


# ------------------------------------------------------------------ the pool's size
def _vm_groups():
    config = yaml.safe_load(open(VM))
    return resources.gpu_groups(config["available_node_types"], config["head_node_type"], config["max_workers"])


def test_pool_capacity_counts_only_the_accelerator_type_asked_for():
    groups = _vm_groups()
    assert resources.view_from_groups(0, groups, None, "x").max_gpus == 24  # every GPU node type
    view = resources.view_from_groups(0, groups, "A10G", "x")
    assert view.max_gpus == 8
    plan = resources.plan_actors(view, "vit_h", "cuda", None, 1, None, 1.0, "A10G")
    assert plan.max_actors == 8 and plan.bundle()["accelerator_type:A10G"] == resources.ACCELERATOR_SHARE


def test_a_cluster_with_several_gpu_kinds_needs_an_accelerator_type():
    view = resources.view_from_groups(0, _vm_groups(), None, "ray_cluster.yaml")
    with pytest.raises(ValueError, match="--accelerator-type"):
        resources.plan_actors(view, "vit_h", "cuda", None, 1, None, 1.0, None)
    with pytest.raises(ValueError, match="no GPU node type of the cluster has it"):
        resources.plan_actors(view, "vit_h", "cuda", None, 1, None, 1.0, "H100")
    # one kind of GPU node: no accelerator type needed, none added to the bundle
    one = [g for g in _vm_groups() if g.accelerator_type == "A10G"]
    plan = resources.plan_actors(resources.view_from_groups(0, one, None, "x"), "vit_h", "cuda", None, 1, None, 1.0)
    assert plan.bundle() == {"CPU": 1.0, "GPU": 1.0}
    # CPU actors carry none either
    plan = resources.plan_actors(view, "tiny", "cpu", None, 1, None, 1.0, "A10G")
    assert plan.accelerator_type is None and plan.bundle() == {"CPU": 1.0}
