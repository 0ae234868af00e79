"""Object-storage problems end a job with one line and its status (2 for training; the
segment job's own storage status), not a traceback; a missing input is a usage error (2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from samadapter.jobs.segment import main as segment_main
from samadapter.storage import explain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_explain_names_the_problem_and_the_fix():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    assert "AWS_ACCESS_KEY_ID" in explain(NoCredentialsError())
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    assert explain(denied).startswith("access denied")
    assert explain(PermissionError("Access Denied")).startswith("access denied")  # how s3fs reports it
    assert explain(FileNotFoundError("The specified bucket does not exist")).startswith("no such bucket")
    assert "AWS_ENDPOINT_URL" in explain(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    # wrapped: raised from, or a Ray task error carrying the original as .cause

    class TaskError(Exception):
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    assert explain(TaskError(NoCredentialsError())).startswith("no credentials")
    try:
        try:
            raise NoCredentialsError()
        except NoCredentialsError as inner:
            raise RuntimeError("listing failed") from inner
    except RuntimeError as outer:
        assert explain(outer).startswith("no credentials")
    # anything else is not a storage problem
    assert explain(ValueError("bad --threshold")) is None and explain(FileNotFoundError("/x/adapter.safetensors")) is None


def _no_credentials(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_ENDPOINT_URL="http://127.0.0.1:9")  # loopback only, never IMDS
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_segment_without_credentials_is_one_line_and_the_storage_status(ray_address, tmp_path):
    """The input's format is probed on the driver, after it has joined a Ray (here the
    shared one: ``RAY_ADDRESS``, as under ``ray job submit``)."""
    from samadapter.segment.run import STORAGE_STATUS

    from .conftest import tiny_adapter_and_images

    adapter, _ = tiny_adapter_and_images(tmp_path, 0)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "segment.py"), "--input", "s3://some-bucket/images/",
                        "--output", str(tmp_path / "out"), "--checkpoint", adapter],
                       env=dict(_no_credentials(tmp_path), RAY_ADDRESS=ray_address),
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == STORAGE_STATUS == 4, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no credentials" in errors[0] and "Traceback" not in r.stderr


def test_train_without_credentials_is_one_line_and_status_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_ENDPOINT_URL="http://127.0.0.1:9")  # loopback only, never IMDS
    r = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "train.py"), "--dataset", "s3://some-bucket/cod",
                        "--storage", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no credentials" in errors[0] and "AWS_ACCESS_KEY_ID" in errors[0]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_segment_on_a_missing_bucket_is_one_line_and_status_2(s3_server, ray_local, tmp_path, capsys):
    from .conftest import tiny_adapter_and_images

    adapter, _ = tiny_adapter_and_images(tmp_path, 1)
    code = segment_main(["--input", "s3://no-such-bucket/images/", "--output", str(tmp_path / "out"),
                                 "--checkpoint", adapter, "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "s3://no-such-bucket/images" in errors[0], err[-2000:]
    assert "Traceback" not in err
