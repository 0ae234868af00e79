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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "jobs", "nightly.py")


class FakeClient:
    """The JobSubmissionClient calls run_nightly makes, with scripted statuses per attempt
    (``scripts``: attempt number -> statuses; the last one repeats)."""

    def __init__(self, statuses=None, stream_error=None, scripts=None, start_times=None, down=0):
        self.scripts = {k: list(v) for k, v in (scripts or {1: statuses}).items()}
        self.stream_error, self.stopped, self.jobs = stream_error, [], {}
        self.start_times = dict(start_times or {})
        self.down = down  # calls that fail with a connection error before the API answers

    def _attempt(self, sid):
        return int(sid.rsplit("-a", 1)[1]) if "release" not in sid else None

    def get_job_info(self, sid):
        if self.down:
            self.down -= 1
            raise ConnectionRefusedError("connection refused")
        if sid not in self.jobs:
            raise RuntimeError(f"Job {sid} does not exist")
        attempt = self._attempt(sid)
        if attempt is None:
            status = "SUCCEEDED"
        else:
            script = self.scripts.setdefault(attempt, ["SUCCEEDED"])
            status = script.pop(0) if len(script) > 1 else script[0]
        return SimpleNamespace(status=status, start_time=self.start_times.get(sid, time.time() * 1000),
                               message="exit code 3")

    def submit_job(self, entrypoint, submission_id, runtime_env=None, metadata=None):
        self.jobs[submission_id] = entrypoint
        return submission_id

    async def tail_job_logs(self, sid):
        yield "working\n"
        if self.stream_error:
            raise self.stream_error

    def stop_job(self, sid):
        self.stopped.append(sid)
        self.scripts[self._attempt(sid)] = ["STOPPED"]


NIGHT = "2026-11-30"


def _sid(attempt):
    return submission_id("samadapter-nightly", NIGHT, attempt)


def _cfg(**kw):
    return NightlyConfig(address="http://unused", entrypoint=["python", "x.py"], night=NIGHT, poll_seconds=0.01, **kw)


def test_the_exit_code_is_the_jobs_status_not_the_log_streams():
    # the stream drops while the job runs; the job then fails: exit 1, not 0
    client = FakeClient(["RUNNING", "RUNNING", "RUNNING", "FAILED"], stream_error=ConnectionResetError("dropped"))
    out = io.StringIO()
    assert run_nightly(_cfg(max_attempts=1), client=client, out=out) == 1
    assert "ended early" in out.getvalue() and list(client.jobs) == [_sid(1)]
    client = FakeClient(["RUNNING", "SUCCEEDED"], stream_error=ConnectionResetError("dropped"))
    assert run_nightly(_cfg(), client=client, out=io.StringIO()) == 0


def test_a_failed_attempt_is_followed_by_the_next_in_the_same_invocation():
    client = FakeClient(scripts={1: ["RUNNING", "FAILED"], 2: ["RUNNING", "SUCCEEDED"]})
    out = io.StringIO()
    assert run_nightly(_cfg(max_attempts=2), client=client, out=out) == 0
    assert list(client.jobs) == [_sid(1), _sid(2)] and "SUCCEEDED" in out.getvalue()
    # attempts used up: 1, and no third job
    client = FakeClient(scripts={1: ["FAILED"], 2: ["FAILED"]})
    assert run_nightly(_cfg(max_attempts=2), client=client, out=io.StringIO()) == 1
    assert list(client.jobs) == [_sid(1), _sid(2)]


def test_deadline_stops_the_job_and_clears_the_gpu_request():
    client = FakeClient(["RUNNING"])
    out = io.StringIO()
    assert run_nightly(_cfg(deadline_hours=1e-4), client=client, out=out) == 3
    assert client.stopped == [_sid(1)] and "stopping it" in out.getvalue()
    assert client.jobs[_sid(1) + "-release"] == "python -m samadapter.segment.resources release"
    assert _sid(2) not in client.jobs  # a stop is not followed by another attempt


