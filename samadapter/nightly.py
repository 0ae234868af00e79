"""A scheduled Ray job, run at most once per night: what cron and the CronJob call.

``ray job submit`` from a scheduler is unsafe several ways: a retried or overlapping
invocation starts a second job for the same night, the command exits 0 when its log
stream ends early (a dropped connection) whatever the job did, nothing bounds the run
time, and a stopped job's GPU request outlives it. Here a night's attempts have fixed
submission ids, ``<prefix>-<night>-a<k>``, and one invocation sees the night through:

- no attempt yet: submit attempt 1 and follow it;
- the latest attempt is pending or running (a retried scheduler pod, a second cron
  invocation): follow it, never submit another;
- it succeeded: exit 0 at once;
- it failed: submit the next attempt in the same invocation, up to ``max_attempts`` (a
  rerun of the segment job redoes only what the ledger does not record as done);
- it was stopped (at the deadline, or by an operator's ``ray job stop``): not retried
  tonight.

The deadline counts from the night's first attempt, whichever invocation looks: an
attempt still running then is stopped, and no attempt is submitted after it. Following
means streaming the job's logs, then polling its status until it is final; a job API
that does not answer is retried, with a line a minute, for ``api_grace_minutes``. After a
stop the cluster's resource request is cleared by a one-line Ray job
(``python -m samadapter.segment.resources release``): a request lasts until the next one,
and would keep tonight's GPU nodes up until tomorrow.

Exit statuses (``EXIT_STATUSES``) are the night's, never the log stream's; a non-zero one
is also sent to ``notify`` (``notify.py``) when one is configured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from .config import ConfigError, option

log = logging.getLogger(__name__)

SUCCEEDED, FAILED, USAGE, DEADLINE, STOPPED, UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_STATUSES = {
    SUCCEEDED: "tonight's attempt succeeded (or already had)",
    FAILED: "every attempt failed (--max-attempts used up)",
    USAGE: "usage error",
    DEADLINE: "stopped at --deadline-hours after the night's first attempt started (not retried tonight)",
    STOPPED: "stopped by someone else (ray job stop): not retried tonight",
    UNREACHABLE: "the job API did not answer for --api-grace-minutes: the job's fate is unknown "
                 "(the only status a Kubernetes pod retry is for)",
}
_FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class NightlyConfig:
    """What one night of a job is: where it is submitted, the command, deadline and attempts."""

    address: str = option(help="the Ray dashboard / job API (default $RAY_ADDRESS or http://127.0.0.1:8265)",
                          factory=lambda: os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"))
    entrypoint: List[str] = option(help="the job's command (after --)", factory=list)
    night: Optional[str] = option(None, "YYYY-MM-DD the run belongs to (default: today, UTC)")
    prefix: str = option("samadapter-nightly", "submission id prefix")
    deadline_hours: float = option(6.0, "stop an attempt still running this long after the night's first attempt "
                                        "started")
    max_attempts: int = option(2, "attempts per night, counting failed ones")
    poll_seconds: float = option(10.0, "status poll interval")
    api_grace_minutes: float = option(10.0, "keep retrying a job API that does not answer this long, then exit 5")
    working_dir: Optional[str] = option(None, "upload this directory as the job's working_dir (default: none, the "
                                              "image holds the project)")
    notify: Optional[str] = option(help="where a night that did not succeed is reported: an SNS topic ARN "
                                        "(arn:aws:sns:...) or a webhook URL receiving a JSON POST (default "
                                        "$SAMADAPTER_NOTIFY; unset: nothing is sent)",
                                   factory=lambda: os.environ.get("SAMADAPTER_NOTIFY") or None)

    def __post_init__(self) -> None:
        if not self.entrypoint:
            raise ConfigError("give the job's command after --, e.g. -- python jobs/segment.py --input ...")
        if self.deadline_hours <= 0 or self.max_attempts < 1 or self.poll_seconds <= 0 or self.api_grace_minutes <= 0:
            raise ConfigError("--deadline-hours, --poll-seconds and --api-grace-minutes must be > 0, --max-attempts >= 1")
        if self.night is not None:
            try:
                dt.date.fromisoformat(self.night)
            except ValueError as exc:
                raise ConfigError(f"--night {self.night!r}: {exc}") from None
        if self.notify:
            from .notify import check_target

            check_target(self.notify)


class Unreachable(RuntimeError):
    """The job API did not answer for the grace period."""


def night_of(now: Optional[dt.datetime] = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d")


def submission_id(prefix: str, night: str, attempt: int) -> str:
    return f"{prefix}-{night}-a{attempt}"


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


class _Api:
    """The job client's calls, retried while the API does not answer (a head restarting, a
    dropped port-forward, a network blip): a line a minute, ``Unreachable`` after the grace."""

    def __init__(self, client, cfg: NightlyConfig, out):
        self.client, self.cfg, self.out = client, cfg, out

    def call(self, what: str, fn, *args, **kwargs):
        give_up = time.monotonic() + self.cfg.api_grace_minutes * 60
        last_line = 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the API is retried
                if _not_found(exc):
                    raise
                now = time.monotonic()
                if now > give_up:
                    raise Unreachable(f"the job API at {self.cfg.address} did not answer {what} for "
                                      f"{self.cfg.api_grace_minutes:g} min ({type(exc).__name__}: {exc})") from exc
                if now - last_line > 60:
                    _say(self.out, f"job API did not answer {what} ({type(exc).__name__}: {exc}); retrying")
                    last_line = now
                time.sleep(min(self.cfg.poll_seconds, 5.0))

    def info(self, sid: str):
        """The job's details, or None when no job has this submission id."""
        try:
            return self.call(f"get_job_info({sid})", self.client.get_job_info, sid)
        except Exception as exc:  # noqa: BLE001
            if _not_found(exc):
                return None
            raise


