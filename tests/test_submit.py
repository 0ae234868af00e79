"""The documented submit path: `ray start --head` on loopback, then `ray job submit`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    env = dict(os.environ)
    env.update(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind the node to 127.0.0.1
            "RAY_AUTH_MODE": "token",  # token authentication, for the CLI too
        }
    )
    gcs, dash = _free_port(), _free_port()
    start = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
    ]
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


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
