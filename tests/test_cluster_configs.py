"""The cluster files as `ray up`, KubeRay, the API server and cron will read them.

ray_cluster.yaml against Ray's own validator; every Kubernetes manifest against the KubeRay
v1.7.0 CRDs and the Kubernetes 1.37 CronJob schema (tests/k8s-schemas), with fields the
API server would prune treated as errors; IAM policies, security group, pinned Ray, node
placement, the nightly's PATH, deadline and submission ids; placeholders all marked CHANGE.
"""

from __future__ import annotations

import copy
import glob
import ipaddress
import json
import os
import re
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
SCHEMAS = os.path.join(ROOT, "tests", "k8s-schemas")  # KubeRay v1.7.0 CRDs, Kubernetes 1.37 CronJob (SOURCES.txt)
PRIVATE_PORTS = {6379: "GCS", 8265: "dashboard / job API", 10001: "Ray client"}
RAY_VERSION = "2.60.0"


def _load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _ray_cluster():
    return _load(os.path.join(ROOT, "ray_cluster.yaml"))[0]


def _policy(name):
    with open(os.path.join(CLUSTER, "aws", name)) as f:
        return json.load(f)


def _kube():
    """kind -> [documents] over every manifest in cluster/."""
    docs = {}
    for path in sorted(glob.glob(os.path.join(CLUSTER, "*.yaml"))):
        if os.path.basename(path) in ("runtime_env.yaml", "prices.yaml"):  # not Kubernetes objects
            continue
        for doc in _load(path):
            docs.setdefault(doc["kind"], []).append(doc)
    return docs


def _one(kind):
    (doc,) = _kube()[kind]
    return doc


# ------------------------------------------------------------------ ray_cluster.yaml
def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        jsonschema.validate(_ray_cluster(), json.load(f))
    validate_config(prepare_config(_ray_cluster()))  # as `ray up` sees it, Ray's AWS defaults filled in


