"""Before anything is launched: what each job asks a cluster file for, and where it lands.

For a ``ray up`` config (``ray_cluster.yaml``) or a KubeRay RayCluster
(``cluster/raycluster.yaml``; its worker groups are the node types, read the way KubeRay's
autoscaler reads them), this builds the resource bundles the jobs ask for, with the jobs'
own code, and asks Ray's own autoscaler scheduler which node types it would launch:

- the nightly at its largest pool: the segment command of the cluster's schedule (the
  crontab beside ``ray_cluster.yaml``, the CronJob beside a RayCluster), its actors'
  bundle (``ActorPlan.bundle``: CPU, GPU, accelerator type) times the pool's maximum
  (``--max-actors``, else every GPU of its accelerator type the file can scale to);
- training with a recipe (default: the paper's), its workers' bundles from Ray Train's own
  ``ScalingConfig``.

A node type belongs to the job whose accelerator type it carries. A job that would launch
another job's node type, or whose bundles fit nowhere, is an error (exit 1); the
placeholders still in the files (``CHANGE...``) and a missing region, image or instance
profile are warnings (errors with ``strict``). Hourly costs come from a price table the
user edits (``cluster/prices.yaml``).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

PLACEHOLDER = re.compile(r"CHANGE(?:_[A-Z_]+)?")
DEFAULT_RECIPE = os.path.join("configs", "cod10k-vit-h.yaml")


class PreflightError(ValueError):
    """A file that cannot be read as what it should be (usage: exit 2)."""


@dataclass
class ClusterFile:
    path: str
    kind: str  # "vm" (ray up) or "kuberay"
    doc: dict
    autoscaler: dict  # as Ray's autoscaler reads it: available_node_types, head_node_type, max_workers
    instance_types: Dict[str, str]  # node type -> EC2 instance type
    spot: Dict[str, bool] = field(default_factory=dict)


def load_cluster(path: str) -> ClusterFile:
    from .ray_compat import autoscaling_config_from_ray_cr

    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise PreflightError(f"{path}: {exc}") from exc
    cr = next((d for d in docs if d.get("kind") == "RayCluster"), None)
    if cr is not None:
        auto = autoscaling_config_from_ray_cr(cr)
        groups = {"headgroup": cr["spec"]["headGroupSpec"]}
        groups.update({g["groupName"]: g for g in cr["spec"].get("workerGroupSpecs", [])})
        itypes = {name: ((g.get("template", {}).get("spec", {}).get("nodeSelector") or {})
                         .get("node.kubernetes.io/instance-type", "?")) for name, g in groups.items()}
        return ClusterFile(path, "kuberay", cr, auto, itypes)
    doc = docs[0] if docs else {}
    if "available_node_types" not in doc:
        raise PreflightError(f"{path}: neither a `ray up` cluster config (available_node_types) nor a KubeRay RayCluster")
    nodes = doc["available_node_types"]
    return ClusterFile(path, "vm", doc, doc, {k: (v.get("node_config") or {}).get("InstanceType", "?") for k, v in nodes.items()},
                       {k: "InstanceMarketOptions" in (v.get("node_config") or {}) for k, v in nodes.items()})


def default_schedule(cluster: ClusterFile) -> str:
    here = os.path.dirname(os.path.abspath(cluster.path))
    if cluster.kind == "kuberay":
        return os.path.join(here, "cronjob-segment.yaml")
    return os.path.join(here, "cluster", "nightly.crontab")


def segment_command(schedule_path: str) -> List[str]:
    """The arguments of jobs/segment.py in a crontab line or a CronJob's container command."""
    try:
        text = open(schedule_path).read()
    except OSError as exc:
        raise PreflightError(f"the nightly's schedule {schedule_path}: {exc} (pass --schedule)") from exc
    argv: Optional[List[str]] = None
    if schedule_path.endswith((".yaml", ".yml")):
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "CronJob":
                argv = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    else:
        for line in text.splitlines():
            if line.strip() and not line.startswith("#") and "jobs/segment.py" in line:
                argv = shlex.split(line.split(">>")[0])
    if not argv:
        raise PreflightError(f"{schedule_path}: no jobs/segment.py command in it")
    at = next(i for i, a in enumerate(argv) if a.endswith("jobs/segment.py"))
    return argv[at + 1:]


