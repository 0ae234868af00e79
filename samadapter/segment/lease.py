"""One night at a time per output: a lease object that the running driver holds.

``<output>/_lease.json`` (``layout.lease``) names its holder (run id, host, pid, since).
It is taken with a conditional write that only one contender can win (S3: ``PutObject``
with ``If-None-Match: *``; locally: a hard link to the lease's name, which fails if it exists), renewed by the driver every
third of the timeout (S3: ``If-Match`` on the ETag it holds; locally: its modification
time), and released at the end. A lease whose object was not renewed for
``timeout_s`` (the holder was killed) is taken over, again by a conditional write that only
one contender wins (S3: ``If-Match`` on the stale ETag; locally: renaming the stale file
away, then the exclusive create). A second run finds the lease held and stops with one line
naming the holder, or waits for it (``wait``).

The renewal time is the object's own (S3's ``LastModified``, the file's mtime), so
holders need not trust each other's clocks. This is the only lock the ledger needs: one
driver writes a night's ledger files, every file under a new name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from .. import storage
from . import layout

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease; the message names it."""


@dataclass
class _Seen:
    holder: dict
    age_s: float
    etag: str  # S3 only


def _describe(holder: dict, age_s: float) -> str:
    return (f"run {holder.get('run_id', '?')} on {holder.get('host', '?')} (pid {holder.get('pid', '?')}), "
            f"since {holder.get('since', '?')}, renewed {age_s:.0f} s ago")


class Lease:
    """``with Lease(output, run_id, timeout_s):`` holds the output's lease for the block."""

    def __init__(self, output: str, run_id: str, timeout_s: float, wait: bool = False, poll_s: Optional[float] = None):
        self.uri = layout.lease(output)
        self.run_id, self.timeout_s, self.wait = run_id, timeout_s, wait
        self.poll_s = poll_s if poll_s is not None else min(10.0, timeout_s / 3)
        self.body = json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        self.s3 = storage.scheme(self.uri) in ("s3", "s3a")
        self.etag = ""
        self.lost: Optional[str] = None  # why the lease was lost while held, else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ the object
    def _bucket_key(self):
        bucket, _, key = self.uri.split("://", 1)[1].partition("/")
        return bucket, key

    def _create(self) -> bool:
        """The exclusive create: True when this run now holds the lease."""
        if self.s3:
            bucket, key = self._bucket_key()
            try:
                self.etag = storage.s3_client().put_object(Bucket=bucket, Key=key, Body=self.body, IfNoneMatch="*")["ETag"]
                return True
            except Exception as exc:  # noqa: BLE001
                if _precondition_failed(exc):
                    return False
                raise
        # Locally: the whole body in a file of our own, then a hard link to the lease's name,
        # which fails if the name exists: no contender ever sees a half-written lease.
        path = storage.local_path(self.uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mine = f"{path}.{uuid.uuid4().hex[:8]}.new"
        with open(mine, "wb") as f:
            f.write(self.body)
        try:
            os.link(mine, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(mine)

    def _read(self) -> Optional[_Seen]:
        if self.s3:
            bucket, key = self._bucket_key()
            try:
                got = storage.s3_client().get_object(Bucket=bucket, Key=key)
            except Exception as exc:  # noqa: BLE001
                if "NoSuchKey" in str(exc) or "404" in str(exc):
                    return None
                raise
            age = time.time() - got["LastModified"].timestamp()
            return _Seen(_holder(got["Body"].read()), age, got["ETag"])
        path = storage.local_path(self.uri)
        try:
            with open(path, "rb") as f:
                data = f.read()
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        return _Seen(_holder(data), age, "")

    def _take_over(self, seen: _Seen) -> bool:
        """Replace a stale lease; only one contender's conditional step succeeds."""
        if self.s3:
            bucket, key = self._bucket_key()
            try:
                self.etag = storage.s3_client().put_object(Bucket=bucket, Key=key, Body=self.body, IfMatch=seen.etag)["ETag"]
                return True
            except Exception as exc:  # noqa: BLE001
                if _precondition_failed(exc) or "NoSuchKey" in str(exc):
                    return False
                raise
        path = storage.local_path(self.uri)
        try:
            os.rename(path, f"{path}.stale-{uuid.uuid4().hex[:8]}")
        except FileNotFoundError:
            return False  # another contender moved it first
        return self._create()

    # ------------------------------------------------------------------ holding it
    def acquire(self) -> None:
        waited = False
        while True:
            if self._create():
                break
            seen = self._read()
            if seen is None:
                continue  # released between our create and our read: try again
            if seen.age_s > self.timeout_s:
                log.warning("taking over the lease of %s: %s (not renewed for over %.0f s)", self.uri,
                            _describe(seen.holder, seen.age_s), self.timeout_s)
                if self._take_over(seen):
                    break
                continue
            if not self.wait:
                raise LeaseHeld(f"another run holds {self.uri}: {_describe(seen.holder, seen.age_s)}; pass "
                                "--wait-for-lease to wait for it, or wait --lease-timeout-minutes after it stopped")
            if not waited:
                log.info("waiting for the lease %s: %s", self.uri, _describe(seen.holder, seen.age_s))
                waited = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        if self.s3:
            bucket, key = self._bucket_key()
            try:
                self.etag = storage.s3_client().put_object(Bucket=bucket, Key=key, Body=self.body, IfMatch=self.etag)["ETag"]
            except Exception as exc:  # noqa: BLE001
                if _precondition_failed(exc) or "NoSuchKey" in str(exc):
                    self.lost = f"the lease {self.uri} was taken over"
                    return
                raise
            return
        seen = self._read()
        if seen is None or seen.holder.get("run_id") != self.run_id:
            self.lost = f"the lease {self.uri} was taken over" + (f" by {_describe(seen.holder, seen.age_s)}" if seen else "")
            return
        os.utime(storage.local_path(self.uri))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timeout_s / 3):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next tick
                log.warning("could not renew the lease %s: %s", self.uri, exc)
            if self.lost:
                log.error("%s: this run no longer owns the output", self.lost)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lost:
            return
        seen = self._read()
        if seen is None or seen.holder.get("run_id") != self.run_id:
            return
        if self.s3:
            bucket, key = self._bucket_key()
            storage.s3_client().delete_object(Bucket=bucket, Key=key)
        else:
            try:
                os.remove(storage.local_path(self.uri))
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        return {"run_id": "(unreadable lease)"}


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict")
