"""The online store behind Sentinel (FP_REDIS_SENTINEL_MASTER): every Redis client of the platform
finds the master through Sentinels that require the password, and follows it across a failover
without being rebuilt: materialization (Feast's sync client, the write script), the feature
server's reads (Feast's async client) and the online store check (redis-py from the settings)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import redis

from core import redis_client
from features import online
from features.resources import Resources
from helpers import cli_env, ingest_exports, isolated, run_cli, sentinel_topology
from monitoring import health

pytestmark = pytest.mark.integration


def _failover(topology) -> int:
    """Promote the replica (SENTINEL FAILOVER) and wait until the Sentinels report it and the old
    master follows it. Returns the new master's port."""
    old = topology.master_port()
    topology.client(topology.sentinels[0]).execute_command("SENTINEL", "FAILOVER", "feast")
    deadline = time.monotonic() + 30
    while True:
        try:
            new = topology.master_port()
            if new != old and topology.client(old).info("replication")["role"] == "slave":
                return new
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "no failover within 30 s"
        time.sleep(0.2)


def test_every_client_follows_the_master_across_a_failover(stack, exports, tmp_path):
    with sentinel_topology(tmp_path / "redis") as topology:
        settings = replace(isolated(stack, tmp_path, "sentinel"), redis_sentinel_master="feast",
                           redis_url=f"redis://:{topology.password}@127.0.0.1:{topology.sentinels[0]}/0")
        ingest_exports(settings, exports[-2:])
        assert run_cli("features", "apply", env=cli_env(settings)).returncode == 0
        loaded = run_cli("features", "materialize-incremental", env=cli_env(settings))
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        first = topology.master_port()
        assert first == topology.master and topology.client(first).dbsize() > 0  # written on the master

        resources = Resources(settings)
        active = online.served_roster(settings).active_ids()[:5]
        before = online.online_vectors(resources, active)
        service = resources.store.get_feature_service(online.FEATURE_SERVICE)

        assert health.check(settings).healthy

        async def read():  # the feature server's client
            response = await resources.store.get_online_features_async(features=service,
                                                                       entity_rows={"employee_id": active})
            return response.to_dict()["tenure"]

        async def serve_through_a_failover():  # one event loop, as the feature server's
            first_read = await read()
            promoted = await asyncio.to_thread(_failover, topology)
            return first_read, promoted, await read()
        tenure, promoted, tenure_after = asyncio.run(serve_through_a_failover())
        assert None not in tenure and tenure_after == tenure
        assert promoted == topology.replica

        # the same clients, not rebuilt: reads answer as before, writes land on the new master
        assert online.online_vectors(resources, active) == before
        resources.redis.set("after-failover", b"1")
        assert topology.client(promoted).get("after-failover") == b"1"
        assert health.check(settings).healthy
        again = run_cli("features", "materialize", "2000-01-01", "2100-01-01", env=cli_env(settings))
        assert again.returncode == 0, again.stderr[-2000:]


def test_sentinels_require_the_password_the_servers_do(tmp_path):
    """The Sentinels are asked with the servers' password: without it they refuse."""
    with sentinel_topology(tmp_path / "redis") as topology:
        sentinel = [("127.0.0.1", topology.sentinels[0])]
        client = redis_client.sentinel_master(sentinel, "feast", {"password": topology.password, "socket_timeout": 5})
        assert client.ping() and client.connection_pool.get_master_address()[1] == topology.master
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=topology.sentinels[0]).ping()
