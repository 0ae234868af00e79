"""The documented submit path: `ray start --head` on loopback, then `ray job submit`."""

from __future__ import annotations

import os
import subprocess

import pytest

from .rayheads import RAY, start_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def ray_head():
    head = start_head(num_cpus=4)
    try:
        yield head.dashboard, head.env
    finally:
        head.stop()


def test_ray_job_submit_train(ray_head, tmp_path):
    address, env = ray_head
    cmd = [
        RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
        "python", "jobs/train.py", "--config", "configs/local-tiny.yaml",
        "--set", "optim.epochs=1", "--set", "model.overrides.img_size=128",
        "--set", "data.synthetic_train=16", "--set", "data.synthetic_test=4", "--set", "data.synthetic_size=128",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--storage", str(tmp_path / "runs"), "--name", "submitted",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert "before training" in out and "best (epoch 1)" in out
    assert (tmp_path / "runs" / "submitted" / "metrics.jsonl").exists()
