"""jobs/nightly.py: one Ray job per night, whatever cron or the CronJob retries do."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from samadapter.nightly import NightlyConfig, run_nightly, submission_id

from .rayheads import start_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "jobs", "nightly.py")


class FakeClient:
    """The JobSubmissionClient calls run_nightly makes, with scripted statuses."""

    def __init__(self, statuses, stream_error=None):
        self.jobs, self.statuses, self.stream_error, self.stopped = {}, list(statuses), stream_error, []

    def get_job_info(self, sid):
        if sid not in self.jobs:
            raise RuntimeError(f"Job {sid} does not exist")
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(status=status, start_time=time.time() * 1000, message="exit code 3")

    def submit_job(self, entrypoint, submission_id, runtime_env=None, metadata=None):
        self.jobs[submission_id] = entrypoint
        return submission_id

    async def tail_job_logs(self, sid):
        yield "working\n"
        if self.stream_error:
            raise self.stream_error

    def stop_job(self, sid):
        self.stopped.append(sid)
        self.statuses = ["STOPPED"]


def _cfg(**kw):
    return NightlyConfig(address="http://unused", entrypoint=["python", "x.py"], night="2026-11-30", poll_seconds=0.01, **kw)


def test_the_exit_code_is_the_jobs_status_not_the_log_streams():
    # the stream drops while the job runs; the job then fails: exit 1, not 0
    client = FakeClient(["RUNNING", "RUNNING", "RUNNING", "FAILED"], stream_error=ConnectionResetError("dropped"))
    out = io.StringIO()
    assert run_nightly(_cfg(), client=client, out=out) == 1
    assert "ended early" in out.getvalue() and list(client.jobs) == [submission_id("samadapter-nightly", "2026-11-30", 1)]
    client = FakeClient(["RUNNING", "SUCCEEDED"], stream_error=ConnectionResetError("dropped"))
    assert run_nightly(_cfg(), client=client, out=io.StringIO()) == 0


def test_deadline_stops_the_job():
    client = FakeClient(["RUNNING"])
    out = io.StringIO()
    assert run_nightly(_cfg(deadline_hours=1e-4), client=client, out=out) == 3
    assert client.stopped == ["samadapter-nightly-2026-11-30-a1"] and "stopping it" in out.getvalue()


def test_bad_arguments_are_usage_errors():
    with pytest.raises(ValueError, match="after --"):
        NightlyConfig(address="x", entrypoint=[])
    with pytest.raises(ValueError):
        NightlyConfig(address="x", entrypoint=["a"], night="30/11/2026")
    r = subprocess.run([sys.executable, JOB, "--max-attempts", "0", "--", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "max-attempts" in r.stderr


# ------------------------------------------------------------------ on a real Ray head
@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=2)
    try:
        yield h
    finally:
        h.stop()


def _nightly(head, night, *args, wait=True):
    cmd = [sys.executable, JOB, "--address", head.dashboard, "--night", night, "--poll-seconds", "0.5", *args]
    if not wait:
        return subprocess.Popen(cmd, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=240)
    return r.returncode, r.stdout + r.stderr


def _jobs(head, night):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return {j.submission_id: str(j.status.value) for j in JobSubmissionClient(head.dashboard).list_jobs()
            if (j.submission_id or "").startswith(f"samadapter-nightly-{night}-")}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_job_per_night_on_a_ray_head(head):
    # a success is not repeated
    rc, out = _nightly(head, "2026-01-01", "--", "python", "-c", "print('segmented tonight')")
    assert rc == 0 and "segmented tonight" in out, out[-3000:]
    rc, out = _nightly(head, "2026-01-01", "--", "python", "-c", "print('segmented tonight')")
    assert rc == 0 and "already succeeded" in out
    assert _jobs(head, "2026-01-01") == {"samadapter-nightly-2026-01-01-a1": "SUCCEEDED"}

    # a failure is retried once as a new attempt, then not again
    fail = ["--max-attempts", "2", "--", "python", "-c", "import sys; sys.exit(3)"]
    assert _nightly(head, "2026-01-02", *fail)[0] == 1
    assert _nightly(head, "2026-01-02", *fail)[0] == 1
    rc, out = _nightly(head, "2026-01-02", *fail)
    assert rc == 1 and "without success" in out
    assert _jobs(head, "2026-01-02") == {"samadapter-nightly-2026-01-02-a1": "FAILED", "samadapter-nightly-2026-01-02-a2": "FAILED"}

    # a second invocation while tonight's job runs follows it: one job, both exit 0
    slow = ["--", "python", "-c", "import time; time.sleep(8); print('slow night done')"]
    first = _nightly(head, "2026-01-03", *slow, wait=False)
    deadline = time.monotonic() + 120
    while not _jobs(head, "2026-01-03") and time.monotonic() < deadline:
        time.sleep(0.5)
    rc, out = _nightly(head, "2026-01-03", *slow)
    first_out, _ = first.communicate(timeout=240)
    assert rc == 0 and "following it" in out, out[-3000:]
    assert first.returncode == 0 and "slow night done" in first_out
    assert _jobs(head, "2026-01-03") == {"samadapter-nightly-2026-01-03-a1": "SUCCEEDED"}

    # the deadline stops a job that runs too long
    rc, out = _nightly(head, "2026-01-04", "--deadline-hours", "0.003", "--", "python", "-c", "import time; time.sleep(300)")
    assert rc == 3 and "stopping it" in out, out[-3000:]
    assert _jobs(head, "2026-01-04") == {"samadapter-nightly-2026-01-04-a1": "STOPPED"}