def test_a_stopped_night_is_not_retried():
    """An operator's `ray job stop` (or a stop at the deadline seen by a later invocation):
    no attempt 2, the GPU request cleared, its own status."""
    client = FakeClient(scripts={1: ["RUNNING", "STOPPED"]})
    out = io.StringIO()
    assert run_nightly(_cfg(), client=client, out=out) == 4
    assert sorted(client.jobs) == [_sid(1), _sid(1) + "-release"]
    # a retried pod that finds it stopped does not start attempt 2 either
    assert run_nightly(_cfg(), client=client, out=io.StringIO()) == 4
    assert _sid(2) not in client.jobs


def test_the_deadline_counts_from_the_nights_first_attempt():
    # attempt 1 started 2 h ago and failed; with a 1 h deadline no attempt 2 is submitted
    client = FakeClient(scripts={1: ["FAILED"]}, start_times={_sid(1): (time.time() - 7200) * 1000})
    client.jobs[_sid(1)] = "python x.py"
    out = io.StringIO()
    assert run_nightly(_cfg(deadline_hours=1.0), client=client, out=out) == 3
    assert list(client.jobs) == [_sid(1)] and "deadline" in out.getvalue()


def test_an_api_that_does_not_answer_is_retried_then_its_own_status():
    client = FakeClient(["RUNNING", "SUCCEEDED"], down=3)
    out = io.StringIO()
    assert run_nightly(_cfg(), client=client, out=out) == 0
    assert "did not answer" in out.getvalue()
    client = FakeClient(["RUNNING"], down=10**9)
    out = io.StringIO()
    assert run_nightly(_cfg(api_grace_minutes=0.002), client=client, out=out) == 5
    assert "did not answer" in out.getvalue() and "for 0.002 min" in out.getvalue()


@pytest.fixture
def webhook():
    """A webhook receiver on loopback: the JSON bodies it was sent."""
    import http.server
    import json
    import threading

    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/SECRET", received
    finally:
        server.shutdown()


def test_a_night_that_did_not_succeed_is_sent_to_the_webhook(webhook):
    url, received = webhook
    out = io.StringIO()
    assert run_nightly(_cfg(max_attempts=1, notify=url), client=FakeClient(["FAILED"]), out=out) == 1
    (body,) = received
    assert body["status"] == 1 and body["night"] == NIGHT and "exit 1" in body["text"]
    assert "SECRET" not in out.getvalue()  # the webhook's path is its secret: not printed
    assert run_nightly(_cfg(notify=url), client=FakeClient(["SUCCEEDED"]), out=io.StringIO()) == 0
    assert len(received) == 1  # nothing on success
    # a webhook that does not answer: one warning, the night's own status
    from .rayheads import free_port

    out = io.StringIO()
    dead = f"http://127.0.0.1:{free_port()}/x"
    assert run_nightly(_cfg(max_attempts=1, notify=dead), client=FakeClient(["FAILED"]), out=out) == 1
    assert out.getvalue().count("warning: could not notify") == 1


