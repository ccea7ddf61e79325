"""The local stack: idempotent start, a Redis-compatible server only where none answers."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlparse

import pytest
import redis

import devstack
from helpers import free_port
from core import s3

pytestmark = pytest.mark.integration


def test_up_is_idempotent(stack):
    """A second `up` restarts nothing and loses nothing: the same S3 server process, its data, the
    same credentials, and every service it reports answers where it says."""
    s3_pid = devstack._running_pid(stack, "s3")
    assert s3_pid is not None, "the session's stack started its S3 server"
    s3.put_bytes(stack, "probe/before-second-up", b"kept")
    again, statuses = devstack.up(stack)
    by_name = {s.name: s for s in statuses}
    assert devstack._running_pid(stack, "s3") == s3_pid, "the running S3 server was not restarted"
    assert again.aws_access_key_id == stack.aws_access_key_id, "credentials are generated once"
    assert by_name["s3"].url == stack.s3_endpoint_url
    assert s3.get_bytes(again, "probe/before-second-up") == b"kept"
    assert redis.Redis.from_url(stack.redis_url).ping()
    assert sorted(by_name) == ["redis", "registry", "s3"]


def test_an_existing_redis_is_used_and_left_alone(stack, tmp_path):
    """A Redis that already answers is reported as external and survives `up` and `down` untouched."""
    from helpers import dedicated_valkey

    with dedicated_valkey(tmp_path) as (port, client):
        client.set("probe", "theirs")
        run_id = client.info("server")["run_id"]
        own = replace(stack, local_dir=tmp_path / "stack", redis_url=f"redis://127.0.0.1:{port}/0")
        status = devstack.up_redis(own)
        assert status.healthy and not status.managed and status.detail == "already running"
        assert devstack.down(own) == [], "down stops only what the stack started"
        assert client.info("server")["run_id"] == run_id and client.get("probe") == b"theirs"


def test_valkey_is_started_where_no_redis_answers_and_stopped_by_down(stack, tmp_path):
    port = free_port()
    own = replace(stack, local_dir=tmp_path / "stack", redis_url=f"redis://127.0.0.1:{port}/0")
    status = devstack.up_redis(own)
    try:
        assert status.managed and "valkey-server" in status.detail
        client = redis.Redis(port=port)
        assert client.info("server")["tcp_port"] == port
        assert client.set("probe", "1") and client.get("probe") == b"1"
    finally:
        stopped = devstack.down(own)
    assert stopped and stopped[0].startswith("redis")
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()


def test_a_second_stack_runs_beside_the_first_on_its_own_ports(stack, tmp_path):
    """Two checkouts side by side: a second embedded S3 on another port starts while the session's
    runs (weed mini's internal servers follow the S3 port), serves its own bucket, and stops."""
    # 10000 above the first: where weed's gRPC ports would land if they followed their defaults.
    port = urlparse(stack.s3_endpoint_url).port + 10000
    second = replace(stack, local_dir=tmp_path / "second", s3_endpoint_url=f"http://127.0.0.1:{port}",
                     aws_access_key_id=None, aws_secret_access_key=None, s3_bucket="second-stack")
    second, status = devstack.up_s3(second)
    try:
        assert status.healthy and status.managed and status.url == second.s3_endpoint_url
        s3.put_bytes(second, "probe/second", b"second")
        s3.put_bytes(stack, "probe/first", b"first")
        assert s3.get_bytes(second, "probe/second") == b"second"
        assert s3.get_bytes(stack, "probe/first") == b"first", "the first stack still serves"
    finally:
        stopped = devstack.down(second)
    assert any(name.startswith("s3") for name in stopped)


def test_status_lists_every_service(stack):
    from helpers import run_cli

    proc = run_cli("devstack", "status")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for service, where in (("s3", stack.s3_endpoint_url), ("redis", stack.redis_location), ("registry", "sqlite")):
        assert any(line.split()[:2] == [service, "ok"] and where in line for line in proc.stdout.splitlines()), \
            proc.stdout


def test_unreachable_remote_redis_is_a_clear_error(stack):
    remote = replace(stack, redis_url="redis://redis.invalid:6379/0")
    with pytest.raises(devstack.StackError, match="Redis at redis.invalid:6379/0 does not answer"):
        devstack.up_redis(remote)
