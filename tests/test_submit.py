"""The documented submit path: `ray start --head` on loopback, then `ray job submit`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .rayheads import RAY, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_ray_job_submit_train(ray_head, tmp_path):
    """The documented submit path, with a tracking server that does not answer: one warning
    line, the run goes on untracked."""
    address, env = ray_head.dashboard, ray_head.env
    nobody = f"http://127.0.0.1:{free_port()}"
    cmd = [
        RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
        "python", "jobs/train.py", "--config", "configs/local-tiny.yaml",
        "--set", "optim.epochs=1", "--set", "model.overrides.img_size=128", "--run.workers", "1",
        "--set", "data.synthetic_train=16", "--set", "data.synthetic_test=4", "--set", "data.synthetic_size=128",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--storage", str(tmp_path / "runs"), "--name", "submitted",
        "--run.tracking-uri", nobody,
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert "before training" in out and "best (epoch 1)" in out
    assert (tmp_path / "runs" / "submitted" / "metrics.jsonl").exists()
    # the job's own lines from its workers, Ray's INFO lines (report dicts, data plans) not
    assert "epoch 1: train loss" in out
    assert "TrainingReport(" not in out and "Execution plan of Dataset" not in out
    # the unreachable tracking server: one warning naming it, and no other "tracking:" line
    assert out.count("does not answer") == 1, out[-4000:]
    (line,) = [line for line in out.splitlines() if "tracking:" in line]
    assert "does not answer" in line and nobody in line


# which Ray the job joined, and which Ray Ray's own code in its workers finds when it asks for
# "the" Ray without an address (as Train's PlacementGroupCleaner does)
_WHICH_RAY = ("import os, sys, ray; from samadapter.ray_session import connect; connect(); "
              "from ray._private.services import canonicalize_bootstrap_address_or_die as find; "
              "os.environ.get('RAY_ADDRESS') or print('WORKER', ray.get(ray.remote(lambda: find(None)).remote())); "
              "print('GCS', ray.get_runtime_context().gcs_address)")


def test_a_job_without_ray_address_starts_its_own_ray_beside_another(ray_head):
    """Another Ray runs on this machine (a head, recorded where `ray start` records the
    machine's cluster, which a bare ray.init() joins): a job without RAY_ADDRESS does not
    join it; with RAY_ADDRESS (what `ray job submit` sets for its jobs) it does."""
    import tempfile

    head = ray_head
    machine_tmp = tempfile.mkdtemp(prefix="rq", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        os.makedirs(os.path.join(machine_tmp, "ray"))
        with open(os.path.join(machine_tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write(head.gcs_address)
        alone = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
        alone["RAY_TMPDIR"] = machine_tmp
        gcs = {}
        for name, env in (("own", alone), ("joined", dict(alone, RAY_ADDRESS=head.gcs_address))):
            r = subprocess.run(["python", "-c", _WHICH_RAY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, r.stderr[-3000:]
            gcs[name] = r.stdout.split("GCS ")[-1].strip()
            if name == "own":  # in its workers, Ray's own lookup finds the job's Ray, not "multiple active Ray
                # instances" (the joined head's workers are the head's: `ray start` decides their environment)
                assert r.stdout.split("WORKER ")[-1].split()[0] == gcs[name], r.stdout
        assert gcs["joined"] == head.gcs_address != gcs["own"]
    finally:
        shutil.rmtree(machine_tmp, ignore_errors=True)