def test_a_night_that_did_not_succeed_is_published_to_sns(s3_server):
    """Through moto's server on loopback (the session's; its environment points botocore at
    it), subscribed by an SQS queue that receives what the topic publishes."""
    import json

    import boto3

    sns, sqs = boto3.client("sns", region_name="eu-west-1"), boto3.client("sqs", region_name="eu-west-1")
    topic = sns.create_topic(Name="samadapter-nightly")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"ops-{os.getpid()}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    assert run_nightly(_cfg(notify=topic), client=FakeClient(scripts={1: ["RUNNING", "STOPPED"]}),
                       out=io.StringIO()) == 4
    (msg,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(json.loads(msg["Body"])["Message"])
    assert body["status"] == 4 and "stopped" in body["meaning"]


def test_bad_arguments_are_usage_errors():
    with pytest.raises(ValueError, match="after --"):
        NightlyConfig(address="x", entrypoint=[])
    with pytest.raises(ValueError):
        NightlyConfig(address="x", entrypoint=["a"], night="30/11/2026")
    with pytest.raises(ValueError, match="SNS topic ARN"):
        NightlyConfig(address="x", entrypoint=["a"], notify="slack")
    r = subprocess.run([sys.executable, JOB, "--max-attempts", "0", "--", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "max-attempts" in r.stderr
    r = subprocess.run([sys.executable, JOB, "--help"], capture_output=True, text=True, timeout=60)
    assert all(f"  {code}  " in r.stdout for code in range(6))  # every exit status documented


# ------------------------------------------------------------------ on a real Ray head
def _argv(head, night, *args):
    return ["--address", head.dashboard, "--night", night, "--poll-seconds", "0.5", *args]


def _nightly(head, night, *args, capsys):
    """jobs/nightly.py's ``main`` against the head, in this process: (exit status, output)."""
    from samadapter.jobs.nightly import main

    capsys.readouterr()
    rc = main(_argv(head, night, *args))
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _nightly_process(head, night, *args):
    """jobs/nightly.py against the head, the script in a process of its own, running."""
    return subprocess.Popen([sys.executable, JOB, *_argv(head, night, *args)], env=head.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _jobs(head, night):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return {j.submission_id: str(j.status.value) for j in JobSubmissionClient(head.dashboard).list_jobs()
            if (j.submission_id or "").startswith(f"samadapter-nightly-{night}-")}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("head")  # the session's head, with tests/test_submit.py under -n 2
def test_one_job_per_night_on_a_ray_head(ray_head, capsys):
    """Each invocation as the cron would make it; all but one run jobs/nightly.py's main in
    this process (the same code, without a Python and a Ray import each)."""
    head = ray_head
    # a success is not repeated
    rc, out = _nightly(head, "2026-01-01", "--", "python", "-c", "print('segmented tonight')", capsys=capsys)
    assert rc == 0 and "segmented tonight" in out, out[-3000:]
    rc, out = _nightly(head, "2026-01-01", "--", "python", "-c", "print('segmented tonight')", capsys=capsys)
    assert rc == 0 and "already succeeded" in out
    assert _jobs(head, "2026-01-01") == {"samadapter-nightly-2026-01-01-a1": "SUCCEEDED"}

    # a failure is retried once as a new attempt by the same invocation, then not again
    fail = ["--max-attempts", "2", "--", "python", "-c", "import sys; sys.exit(3)"]
    rc, out = _nightly(head, "2026-01-02", *fail, capsys=capsys)
    assert rc == 1 and "submitted samadapter-nightly-2026-01-02-a2" in out and "without success" in out, out[-3000:]
    rc, out = _nightly(head, "2026-01-02", *fail, capsys=capsys)
    assert rc == 1 and "without success" in out and "submitted" not in out
    assert _jobs(head, "2026-01-02") == {"samadapter-nightly-2026-01-02-a1": "FAILED", "samadapter-nightly-2026-01-02-a2": "FAILED"}

    # a second invocation while tonight's job runs follows it: one job, both exit 0
    slow = ["--", "python", "-c", "import time; time.sleep(5); print('slow night done')"]
    first = _nightly_process(head, "2026-01-03", *slow)
    deadline = time.monotonic() + 120
    while not _jobs(head, "2026-01-03") and time.monotonic() < deadline:
        time.sleep(0.5)
    rc, out = _nightly(head, "2026-01-03", *slow, capsys=capsys)
    first_out, _ = first.communicate(timeout=240)
    assert rc == 0 and "following it" in out, out[-3000:]
    assert first.returncode == 0 and "slow night done" in first_out
    assert _jobs(head, "2026-01-03") == {"samadapter-nightly-2026-01-03-a1": "SUCCEEDED"}

    # the deadline stops a job that runs too long
    rc, out = _nightly(head, "2026-01-04", "--deadline-hours", "0.0015", "--", "python", "-c", "import time; time.sleep(300)",
                       capsys=capsys)
    assert rc == 3 and "stopping it" in out and "cleared the cluster's resource request" in out, out[-3000:]
    assert _jobs(head, "2026-01-04") == {"samadapter-nightly-2026-01-04-a1": "STOPPED",
                                         "samadapter-nightly-2026-01-04-a1-release": "SUCCEEDED"}
