"""A scheduled Ray job, run at most once per night: what cron and the CronJob call.

``ray job submit`` from a scheduler is unsafe three ways: a retried or overlapping
invocation starts a second job for the same night, the command exits 0 when its log
stream ends early (a dropped connection) whatever the job did, and nothing bounds the run
time. Here a night's attempts have fixed submission ids, ``<prefix>-<night>-a<k>``:

- no attempt yet: submit attempt 1;
- the latest attempt is pending or running (a retried scheduler pod, a second cron
  invocation): follow it, never submit another;
- it succeeded: exit 0 at once;
- it failed or was stopped: submit the next attempt, up to ``max_attempts`` (a rerun of the
  segment job redoes only what the ledger does not record as done).

Following means streaming the job's logs, then polling its status until it is final: the
exit code is the job's (0 succeeded, 1 failed or stopped), never the log stream's. An
attempt still running ``deadline`` after its start is stopped (exit 3).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

log = logging.getLogger(__name__)

SUCCEEDED, FAILED, STOPPED, DEADLINE = 0, 1, 1, 3
_FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class NightlyConfig:
    address: str
    entrypoint: List[str]
    night: Optional[str] = None  # YYYY-MM-DD (UTC); default today
    prefix: str = "samadapter-nightly"
    deadline_hours: float = 6.0
    max_attempts: int = 2
    poll_seconds: float = 10.0
    working_dir: Optional[str] = None  # a runtime_env working_dir (none: the image holds the project)

    def __post_init__(self) -> None:
        if not self.entrypoint:
            raise ValueError("give the job's command after --, e.g. -- python jobs/segment.py --input ...")
        if self.deadline_hours <= 0 or self.max_attempts < 1 or self.poll_seconds <= 0:
            raise ValueError("--deadline-hours and --poll-seconds must be > 0, --max-attempts >= 1")
        if self.night is not None:
            dt.date.fromisoformat(self.night)  # raises ValueError naming the bad date


def night_of(now: Optional[dt.datetime] = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d")


def submission_id(prefix: str, night: str, attempt: int) -> str:
    return f"{prefix}-{night}-a{attempt}"


def _info(client, sid: str):
    """The job's details, or None when no job has this submission id."""
    try:
        return client.get_job_info(sid)
    except RuntimeError as exc:  # the client raises RuntimeError for 404s
        if "does not exist" in str(exc) or "404" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


def run_nightly(cfg: NightlyConfig, client=None, out=None) -> int:
    """Submit or follow tonight's attempt; returns the exit code (0, 1 or 3)."""
    import shlex

    from ray.job_submission import JobSubmissionClient

    out = out or sys.stdout
    client = client or JobSubmissionClient(cfg.address)
    night = cfg.night or night_of()
    for attempt in range(1, cfg.max_attempts + 1):
        sid = submission_id(cfg.prefix, night, attempt)
        info = _info(client, sid)
        if info is None:
            runtime_env = {"working_dir": cfg.working_dir} if cfg.working_dir else None
            try:
                client.submit_job(entrypoint=shlex.join(cfg.entrypoint), submission_id=sid, runtime_env=runtime_env,
                                  metadata={"night": night, "attempt": str(attempt)})
                print(f"submitted {sid}", file=out, flush=True)
            except RuntimeError as exc:
                if _info(client, sid) is None:
                    raise
                print(f"{sid} was submitted by another invocation ({exc}); following it", file=out, flush=True)
            return follow(client, sid, cfg, out)
        status = _status(info)
        if status == "SUCCEEDED":
            print(f"{sid} already succeeded: nothing to do for {night}", file=out, flush=True)
            return SUCCEEDED
        if status not in _FINAL:
            print(f"{sid} is {status.lower()}: following it (no second job for {night})", file=out, flush=True)
            return follow(client, sid, cfg, out)
        print(f"{sid} ended {status}: {info.message or ''}".rstrip(), file=out, flush=True)
    print(f"{cfg.max_attempts} attempt(s) for {night} ended without success; not submitting another "
          "(raise --max-attempts, or use another --night)", file=out, flush=True)
    return FAILED


def follow(client, sid: str, cfg: NightlyConfig, out) -> int:
    """Stream the job's logs until the stream ends or the deadline, then wait for a final
    status; stop the job at its deadline."""
    info = client.get_job_info(sid)
    started = (info.start_time or time.time() * 1000) / 1000.0
    deadline = started + cfg.deadline_hours * 3600

    async def stream():
        async for lines in client.tail_job_logs(sid):
            out.write(lines)
            out.flush()

    remaining = deadline - time.time()
    if remaining > 0:
        try:
            asyncio.run(asyncio.wait_for(stream(), timeout=remaining))
        except asyncio.TimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001 - a dropped log stream is not the job's result
            print(f"\nlog stream of {sid} ended early ({type(exc).__name__}: {exc}); polling its status", file=out, flush=True)
    while True:
        status = _status(client.get_job_info(sid))
        if status in _FINAL:
            break
        if time.time() >= deadline:
            print(f"{sid} still {status.lower()} {cfg.deadline_hours:g} h after its start: stopping it", file=out, flush=True)
            client.stop_job(sid)
            _wait_final(client, sid, cfg.poll_seconds)
            return DEADLINE
        time.sleep(min(cfg.poll_seconds, max(0.1, deadline - time.time())))
    info = client.get_job_info(sid)
    print(f"{sid} {status}" + (f": {info.message}" if info.message and status != "SUCCEEDED" else ""), file=out, flush=True)
    return SUCCEEDED if status == "SUCCEEDED" else FAILED


def _wait_final(client, sid: str, poll: float, limit_s: float = 120) -> None:
    end = time.time() + limit_s
    while time.time() < end and _status(client.get_job_info(sid)) not in _FINAL:
        time.sleep(min(poll, 2.0))
