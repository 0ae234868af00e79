"""One night at a time per output: the lease, locally and on S3 (moto's server on loopback)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from samadapter import storage
from samadapter.segment import layout
from samadapter.segment.lease import Lease, LeaseHeld


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_server")
    return f"s3://test-bucket/lease-{os.getpid()}-{time.monotonic_ns()}"


def _timeout(output):
    """Short lease timeouts for the tests: S3's LastModified, the renewal time there, has a
    resolution of one second."""
    return 2.5 if output.startswith("s3://") else 0.6


def test_of_many_contenders_exactly_one_holds_the_lease(output):
    results, barrier = {}, threading.Barrier(8)

    def contend(i):
        barrier.wait()
        lease = Lease(output, f"run-{i}", timeout_s=60)
        try:
            lease.acquire()
            results[i] = lease
        except LeaseHeld as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    holders = [r for r in results.values() if isinstance(r, Lease)]
    assert len(holders) == 1
    (holder,) = holders
    refused = [r for r in results.values() if isinstance(r, str)]
    assert len(refused) == 7 and all(holder.run_id in r and "since" in r for r in refused)  # names the holder
    holder.release()
    assert not storage.exists(layout.lease(output))
    with Lease(output, "next", timeout_s=60):  # released: the next night takes it
        assert json.loads(storage.read_bytes(layout.lease(output)))["run_id"] == "next"


def test_a_lease_not_renewed_is_taken_over_and_the_old_holder_learns_it(output):
    t = _timeout(output)
    old = Lease(output, "killed", timeout_s=t)
    old.acquire()
    old._stop.set()  # the holder stops renewing, as a killed driver does
    old._thread.join()
    with pytest.raises(LeaseHeld, match="killed"):
        Lease(output, "early", timeout_s=t).acquire()  # still fresh
    time.sleep(t + 1.1)
    new = Lease(output, "new", timeout_s=t)
    new.acquire()
    assert json.loads(storage.read_bytes(layout.lease(output)))["run_id"] == "new"
    old._renew()
    assert old.lost and "taken over" in old.lost
    old.release()  # releases nothing that is not its own
    assert json.loads(storage.read_bytes(layout.lease(output)))["run_id"] == "new"
    new.release()


def test_renewal_keeps_a_long_night_s_lease(output):
    t = _timeout(output)
    lease = Lease(output, "long", timeout_s=t)
    lease.acquire()
    time.sleep(2.2 * t)  # over twice the timeout, renewed every third of it
    with pytest.raises(LeaseHeld):
        Lease(output, "other", timeout_s=t).acquire()
    assert lease.lost is None
    lease.release()


def test_wait_for_lease_waits_for_the_holder(output):
    first = Lease(output, "first", timeout_s=60)
    first.acquire()
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with Lease(output, "second", timeout_s=60, wait=True, poll_s=0.1):
        assert time.monotonic() - started >= 0.45