def test_ray_cluster_shape():
    config = _ray_cluster()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = {k: v for k, v in nodes.items() if k != config["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert any(t["resources"].get("GPU") == 0 or "GPU" not in t["resources"] for t in workers.values()), \
        "a CPU group: planning runs while no GPU node is up (the head has no CPUs)"
    assert config["idle_timeout_minutes"] > 0 and config["provider"]["cache_stopped_nodes"] is False
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(config[key])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_head_and_workers_have_separate_least_privilege_profiles():
    config = _ray_cluster()
    nodes = config["available_node_types"]
    head_profile = nodes[config["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for k, t in nodes.items() if k != config["head_node_type"]}
    assert worker_profiles == {"samadapter-ray-worker"} and head_profile == "samadapter-ray-head"

    head, worker = _policy("head-policy.json"), _policy("worker-policy.json")
    head_actions = _actions(head)
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances", "iam:PassRole"} <= head_actions
    assert not any(a.endswith("*") for a in head_actions | _actions(worker)), "no wildcard actions"
    # workers get no EC2 or IAM rights at all
    assert not any(a.startswith(("ec2:", "iam:")) for a in _actions(worker))
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ssm:GetParameter"} <= _actions(worker)
    # the head passes only the worker role, to EC2 only; it terminates only this cluster's nodes
    (pass_role,) = [s for s in head["Statement"] if "iam:PassRole" in _list(s["Action"])]
    assert _list(pass_role["Resource"]) == ["arn:aws:iam::CHANGE_ACCOUNT:role/samadapter-ray-worker"]
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    (terminate,) = [s for s in head["Statement"] if "ec2:TerminateInstances" in _list(s["Action"])]
    assert terminate["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == config["cluster_name"]
    trust = _policy("trust-ec2.json")
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def _list(v):
    return v if isinstance(v, list) else [v]


def _actions(policy):
    return {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in _list(s["Action"])}


def test_security_group_is_ours_and_ssh_only_from_the_users_range():
    config = _ray_cluster()
    assert "security_group" not in config["provider"], "the launcher's own group opens SSH to 0.0.0.0/0"
    groups = {tuple(t["node_config"].get("SecurityGroupIds", ())) for t in config["available_node_types"].values()}
    assert len(groups) == 1 and all(g.startswith("sg-") for g in groups.pop())

    cfn = _load(os.path.join(CLUSTER, "aws", "security-group.cfn.yaml"))[0]
    sg = cfn["Resources"]["ClusterSecurityGroup"]["Properties"]
    (ssh,) = sg["SecurityGroupIngress"]
    assert (ssh["FromPort"], ssh["ToPort"], ssh["CidrIp"]) == (22, 22, {"Ref": "SshCidr"})
    assert world_open_violations(sg["SecurityGroupIngress"]) == []
    pattern = re.compile(cfn["Parameters"]["SshCidr"]["AllowedPattern"])
    assert "Default" not in cfn["Parameters"]["SshCidr"]
    assert not pattern.match("0.0.0.0/0") and pattern.match("198.51.100.0/24")
    intra = cfn["Resources"]["IntraCluster"]["Properties"]
    assert intra["SourceSecurityGroupId"] == intra["GroupId"] == {"Ref": "ClusterSecurityGroup"}


def _world_open(rule):
    cidr = rule.get("CidrIp")
    return cidr == "0.0.0.0/0" or any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
        r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))


def world_open_violations(rules):
    """Ingress rules that open a private Ray port, or anything but SSH, to the world."""
    found = []
    for rule in rules:
        if not _world_open(rule):
            continue
        lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
        if str(rule.get("IpProtocol")) == "-1":
            lo, hi = 0, 65535
        found += [f"port {port} ({what}) is open to the world by {rule}" for port, what in PRIVATE_PORTS.items() if lo <= port <= hi]
        if (lo, hi) != (22, 22):
            found.append(f"only SSH may be open to the world: {rule}")
    return found


def test_world_open_detector_catches_a_dashboard_rule():
    bad = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert any("8265" in v for v in world_open_violations([bad]))
    assert len(world_open_violations([{"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])) == 4
    assert world_open_violations([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "198.51.100.0/24"}]) == []


# ------------------------------------------------------------------ one Ray, one revision
def test_ray_and_the_project_revision_are_pinned():
    import ray

    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    (ray_dep,) = re.findall(r'"(ray\[[^"]*)"', text)
    assert ray_dep.endswith(f"=={RAY_VERSION}") and ray.__version__ == RAY_VERSION
    dockerfile = open(os.path.join(CLUSTER, "Dockerfile")).read()
    # the base by its CUDA tag, not the moving -gpu alias; torch pinned to a CUDA 12 build
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-cu12\d$", dockerfile, re.M)
    assert "pip install --no-cache-dir -c cluster/constraints.txt" in dockerfile
    constraints = dict(l.split("==") for l in open(os.path.join(CLUSTER, "constraints.txt")) if "==" in l)
    assert {"torch", "torchvision"} <= set(constraints) and constraints["ray"].strip() == RAY_VERSION
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    assert {".git", ".venv", "runs", "outputs"} <= set(ignored)
    assert _one("RayCluster")["spec"]["rayVersion"] == RAY_VERSION
    # every node and pod runs one image, tagged by the revision (not a moving tag); the
    # GCS's Redis runs a pinned release
    ray_images = {_ray_cluster()["docker"]["image"]} | {
        i for kind, docs in _kube().items() if kind != "StatefulSet" for d in docs for i in _images(d)}
    assert ray_images == {f"CHANGE_ACCOUNT.dkr.ecr.{_ray_cluster()['provider']['region']}.amazonaws.com/samadapter:CHANGE_REVISION"}
    (redis,) = {i for d in _kube()["StatefulSet"] for i in _images(d)}
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis)
    docs = open(os.path.join(ROOT, "docs", "cluster.md")).read()
    assert "git rev-parse" in dockerfile and "v0.1.0" not in docs + dockerfile
    # nodes do not install anything at set-up: no pip, no git checkout
    setup = " ".join(_ray_cluster()["setup_commands"])
    assert "pip install" not in setup and "git " not in setup


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


# ------------------------------------------------------------------ Kubernetes schemas
def _strict(node):
    """The API server's pruning as JSON schema: an object node that lists properties and
    does not preserve unknown fields rejects any other field."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _schema(kind):
    import jsonschema

    name = {"RayCluster": "ray.io_rayclusters.json", "RayJob": "ray.io_rayjobs.json", "CronJob": "cronjob-batch-v1.json",
            "NetworkPolicy": "networkpolicy-networking-v1.json", "StatefulSet": "statefulset-apps-v1.json",
            "Service": "service-v1.json", "ServiceAccount": "serviceaccount-v1.json", "Role": "role-rbac-v1.json",
            "RoleBinding": "rolebinding-rbac-v1.json"}[kind]
    with open(os.path.join(SCHEMAS, name)) as f:
        doc = json.load(f)
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"] if doc.get("kind") == "CustomResourceDefinition" else doc
    return jsonschema.Draft7Validator(_strict(schema))


KINDS = ["RayCluster", "RayJob", "CronJob", "NetworkPolicy", "StatefulSet", "Service", "ServiceAccount", "Role",
         "RoleBinding"]


def test_every_manifest_kind_has_a_schema():
    assert set(_kube()) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_manifests_validate_against_the_api_servers_schemas(kind):
    validator = _schema(kind)
    for doc in _kube()[kind]:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == []


def test_the_strict_schema_catches_a_misspelt_field():
    rc = copy.deepcopy(_one("RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelecter"] = {"a": "b"}  # pruned by the API server
    assert any("nodeSelecter" in e.message for e in _schema("RayCluster").iter_errors(rc))
    cron = copy.deepcopy(_one("CronJob"))
    cron["spec"]["jobTemplate"]["spec"]["activeDeadline"] = 5
    assert list(_schema("CronJob").iter_errors(cron))


# ------------------------------------------------------------------ placement
# vCPUs and GiB of the instance types the manifests name (AWS's published sizes).
INSTANCE_TYPES = {"m7i.2xlarge": (8, 32), "g5.2xlarge": (8, 32), "p4d.24xlarge": (96, 1152)}


def _gib(q: str) -> float:
    return float(q[:-2]) if q.endswith("Gi") else float(q) / 2**30


def _cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def test_pods_fit_the_node_types_they_select():
    rc = _one("RayCluster")
    groups = [("head", rc["spec"]["headGroupSpec"])] + [(g["groupName"], g) for g in rc["spec"]["workerGroupSpecs"]]
    for name, group in groups:
        spec = group["template"]["spec"]
        itype = spec["nodeSelector"]["node.kubernetes.io/instance-type"]
        vcpus, gib = INSTANCE_TYPES[itype]
        req = spec["containers"][0]["resources"]["requests"]
        # leave the kubelet, system daemons and the GPU/CNI plugins their share
        assert _cpu(req["cpu"]) <= vcpus - 0.5 and _gib(req["memory"]) <= 0.9 * gib, (name, itype, req)
        if "nvidia.com/gpu" in req:
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_training_lands_on_the_training_nodes_only():
    from samadapter.train.config import TrainConfig

    recipe = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "cod10k-vit-h.yaml")).run
    assert recipe.accelerator_type and recipe.placement_strategy == "PACK"
    wanted = f"accelerator_type:{recipe.accelerator_type}"
    nodes = _ray_cluster()["available_node_types"]
    having = [k for k, t in nodes.items() if wanted in t.get("resources", {})]
    assert having == ["gpu.train"]
    # PACK: the recipe's workers fit one training node
    train = nodes["gpu.train"]["resources"]
    assert recipe.workers * recipe.gpus_per_worker <= train["GPU"] and recipe.workers * recipe.cpus_per_worker <= train["CPU"]
    kube = [g["groupName"] for g in _one("RayCluster")["spec"]["workerGroupSpecs"] if wanted in g["rayStartParams"].get("resources", "")]
    assert kube == ["gpu-train"]


def test_inference_nodes_have_cpus_for_the_cpu_stages():
    """An A10G node keeps 7 vCPUs beside its model actor; at the stage benchmark's 73 ms of
    CPU per 12 MP photo that is about 95 photos/s per GPU."""
    infer = _ray_cluster()["available_node_types"]["gpu.infer"]["resources"]
    assert infer["GPU"] == 1 and infer["CPU"] - 1 >= 6 and "accelerator_type:A10G" in infer


# ------------------------------------------------------------------ the nightly
def _parse_job_args(script, args):
    """The settings a job's command line gives (its own parser: an unknown flag exits),
    over the config's defaults, as attributes (``segment.device``, ``nightly.entrypoint``)."""
    import argparse
    import importlib

    from samadapter import config as settings

    assert os.path.exists(os.path.join(ROOT, script)), script
    module = importlib.import_module("samadapter." + script[: -len(".py")].replace("/", "."))
    ns = module.parse_args(args)  # exits (SystemExit) on an unknown flag
    cls = {"nightly": "samadapter.nightly:NightlyConfig", "segment": "samadapter.segment.run:SegmentConfig",
           "train": "samadapter.train.config:TrainConfig"}[module.__name__.rsplit(".", 1)[1]]
    cls = getattr(importlib.import_module(cls.split(":")[0]), cls.split(":")[1])
    if ns.config_file:
        assert os.path.exists(os.path.join(ROOT, ns.config_file)), ns.config_file
    values = settings.merge(settings.defaults(cls), settings.resolve(cls, argparse.Namespace(
        config_assignments=ns.config_assignments)))
    values.update(config=ns.config_file, **({"entrypoint": ns.entrypoint} if hasattr(ns, "entrypoint") else {}))
    return argparse.Namespace(**values)


def _in_image(path):
    """/home/ray/samadapter/jobs/x.py -> jobs/x.py (the image's checkout: cluster/Dockerfile)."""
    assert path.startswith("/home/ray/samadapter/"), path
    return path[len("/home/ray/samadapter/"):]


def _check_nightly(argv):
    assert argv[0] == "python" and argv[1].endswith("jobs/nightly.py")
    nightly = _parse_job_args(_in_image(argv[1]), argv[2:])
    assert nightly.entrypoint[:2] == ["python", "/home/ray/samadapter/jobs/segment.py"]
    segment = _parse_job_args(_in_image(nightly.entrypoint[1]), nightly.entrypoint[2:])
    assert segment.device == "cuda", "the nightly never runs vit_h on a CPU"
    assert re.fullmatch(r"s3://[^$%]+/", segment.input), "a whole prefix, no date in it: the ledger picks new objects"
    return nightly, segment


def test_crontab_has_a_path_and_submits_once_per_night():
    lines = [l.rstrip("\n") for l in open(os.path.join(CLUSTER, "nightly.crontab")) if l.strip() and not l.startswith("#")]
    env = dict(l.split("=", 1) for l in lines if re.match(r"^[A-Z_]+=", l))
    assert "/usr/bin" in env["PATH"].split(":") and env["SHELL"] == "/bin/bash"
    (job,) = [l for l in lines if not re.match(r"^[A-Z_]+=", l)]
    fields = job.split(None, 5)
    argv = shlex.split(fields[5].split(">>")[0])
    assert argv[:2] == ["docker", "exec"] and "ray_container" in argv
    nightly, _ = _check_nightly(argv[argv.index("ray_container") + 1:])
    assert nightly.deadline_hours > 0
    assert _ray_cluster()["docker"]["container_name"] == "ray_container"


def test_cronjob_runs_once_with_a_deadline_and_resources():
    cron = _one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    nightly, segment = _check_nightly(container["command"])
    assert job["activeDeadlineSeconds"] > nightly.deadline_hours * 3600, "the Ray job is stopped before the pod is killed"
    assert segment.max_actors == _group("gpu-infer")["maxReplicas"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert f"http://{_one('RayCluster')['metadata']['name']}-head-svc:8265" in nightly.address
    assert pod["serviceAccountName"] == "samadapter-submitter" and pod["automountServiceAccountToken"] is False


def _group(name):
    return next(g for g in _one("RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == name)


def test_rayjob_entrypoint_names_files_in_the_image():
    job = _one("RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == _one("RayCluster")["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    ns = _parse_job_args(_in_image(argv[1]), [a.replace("/home/ray/samadapter/", "") for a in argv[2:]])
    assert ns.config == "configs/cod10k-vit-h.yaml"
    assert job["spec"]["submitterPodTemplate"]["spec"]["serviceAccountName"] == "samadapter-submitter"


# ------------------------------------------------------------------ identities
def test_three_service_accounts_with_their_own_rights():
    docs = _kube()
    accounts = {d["metadata"]["name"]: d for d in docs["ServiceAccount"]}
    assert set(accounts) == {"samadapter-head", "samadapter-worker", "samadapter-submitter"}
    rc = _one("RayCluster")
    assert rc["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "samadapter-head"
    assert {g["template"]["spec"]["serviceAccountName"] for g in rc["spec"]["workerGroupSpecs"]} == {"samadapter-worker"}
    for name in ("samadapter-worker", "samadapter-submitter"):
        assert accounts[name].get("automountServiceAccountToken") is False
    assert "eks.amazonaws.com/role-arn" not in accounts["samadapter-submitter"].get("metadata", {}).get("annotations", {})
    # only the head is bound to a role, and that role touches pods and RayClusters only
    bound = {s["name"] for b in docs["RoleBinding"] for s in b["subjects"]}
    assert bound == {"samadapter-head"}
    (role,) = docs["Role"]
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"pods", "rayclusters"}
    assert not any(v in ("*", "create", "delete") for rule in role["rules"] for v in rule["verbs"])
    namespaces = {d["metadata"].get("namespace") for kind in docs.values() for d in kind}
    assert namespaces == {"samadapter"}


# ------------------------------------------------------------------ placeholders and secrets
PLACEHOLDER = re.compile(r"CHANGE(?:_[A-Z_]+)?")
OLD_PLACEHOLDERS = ["your-bucket", "your-org", "YOUR_ORG", "s3://BUCKET", "203.0.113.", "v0.1.0", "111122223333"]


def _cluster_files():
    return [os.path.join(ROOT, "ray_cluster.yaml")] + sorted(
        p for p in glob.glob(os.path.join(CLUSTER, "**", "*"), recursive=True) if os.path.isfile(p))


def test_placeholders_are_marked_change_and_listed_in_the_deploy_docs():
    found = {}
    for path in _cluster_files():
        text = open(path).read()
        for token in PLACEHOLDER.findall(text):
            found.setdefault(token, set()).add(os.path.relpath(path, ROOT))
        for old in OLD_PLACEHOLDERS:
            assert old not in text, f"{path}: unmarked placeholder {old!r}"
    docs = open(os.path.join(ROOT, "docs", "cluster.md")).read()
    table = set(re.findall(r"^\| `(CHANGE(?:_[A-Z_]+)?)` \|", docs, re.M))
    assert table == set(found), f"docs/cluster.md's placeholder table {sorted(table)} vs files {sorted(found)}"


CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"aws_secret_access_key\s*[:=]", re.I),
    re.compile(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S+"),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


@pytest.mark.parametrize("path", _cluster_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_credentials_in_cluster_files(path):
    text = open(path).read()
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(text), f"{path}: looks like a credential ({pattern.pattern})"


def test_runtime_env_for_images_without_the_project():
    env = _load(os.path.join(CLUSTER, "runtime_env.yaml"))[0]
    assert env["working_dir"] == "." and ".venv" in env["excludes"]


def test_ssh_cidr_example_is_a_documentation_range():
    # the example range in the template's usage is not routable (RFC 5737)
    text = open(os.path.join(CLUSTER, "aws", "security-group.cfn.yaml")).read()
    (example,) = set(re.findall(r"SshCidr=([0-9./]+)", text))
    assert ipaddress.ip_network(example).subnet_of(ipaddress.ip_network("198.51.100.0/24"))


# ------------------------------------------------------------------ day one and every night
def _rayjob_storage():
    argv = shlex.split(_one("RayJob")["spec"]["entrypoint"])
    return argv[argv.index("--storage") + 1]


def _s3_statements(policy, action):
    return [s for s in policy["Statement"] if action in _list(s["Action"])]


@pytest.mark.parametrize("name", ["head-policy.json", "worker-policy.json"])
def test_s3_writes_only_under_the_jobs_output_and_run_prefixes(name):
    """Inputs, SAM weights, datasets and checkpoints of other runs cannot be overwritten;
    deletes: Ray Train's old checkpoints (num_to_keep) under the runs prefix, the nightly's
    unreadable ledger files (moved aside: copy, then delete) and its lease."""
    policy = _policy(name)
    _, segment = _check_nightly(_one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"])
    written = {segment.output, _rayjob_storage() + "/"}
    allowed = {r for s in _s3_statements(policy, "s3:PutObject") for r in _list(s["Resource"])}
    assert allowed == {"arn:aws:s3:::" + p[len("s3://"):] + "*" for p in written}
    deletes = {r for s in _s3_statements(policy, "s3:DeleteObject") for r in _list(s["Resource"])}
    output = "arn:aws:s3:::" + segment.output[len("s3://"):]
    assert deletes == {"arn:aws:s3:::" + _rayjob_storage()[len("s3://"):] + "/*", output + "ledger/*",
                       output + "_lease.json"}
    assert not any(r.endswith(":::CHANGE_BUCKET/*") for s in _s3_statements(policy, "s3:PutObject") for r in _list(s["Resource"]))


def test_the_head_launches_only_the_clusters_instance_types():
    head = _policy("head-policy.json")
    runs = _s3_statements(head, "ec2:RunInstances")
    on_instances = [s for s in runs if any(":instance/" in r for r in _list(s["Resource"]))]
    (instances,) = on_instances
    types = {t["node_config"]["InstanceType"] for t in _ray_cluster()["available_node_types"].values()}
    assert set(instances["Condition"]["StringEquals"]["ec2:InstanceType"]) == types
    assert not any(r == "*" for s in runs for r in _list(s["Resource"]))
    images = [r for s in runs for r in _list(s["Resource"]) if ":image/" in r]
    assert images == ["arn:aws:ec2:CHANGE_REGION::image/ami-CHANGE_AMI"]  # the AMI of every node type
    assert {t["node_config"]["ImageId"] for t in _ray_cluster()["available_node_types"].values()} == {"ami-CHANGE_AMI"}


def test_the_region_is_given_the_way_each_client_reads_it():
    """botocore (the head's token command) reads only AWS_DEFAULT_REGION; boto3/s3fs AWS_REGION."""
    config = _ray_cluster()
    region = config["provider"]["region"]
    env = dict(o.split(None, 1)[1].split("=", 1) for o in config["docker"]["run_options"] if o.startswith("-e "))
    assert env["AWS_DEFAULT_REGION"] == env["AWS_REGION"] == region
    assert f".dkr.ecr.{region}.amazonaws.com/" in config["docker"]["image"]
    assert f"--region {region}" in " ".join(config["initialization_commands"])  # ECR login on the host
    rc = _one("RayCluster")
    for group in [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert {"name": "AWS_DEFAULT_REGION", "value": region} in container["env"]


def test_every_ray_pod_has_a_memory_backed_shm_for_its_object_store():
    rc = _one("RayCluster")
    for group in [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        (container,) = spec["containers"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["emptyDir"]["medium"] == "Memory"
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store <= _gib(volume["emptyDir"]["sizeLimit"]) * 2**30 <= _gib(container["resources"]["limits"]["memory"]) * 2**30


def test_gcs_fault_tolerance_uses_the_shipped_redis():
    ft = _one("RayCluster")["spec"]["gcsFaultToleranceOptions"]
    (service,) = _kube()["Service"]
    host, port = ft["redisAddress"].rsplit(":", 1)
    assert host == service["metadata"]["name"] and int(port) == service["spec"]["ports"][0]["port"]
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    (redis,) = _kube()["StatefulSet"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": secret}} in container["env"]
    assert "--requirepass" in container["command"] and "--appendonly" in container["command"]
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]


def _policies():
    return {p["metadata"]["name"]: p for p in _kube()["NetworkPolicy"]}


def test_network_policies_keep_rays_ports_inside_the_cluster():
    policies = _policies()
    ray = policies["samadapter-ray"]
    assert ray["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": _one("RayCluster")["metadata"]["name"]}
    assert ray["spec"]["policyTypes"] == ["Ingress"]
    for rule in ray["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every pod"
        if not rule.get("ports"):  # every port: only from the cluster's own pods
            assert rule["from"] == [{"podSelector": {"matchLabels": ray["spec"]["podSelector"]["matchLabels"]}}]
    (api,) = [r for r in ray["spec"]["ingress"] if r.get("ports")]
    assert api["ports"] == [{"protocol": "TCP", "port": 8265}]
    submitter = next(f["podSelector"]["matchLabels"] for f in api["from"] if "namespaceSelector" not in f)
    # the pods that submit jobs carry that label
    cron_pod = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    assert cron_pod["metadata"]["labels"] == submitter
    assert _one("RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"] == submitter
    # Redis: the head (and KubeRay's cleanup Job) only
    redis = policies["samadapter-redis"]
    (rule,) = redis["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchExpressions"] == [
        {"key": "ray.io/node-type", "operator": "In", "values": ["head", "redis-cleanup"]}]


def test_the_cronjob_never_restarts_a_night_behind_nightly_py():
    from samadapter.nightly import UNREACHABLE

    job = _one("CronJob")["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    rules = job["podFailurePolicy"]["rules"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1] == {"action": "Count", "onExitCodes": {"containerName": container["name"], "operator": "In",
                                                           "values": [UNREACHABLE]}}
    assert rules[2] == {"action": "FailJob", "onExitCodes": {"containerName": container["name"], "operator": "NotIn",
                                                             "values": [UNREACHABLE]}}


def test_the_nightly_asks_for_the_inference_nodes_accelerator_type():
    (gpu_infer,) = [g for g in _one("RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-infer"]
    _, cron_segment = _check_nightly(_one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"])
    assert f"accelerator_type:{cron_segment.accelerator_type}" in gpu_infer["rayStartParams"]["resources"]
    lines = [l for l in open(os.path.join(CLUSTER, "nightly.crontab")) if l.strip() and not l.startswith("#") and "docker" in l]
    argv = shlex.split(lines[0].split(None, 5)[5].split(">>")[0])
    _, vm_segment = _check_nightly(argv[argv.index("ray_container") + 1:])
    assert f"accelerator_type:{vm_segment.accelerator_type}" in _ray_cluster()["available_node_types"]["gpu.infer"]["resources"]
