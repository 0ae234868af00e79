"""The documented submit path: `ray start --head` on loopback, then `ray job submit`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .rayheads import RAY, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the "head" group: under -n 2, one process starts the session's `ray start` head for these and
# tests/test_nightly.py's
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("head")]


def test_ray_job_submit_train_several_classes_and_segment_their_masks(ray_head, ray_local, tmp_path):
    """The documented submit path, training configs/local-tiny-multiclass.yaml on a converted
    multi-class dataset (the task and the class count from its _dataset.json), with a
    tracking server that does not answer: one warning line, the run goes on untracked; mIoU
    rises by >= 0.3; the segment job writes an indexed PNG of the classes at each image's own
    size. (One test for what were two: one Ray Train run and its actors' start-ups fewer.)"""
    import numpy as np
    import yaml
    from PIL import Image

    from samadapter.checkpoints import read_metrics_lines
    from samadapter.data.prepare import prepare_dataset
    from samadapter.data.sources import synthetic_listing
    from samadapter.jobs.segment import main as segment

    data = str(tmp_path / "classes")
    prepare_dataset(synthetic_listing(64, 16, size=112, seed=0, kind="multiclass"), data, progress=False)
    address, env = ray_head.dashboard, ray_head.env
    nobody = f"http://127.0.0.1:{free_port()}"
    cmd = [
        RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
        "python", "jobs/train.py", "--config", "configs/local-tiny-multiclass.yaml", "--data.dataset", data,
        "--set", "task=null", "--set", "model.overrides={img_size: 128}", "--set", "optim.epochs=6",
        "--set", "run.log_every=50", "--storage", str(tmp_path / "runs"), "--name", "submitted",
        "--run.tracking-uri", nobody,
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert "before training" in out and "best (epoch " in out
    run = tmp_path / "runs" / "submitted"
    # the job's own lines from its workers, Ray's INFO lines (report dicts, data plans) not
    assert "epoch 1: train loss" in out
    assert "TrainingReport(" not in out and "Execution plan of Dataset" not in out
    # the unreachable tracking server: one warning naming it, and no other "tracking:" line
    assert out.count("does not answer") == 1, out[-4000:]
    (line,) = [line for line in out.splitlines() if "tracking:" in line]
    assert "does not answer" in line and nobody in line

    # several classes: the task from the dataset, and they learn
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "multiclass"
    lines = read_metrics_lines(str(run))
    (before,) = [x for x in lines if x.get("phase") == "before training"]
    validations = [x for x in lines if x.get("phase") == "validation"]
    assert max(x["miou"] for x in validations) - before["miou"] >= 0.3, (before, validations)
    masks_out = str(tmp_path / "masks")
    assert segment(["--input", data, "--split", "test", "--output", masks_out, "--checkpoint", str(run),
                    "--overlays", "--no-progress"]) == 0
    masks = sorted((tmp_path / "masks" / "masks").rglob("*.png"))
    assert len(masks) == 16
    for path in masks:
        im = Image.open(path)
        assert im.mode == "P" and im.size == (112, 112) and np.asarray(im).max() < 3


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