def nightly_bundles(cluster: ClusterFile, segment_args: List[str]):
    """The nightly's actor bundles at its largest pool, as the segment job builds them."""
    import argparse

    from . import config as settings
    from .segment import resources
    from .segment.run import SegmentConfig

    parser = argparse.ArgumentParser(add_help=False)
    settings.add_arguments(parser, SegmentConfig)  # the segment job's own flags
    known, _ = parser.parse_known_args(segment_args)
    args = argparse.Namespace(**settings.merge(settings.defaults(SegmentConfig), settings.resolve(SegmentConfig, known)))
    gpus = args.gpus_per_actor if args.gpus_per_actor is not None else (0.0 if args.device == "cpu" else 1.0)
    auto = cluster.autoscaler
    groups = resources.gpu_groups(auto["available_node_types"], auto["head_node_type"], auto.get("max_workers", 0))
    view = resources.view_from_groups(0, groups, args.accelerator_type if gpus else None, cluster.path)
    largest = args.max_actors if args.max_actors is not None else (
        int(view.max_gpus // gpus) if gpus else args.min_actors)
    plan = resources.ActorPlan(float(gpus), args.min_actors, max(largest, 0), args.cpus_per_actor, "",
                               args.accelerator_type if gpus else None)
    return [plan.bundle() for _ in range(plan.max_actors)], plan.accelerator_type


def training_bundles(recipe_path: str):
    from .train.config import TrainConfig
    from .train.driver import scaling_config

    run = TrainConfig.from_yaml(recipe_path).run
    factory = scaling_config(run).as_placement_group_factory()
    return [dict(b) for b in factory.bundles], run.accelerator_type


def accelerator_of(node_type: dict) -> Optional[str]:
    from .segment.resources import ACCELERATOR_PREFIX

    keys = [k for k in (node_type.get("resources") or {}) if k.startswith(ACCELERATOR_PREFIX)]
    return keys[0][len(ACCELERATOR_PREFIX):] if keys else None


def load_prices(path: Optional[str]) -> Dict[str, float]:
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: float(v) for k, v in ((yaml.safe_load(f) or {}).get("on_demand_usd_per_hour") or {}).items()}


def default_prices(cluster: ClusterFile) -> str:
    here = os.path.dirname(os.path.abspath(cluster.path))
    for candidate in (os.path.join(here, "prices.yaml"), os.path.join(here, "cluster", "prices.yaml")):
        if os.path.exists(candidate):
            return candidate
    return os.path.join(here, "cluster", "prices.yaml")


def missing_settings(cluster: ClusterFile) -> List[str]:
    """Settings without which the cluster does not start (or starts without rights)."""
    found = []
    if cluster.kind == "vm":
        doc = cluster.doc
        region = (doc.get("provider") or {}).get("region")
        if not region:
            found.append("provider.region is not set")
        docker = doc.get("docker") or {}
        if not docker.get("image"):
            found.append("docker.image is not set: nodes would run Ray's bare image without this project")
        env = " ".join(docker.get("run_options") or [])
        default_region = re.search(r"AWS_DEFAULT_REGION=(\S+)", env)
        if not default_region:
            found.append("docker.run_options pass no AWS_DEFAULT_REGION: botocore (the head's token command) "
                         "raises NoRegionError")
        elif region and default_region.group(1) != region:
            found.append(f"AWS_DEFAULT_REGION={default_region.group(1)} but provider.region is {region}")
        for name, node in doc["available_node_types"].items():
            config = node.get("node_config") or {}
            if not (config.get("IamInstanceProfile") or {}).get("Name") and not (config.get("IamInstanceProfile") or {}).get("Arn"):
                found.append(f"{name}: no IamInstanceProfile (no bucket, token or EC2 rights)")
            if not config.get("ImageId"):
                found.append(f"{name}: no ImageId")
    else:
        spec = cluster.doc["spec"]
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for name, group in groups:
            pod = group.get("template", {}).get("spec", {})
            if not all(c.get("image") for c in pod.get("containers", [])):
                found.append(f"{name}: a container without an image")
            if not pod.get("serviceAccountName"):
                found.append(f"{name}: no serviceAccountName (no IRSA role: no bucket access)")
    return found


def run_preflight(cluster_path: str, schedule: Optional[str] = None, recipe: Optional[str] = None,
                  prices: Optional[str] = None) -> dict:
    """The report (``jobs/preflight.py --json``'s content), with ``errors`` and ``warnings``."""
    from .ray_compat import nodes_for

    cluster = load_cluster(cluster_path)
    schedule = schedule or default_schedule(cluster)
    recipe = recipe or DEFAULT_RECIPE
    price = load_prices(prices or default_prices(cluster))
    node_types = cluster.autoscaler["available_node_types"]
    jobs = {"nightly": nightly_bundles(cluster, segment_command(schedule)), "training": training_bundles(recipe)}
    owners = {}
    for job, (_, accel) in jobs.items():
        for name, node in node_types.items():
            if accel and accelerator_of(node) == accel:
                owners[name] = job
    report = {"cluster": cluster_path, "kind": cluster.kind, "schedule": schedule, "recipe": recipe, "jobs": {},
              "placeholders": [], "warnings": [], "errors": []}
    for job, (bundles, accel) in jobs.items():
        placed, residual = nodes_for(cluster.autoscaler, bundles) if bundles else ({}, [])
        hourly = {n: round(price[cluster.instance_types[n]] * c, 4) for n, c in placed.items()
                  if cluster.instance_types.get(n) in price}
        report["jobs"][job] = {
            "accelerator_type": accel, "bundles": bundles, "node_types": placed,
            "instance_types": {n: cluster.instance_types.get(n, "?") for n in placed},
            "spot": sorted(n for n in placed if cluster.spot.get(n)),
            "usd_per_hour": round(sum(hourly.values()), 2) if len(hourly) == len(placed) else None,
            "unplaced": residual,
        }
        for name in placed:
            owner = owners.get(name)
            if owner and owner != job:
                report["errors"].append(f"{job} would launch {placed[name]} x {name} ({cluster.instance_types.get(name)}), "
                                        f"{owner}'s node type" + ("" if accel else ": give the job its accelerator type"))
        if not bundles:
            report["errors"].append(f"{job} asks for nothing: its pool has no actors on this cluster")
        elif residual:
            report["errors"].append(f"{job}: {len(residual)} of {len(bundles)} bundles fit no node type of "
                                    f"{cluster_path} (e.g. {residual[0]})")
        elif not placed:
            report["errors"].append(f"{job}: nothing could be placed")
    head = cluster.autoscaler["head_node_type"]
    report["head"] = {"node_type": head, "instance_type": cluster.instance_types.get(head),
                      "usd_per_hour": price.get(cluster.instance_types.get(head, ""))}
    unpriced = sorted({cluster.instance_types[n] for j in report["jobs"].values() for n in j["node_types"]
                       if cluster.instance_types.get(n) not in price})
    if unpriced:
        report["warnings"].append(f"no price for {', '.join(unpriced)} in the price table")
    for path in (cluster_path, schedule):
        text = open(path).read()
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):  # prose about placeholders, not one
                continue
            for token in sorted(set(PLACEHOLDER.findall(line))):
                report["placeholders"].append(f"{path}:{number}: {token}")
    report["warnings"] += missing_settings(cluster)
    return report


