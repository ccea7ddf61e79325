"""The local stack: idempotent start, a Redis-compatible server only where none answers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

import devstack
from conftest import free_port

pytestmark = pytest.mark.integration


def test_up_is_idempotent_and_leaves_an_existing_redis_alone(stack):
    again, statuses = devstack.up(stack)
    by_name = {s.name: s for s in statuses}
    assert all(s.healthy for s in statuses)
    assert by_name["s3"].url == stack.s3_endpoint_url
    assert again.aws_access_key_id == stack.aws_access_key_id, "credentials are generated once"
    assert by_name["redis"].managed == (devstack._running_pid(stack, "redis") is not None)


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


def test_unreachable_remote_redis_is_a_clear_error(stack):
    remote = replace(stack, redis_url="redis://redis.invalid:6379/0")
    with pytest.raises(devstack.StackError, match="Redis at redis.invalid:6379/0 does not answer"):
        devstack.up_redis(remote)