def _not_found(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("does not exist" in text or "404" in text or "not found" in text.lower())


def _say(out, line: str) -> None:
    print(line, file=out, flush=True)


def run_nightly(cfg: NightlyConfig, client=None, out=None) -> int:
    """See the night through; returns its exit status (``EXIT_STATUSES``) and sends a
    non-zero one to ``cfg.notify``."""
    out = out or sys.stdout
    night = cfg.night or night_of()
    try:
        if client is None:
            from ray.job_submission import JobSubmissionClient

            client = _Api(None, cfg, out).call("the first connection", JobSubmissionClient, cfg.address)
        code, detail = _run(cfg, _Api(client, cfg, out), night, out)
    except Unreachable as exc:
        code, detail = UNREACHABLE, str(exc)
        _say(out, f"error: {exc}")
    if code != SUCCEEDED and cfg.notify:
        from .notify import send

        send(cfg.notify, night=night, prefix=cfg.prefix, code=code, meaning=EXIT_STATUSES[code], detail=detail, out=out)
    return code


def _run(cfg: NightlyConfig, api: _Api, night: str, out):
    first_start = None  # the night's first attempt's start: its deadline counts from here
    for attempt in range(1, cfg.max_attempts + 1):
        sid = submission_id(cfg.prefix, night, attempt)
        info = api.info(sid)
        submitted = info is None
        if submitted:
            if first_start is not None and time.time() >= first_start + cfg.deadline_hours * 3600:
                _say(out, f"the night's deadline ({cfg.deadline_hours:g} h after its first attempt) has passed: "
                          f"not submitting {sid}")
                return DEADLINE, "the deadline passed before another attempt"
            runtime_env = {"working_dir": cfg.working_dir} if cfg.working_dir else None
            try:
                api.call(f"submit_job({sid})", api.client.submit_job, entrypoint=shlex.join(cfg.entrypoint),
                         submission_id=sid, runtime_env=runtime_env, metadata={"night": night, "attempt": str(attempt)})
                _say(out, f"submitted {sid}")
            except RuntimeError as exc:
                if isinstance(exc, Unreachable) or api.info(sid) is None:
                    raise
                _say(out, f"{sid} was submitted by another invocation ({exc}); following it")
            info = api.info(sid)
        first_start = first_start or (info.start_time or time.time() * 1000) / 1000.0
        status = _status(info)
        if status == "SUCCEEDED" and not submitted:
            _say(out, f"{sid} already succeeded: nothing to do for {night}")
            return SUCCEEDED, ""
        if status not in _FINAL:
            if not submitted:
                _say(out, f"{sid} is {status.lower()}: following it (no second job for {night})")
            status = follow(api, sid, cfg, first_start + cfg.deadline_hours * 3600, out)
            if status == "DEADLINE":
                _release_gpus(api, cfg, sid, out)
                return DEADLINE, f"{sid} stopped at the deadline"
        if status == "SUCCEEDED":
            _say(out, f"{sid} SUCCEEDED")
            return SUCCEEDED, ""
        detail = _final_message(api, sid)
        _say(out, f"{sid} ended {status}" + (f": {detail}" if detail else ""))
        if status == "STOPPED":
            _say(out, f"{sid} was stopped: no further attempt tonight (to run the night again, pass another "
                      "--prefix or --night)")
            _release_gpus(api, cfg, sid, out)
            return STOPPED, f"{sid} stopped: {detail}"
    _say(out, f"{cfg.max_attempts} attempt(s) for {night} ended without success; not submitting another "
              "(raise --max-attempts, or use another --night)")
    return FAILED, f"{cfg.max_attempts} attempt(s) failed"


def _final_message(api: _Api, sid: str) -> str:
    info = api.info(sid)
    return (getattr(info, "message", None) or "") if info is not None else ""


def follow(api: _Api, sid: str, cfg: NightlyConfig, deadline: float, out) -> str:
    """Stream the job's logs until the stream ends or the deadline, then wait for a final
    status; stop the job at ``deadline`` (returns ``"DEADLINE"`` then)."""

    async def stream():
        async for lines in api.client.tail_job_logs(sid):
            out.write(lines)
            out.flush()

    remaining = deadline - time.time()
    if remaining > 0:
        try:
            asyncio.run(asyncio.wait_for(stream(), timeout=remaining))
        except asyncio.TimeoutError:
            pass
        except Exception as exc:  # noqa: BLE001 - a dropped log stream is not the job's result
            _say(out, f"\nlog stream of {sid} ended early ({type(exc).__name__}: {exc}); polling its status")
    while True:
        status = _status(api.call(f"get_job_info({sid})", api.client.get_job_info, sid))
        if status in _FINAL:
            return status
        if time.time() >= deadline:
            _say(out, f"{sid} still {status.lower()} {cfg.deadline_hours:g} h after the night's first attempt "
                      "started: stopping it")
            api.call(f"stop_job({sid})", api.client.stop_job, sid)
            _wait_final(api, sid, cfg.poll_seconds)
            return "DEADLINE"
        time.sleep(min(cfg.poll_seconds, max(0.1, deadline - time.time())))


def _wait_final(api: _Api, sid: str, poll: float, limit_s: float = 120) -> None:
    end = time.time() + limit_s
    while time.time() < end and _status(api.call(f"get_job_info({sid})", api.client.get_job_info, sid)) not in _FINAL:
        time.sleep(min(poll, 2.0))


def _release_gpus(api: _Api, cfg: NightlyConfig, sid: str, out, limit_s: float = 300) -> None:
    """After a stop: a short Ray job on the cluster clears its resource request. The stopped
    driver releases it itself on SIGTERM; this covers a driver that was killed outright."""
    release = f"{sid}-release"
    runtime_env = {"working_dir": cfg.working_dir} if cfg.working_dir else None
    try:
        if api.info(release) is None:
            api.call(f"submit_job({release})", api.client.submit_job, submission_id=release, runtime_env=runtime_env,
                     entrypoint="python -m samadapter.segment.resources release")
        end = time.time() + limit_s
        status = ""
        while time.time() < end:
            status = _status(api.call(f"get_job_info({release})", api.client.get_job_info, release))
            if status in _FINAL:
                break
            time.sleep(min(cfg.poll_seconds, 2.0))
        _say(out, f"cleared the cluster's resource request ({release} {status.lower()})" if status == "SUCCEEDED"
             else f"warning: {release} did not succeed ({status.lower() or 'no status'}): GPU nodes stay up until "
                  "their idle timeout after the next request")
    except Exception as exc:  # noqa: BLE001 - the night's status stands whatever this does
        _say(out, f"warning: could not clear the cluster's resource request ({type(exc).__name__}: {exc})")