def report_lines(report: dict) -> List[str]:
    lines = [f"{report['cluster']} ({'ray up' if report['kind'] == 'vm' else 'KubeRay'}); nightly from "
             f"{report['schedule']}, training from {report['recipe']}", ""]
    lines += ["| job | accelerator | bundles | launches | $/h (on-demand) |", "|---|---|---:|---|---:|"]
    for job, j in report["jobs"].items():
        launches = ", ".join(f"{c} x {n} ({j['instance_types'][n]}{', spot' if n in j['spot'] else ''})"
                             for n, c in j["node_types"].items()) or "nothing"
        cost = f"{j['usd_per_hour']:.2f}" if j["usd_per_hour"] is not None else "?"
        bundle = j["bundles"][0] if j["bundles"] else {}
        lines.append(f"| {job} | {j['accelerator_type'] or '-'} | {len(j['bundles'])} x {bundle} | {launches} | {cost} |")
    head = report["head"]
    if head.get("usd_per_hour") is not None:
        lines.append(f"\nhead ({head['node_type']}, {head['instance_type']}) runs all the time: ${head['usd_per_hour']:.2f}/h")
    if report["placeholders"]:
        lines += ["", f"{len(report['placeholders'])} placeholder(s) still to set:"]
        lines += [f"  {p}" for p in report["placeholders"]]
    lines += [""] + [f"warning: {w}" for w in report["warnings"]] + [f"error: {e}" for e in report["errors"]]
    return lines
