"""core.lease against the real S3 API: one holder, expiry and takeover, a lost lease noticed."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone

import pytest

from core import s3
from core.lease import Busy, Lease, LeaseLost

pytestmark = pytest.mark.integration


def _key(name: str) -> str:
    return f"locks/test/{name}-{os.urandom(4).hex()}"


def _plant(stack, key: str, host: str, pid: int, expires: datetime) -> None:
    s3.client(stack).put_object(Bucket=stack.s3_bucket, Key=key, Body=json.dumps({
        "what": "an earlier run", "host": host, "pid": pid, "renewed": expires.isoformat(),
        "expires": expires.isoformat()}).encode())


def test_one_holder_at_a_time_and_released_after(stack):
    key = _key("one")
    with Lease(stack, key, "first"):
        with pytest.raises(Busy, match="another run holds .* first by pid"):
            Lease(stack, key, "second").acquire()
    assert not s3.exists(stack, key), "released on exit"
    with Lease(stack, key, "second"):
        assert s3.exists(stack, key)


def test_an_expired_lease_is_taken_over_a_live_one_is_not(stack):
    key = _key("expiry")
    now = datetime.now(timezone.utc)
    _plant(stack, key, "another-host", 1, now + timedelta(minutes=5))
    with pytest.raises(Busy, match="expires in"):
        Lease(stack, key, "waiting").acquire()
    _plant(stack, key, "another-host", 1, now - timedelta(seconds=1))
    with Lease(stack, key, "after expiry") as lease:
        assert json.loads(s3.get_bytes(stack, key))["what"] == "after expiry"
        lease.check()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(stack):
    key = _key("dead")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _plant(stack, key, socket.gethostname(), dead, datetime.now(timezone.utc) + timedelta(minutes=5))
    with Lease(stack, key, "re-run"):
        assert json.loads(s3.get_bytes(stack, key))["pid"] == os.getpid()


def test_a_lease_taken_over_meanwhile_is_noticed_before_the_step_that_must_happen_once(stack):
    key = _key("lost")
    lease = Lease(stack, key, "slow run").acquire()
    try:
        _plant(stack, key, "another-host", 1, datetime.now(timezone.utc) + timedelta(minutes=5))
        with pytest.raises(LeaseLost, match="taken over by another run"):
            lease.check()
    finally:
        lease.release()
    assert json.loads(s3.get_bytes(stack, key))["host"] == "another-host", "never deletes another run's lease"


def test_a_lease_spanning_processes_waits_for_its_holder_and_no_one_else(stack):
    """The nightly DAG's ingest tasks: one process takes the lease and suspends it at its end; the
    next process of the same holder resumes it, anyone else is refused although the process that
    last renewed it is gone (a spanning lease ends by expiry or release, not by pid)."""
    key = _key("span")
    first = os.fork()
    if first == 0:
        Lease(stack, key, "keep_raw of run 1", seconds=60, holder="run-1").acquire().suspend()
        os._exit(0)
    os.waitpid(first, 0)
    assert json.loads(s3.get_bytes(stack, key))["holder"] == "run-1"
    with pytest.raises(Busy, match="keep_raw of run 1"):
        Lease(stack, key, "an ingest of the same date").acquire()
    with pytest.raises(Busy):
        Lease(stack, key, "another run", holder="run-2").acquire()
    resumed = Lease(stack, key, "publish of run 1", seconds=60, holder="run-1").acquire()
    resumed.check()
    assert json.loads(s3.get_bytes(stack, key))["pid"] == os.getpid()
    resumed.release()
    assert not s3.exists(stack, key)


def test_a_suspended_lease_expires_when_its_holder_never_comes_back(stack):
    key = _key("span-expiry")
    Lease(stack, key, "a run that died between tasks", seconds=1, holder="run-1").acquire().suspend()
    with pytest.raises(Busy):
        Lease(stack, key, "too early").acquire()
    import time

    time.sleep(1.2)
    with Lease(stack, key, "after expiry"):
        assert json.loads(s3.get_bytes(stack, key))["what"] == "after expiry"
