"""Cluster configs (Ray's launcher, KubeRay) and autoscaling on Ray's fake multi-node cluster."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import yaml

from .conftest import tiny_adapter_and_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
PRIVATE_PORTS = {6379: "GCS", 8265: "dashboard / job API", 10001: "Ray client"}


def _load(path):
    with open(path) as f:
        return list(yaml.safe_load_all(f))


def _ray_cluster():
    return _load(os.path.join(ROOT, "ray_cluster.yaml"))[0]


def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    config = _ray_cluster()
    jsonschema.validate(config, schema)
    # and as `ray up` sees it: Ray's AWS defaults filled in, then Ray's own validation
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_ray_cluster()))
    # the shape the issue asks for
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = {name: t for name, t in nodes.items() if t.get("resources", {}).get("GPU")}
    assert len(gpu_types) >= 2 and all(t["min_workers"] == 0 for t in gpu_types.values())
    assert all("IamInstanceProfile" in t["node_config"] for t in nodes.values())
    assert config["idle_timeout_minutes"] > 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))


def _world_open(rule):
    return any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
        r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
    )


def world_open_violations(rules):
    """Ingress rules that open a private Ray port, or anything but SSH, to the world."""
    found = []
    for rule in rules:
        if not _world_open(rule):
            continue
        lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
        if rule.get("IpProtocol") == "-1":
            lo, hi = 0, 65535
        found += [f"port {port} ({what}) is open to the world by {rule}" for port, what in PRIVATE_PORTS.items() if lo <= port <= hi]
        if (lo, hi) != (22, 22):
            found.append(f"only SSH may be open to the world: {rule}")
    return found


def test_no_private_port_is_open_to_the_world():
    rules = _ray_cluster()["provider"].get("security_group", {}).get("IpPermissions", [])
    assert world_open_violations(rules) == []


def test_world_open_detector_catches_a_dashboard_rule():
    bad = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert any("8265" in v for v in world_open_violations([bad]))
    everything = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    assert len(world_open_violations([everything])) == 4
    office_ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}
    assert world_open_violations([office_ssh]) == []


CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"aws_secret_access_key\s*[:=]", re.I),
    re.compile(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S+"),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


@pytest.mark.parametrize("path", [os.path.join(ROOT, "ray_cluster.yaml")] + sorted(
    os.path.join(CLUSTER, f) for f in os.listdir(CLUSTER)))
def test_no_credentials_in_cluster_files(path):
    text = open(path).read()
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(text), f"{path}: looks like a credential ({pattern.pattern})"


def _kube():
    docs = {}
    for name in os.listdir(CLUSTER):
        if name.endswith(".yaml") and name != "runtime_env.yaml":
            for doc in _load(os.path.join(CLUSTER, name)):
                docs[doc["kind"]] = doc
    return docs


def _images(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image":
                yield v
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def test_kuberay_manifests_parse_and_match_the_readme():
    docs = _kube()
    assert {"RayCluster", "RayJob", "CronJob"} <= set(docs)
    rc = docs["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["enableInTreeAutoscaling"] is True
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = rc["spec"]["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] == 0 for g in groups)
    assert all("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    assert rc["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"

    readme = open(os.path.join(ROOT, "README.md")).read()
    images = {i for d in docs.values() for i in _images(d)}
    assert len(images) == 1, images  # one image everywhere
    assert images.pop() in readme
    dockerfile = open(os.path.join(CLUSTER, "Dockerfile")).read()
    assert "pip install" in dockerfile and "jobs" in dockerfile

    # The entrypoints name jobs and configs that exist, with flags the jobs accept.
    job = docs["RayJob"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    cron = docs["CronJob"]
    command = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert f"http://{rc['metadata']['name']}-head-svc:8265" in command
    for entry in (job["spec"]["entrypoint"], command.split(" -- ", 1)[1]):
        argv = shlex.split(entry.replace("$(date -u +%Y-%m-%d)", "2026-01-01"))
        assert argv[0] == "python" and os.path.exists(os.path.join(ROOT, argv[1]))
        assert f"python {argv[1]}" in readme
        _parse_job_args(argv[1], argv[2:])


def _parse_job_args(script, args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("job_under_test", os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ns = module.parse_args(args)  # exits (SystemExit) on an unknown flag
    if getattr(ns, "config", None):
        assert os.path.exists(os.path.join(ROOT, ns.config)), ns.config


def test_crontab_and_runtime_env():
    line = [l for l in open(os.path.join(CLUSTER, "nightly.crontab")) if l.strip() and not l.startswith(("#", "SHELL"))][0]
    fields = line.split(None, 5)
    assert len(fields) == 6 and "ray job submit" in fields[5] and "jobs/segment.py" in fields[5]
    env = _load(os.path.join(CLUSTER, "runtime_env.yaml"))[0]
    assert env["working_dir"] == "." and ".venv" in env["excludes"]


# --------------------------------------------------------------------- autoscaling
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
