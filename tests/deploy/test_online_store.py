"""The online store as deploy/k8s/online-store.yaml runs it (helpers.OnlineStore: its three pods'
commands, environment, configuration, node.sh and Secrets, on this machine's TLS-capable Redis
binaries): the start, a failover and the failed pod's return, a full stop, the handover before a
primary stops, what it refuses, and its probes. Failovers take the manifest's own timings (the
Sentinels wait 5 s before they call a primary down)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from core import redis_client
from core import settings as settings_mod
from helpers import deployed_online_store, make_pki, redis_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):
    try:
        redis_binary("redis-server"), redis_binary("redis-cli")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with deployed_online_store(tmp_path / "store") as store:
        yield store


def _promoted(store, candidates):
    """The pod the running Sentinels agree on once they have promoted one of ``candidates``."""
    reported = {store.reported_primary(i) for i in candidates}
    return next(iter(reported)) if len(reported) == 1 and reported <= set(candidates) else None


def test_first_start_one_primary_two_replicas_reached_as_the_platform_does(store, tmp_path):
    store.start()
    store.wait(lambda: store.settled(0), 60, "pod 0 primary, pods 1 and 2 its replicas")
    assert "as primary (from: first-start)" in store.log(0, "valkey")
    assert "as replica of localhost:" in store.log(1, "valkey")

    # The platform's client, configured as the README says: a Sentinel's URL and the set's name.
    settings = replace(settings_mod.load(), redis_url=store.sentinel_url(1), redis_sentinel_master="feast")
    client = redis_client.connect(settings, socket_timeout=5)
    client.hset("feast:employee:1", mapping={"tenure": "4"})
    store.wait(lambda: store.client(2).hget("feast:employee:1", "tenure") == b"4", 10, "the write replicated")
    assert store.client(0).config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert store.client(0).config_get("appendonly") == {"appendonly": "yes"}

    # Probes, as the pod runs them, pass on every pod.
    for index in range(3):
        for container in ("valkey", "sentinel"):
            probe = store.containers[container]["readinessProbe"]["exec"]["command"]
            ran = store.run(index, probe)
            assert ran.returncode == 0, (container, ran.stdout, ran.stderr)


@pytest.mark.parametrize("port", [6379, 26379], ids=["server", "sentinel"])
def test_refuses_plaintext_no_password_and_another_ca(store, tmp_path, port):
    store.start()
    store.wait(lambda: store.settled(0), 60, "the store up")
    with pytest.raises(redis.ConnectionError):
        store.client(1, port, ssl=False).ping()
    with pytest.raises(redis.AuthenticationError):
        store.client(1, port, password="guess").ping()
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        store.client(1, port, password=None).ping()
    other = make_pki(tmp_path / "other", [store.host]) / "ca.crt"
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        store.client(1, port, ssl_ca_certs=str(other)).ping()
    assert store.client(1, port).ping()


def test_a_failed_primary_is_replaced_and_comes_back_as_a_replica(store):
    store.start()
    store.wait(lambda: store.settled(0), 60, "the store up")
    store.client(0).set("before", "1")
    store.wait(lambda: all(store.client(i).get("before") for i in (1, 2)), 10, "replicated")

    store.stop(0, kill=True)  # the pod's node is lost: server and Sentinel at once
    promoted = store.wait(lambda: _promoted(store, [1, 2]), 60, "a replica promoted")
    store.wait(lambda: store.settled(promoted, [1, 2]), 60, "the other replica follows it")
    store.client(promoted).set("during", "2")

    store.start(0)
    store.wait(lambda: store.settled(promoted), 60, "pod 0 back as a replica")
    assert f"as replica of localhost:{store.nodes[promoted].ports[6379]} (from: live)" in store.log(0, "valkey")
    assert store.client(0).get("during") == b"2" and store.client(0).get("before") == b"1"


def test_after_a_full_stop_a_pod_that_was_away_does_not_bring_back_old_data(store):
    store.start()
    store.wait(lambda: store.settled(0), 60, "the store up")
    store.stop(0, kill=True)
    promoted = store.wait(lambda: _promoted(store, [1, 2]), 60, "a replica promoted")
    store.wait(lambda: store.settled(promoted, [1, 2]), 60, "the other replica follows it")
    store.client(promoted).set("latest", "yes")
    store.wait(lambda: all(store.client(i).get("latest") for i in (1, 2)), 10, "replicated")
    store.stop(1, 2)  # then everything stops; pod 0's state still names itself, at an older epoch

    # Pod 0 first: its Sentinel answers with its old primary (itself) before the others start.
    store.start(0)
    store.wait(lambda: store.reported_primary(0) == 0, 30, "pod 0's Sentinel answering")
    store.start(1, 2)
    store.wait(lambda: store.settled(promoted), 90, "the latest primary kept")
    assert store.client(0).get("latest") == b"yes"


def test_handover_moves_the_primary_before_it_stops(store):
    store.start()
    store.wait(lambda: store.settled(0), 60, "the store up")
    hook = store.containers["valkey"]["lifecycle"]["preStop"]["exec"]["command"]
    handed = store.run(0, hook)
    assert handed.returncode == 0 and "handed the primary role over" in handed.stdout, handed.stdout + handed.stderr
    assert store.role(0)[0].startswith("slave")  # when the hook returns, writers have moved
    promoted = store.wait(lambda: _promoted(store, [1, 2]), 10, "the Sentinels name the new primary")
    store.wait(lambda: store.settled(promoted), 60, "pod 0 replicates it")
    # On a replica the hook does nothing.
    again = store.run(0, hook)
    assert again.returncode == 0 and again.stdout == ""
