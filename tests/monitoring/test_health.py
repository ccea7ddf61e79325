"""Online store health checks against real servers: the machine's Redis, and a dedicated
valkey-server started on a free port with a small maxmemory and an evicting policy."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import redis

from helpers import cli_env, dedicated_valkey, free_port, ingest_exports, isolated, run_cli
from etl import layout
from features import online
from features import store as fs
from features.resources import Resources
from monitoring import health

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def materialized(stack, exports, tmp_path_factory):
    settings = isolated(stack, tmp_path_factory.mktemp("mon"), "mon")
    ingest_exports(settings, exports[-2:])
    resources = Resources(settings)
    fs.apply(resources)
    fs.materialize(resources, datetime.now(timezone.utc))
    return settings


def test_fresh_complete_store_is_healthy(materialized, tmp_path):
    metrics = tmp_path / "online_store.prom"
    proc = run_cli("monitoring", "health", "--json", "--metrics-file", str(metrics), env=cli_env(materialized))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] and report["active_missing"] == 0 and report["stale_active"] == 0
    assert report["entities_online"] == report["active_expected"] > 0
    assert set(report["age_seconds"]) == {"oldest", "median", "newest"}
    text = metrics.read_text()
    assert 'feature_store_online_healthy{feature_view="employee_features"' in text
    assert "feature_store_online_coverage_ratio" in text and "feature_store_online_evicted_keys" in text


def test_stale_values_fail_freshness(materialized):
    later = datetime.now(timezone.utc) + timedelta(days=90)
    report = health.check(materialized, now=later, save=False)
    assert not report.healthy
    assert report.stale_active == report.active_expected
    assert any(f"{report.stale_active} active employees are served values older" in p for p in report.problems)
    assert health.check(materialized, save=False).healthy, "at the real time the same data is fresh"


def test_materializing_an_older_partition_only_is_stale(stack, exports, tmp_path):
    settings = isolated(stack, tmp_path, "old")
    ingest_exports(settings, exports[-2:])
    resources = Resources(settings)
    fs.apply(resources)
    older_end = datetime(2026, 10, 1, tzinfo=timezone.utc)
    fs.materialize(resources, older_end, start=older_end - timedelta(days=5))
    report = health.check(settings, save=False)
    assert not report.healthy
    assert report.stale_active > 0 or report.active_missing > 0
    assert any("materialized until" in p for p in report.problems)


def test_deleted_keys_fail_coverage_naming_how_many(materialized):
    client = redis.Redis.from_url(materialized.redis_url)
    keys = list(health.scan_entities(client, materialized.feast_project).items())[:7]
    saved = {key: client.hgetall(key) for _, key in keys}
    client.delete(*[key for _, key in keys])
    try:
        report = health.check(materialized, save=False)
        assert not report.healthy and report.active_missing == 7
        unhealthy = run_cli("monitoring", "health", env=cli_env(materialized))
        assert unhealthy.returncode == 1 and "UNHEALTHY" in unhealthy.stdout, unhealthy.stdout[-2000:]
        assert any(p.startswith("7 of ") and "have no online features" in p for p in report.problems)
        # The tolerance decides: 7 missing is within 50% and beyond (7 - 1) of the active count.
        active = report.active_expected
        assert health.check(materialized, save=False, coverage_tolerance=0.5).healthy
        assert not health.check(materialized, save=False, coverage_tolerance=6 / active).healthy
        assert health.check(materialized, save=False, coverage_tolerance=7 / active).healthy
    finally:
        for key, mapping in saved.items():
            client.hset(key, mapping=mapping)


def test_a_leaver_still_served_is_reported(materialized):
    """An employee who left in the newest extraction but still has a hash online is counted and named."""
    client = redis.Redis.from_url(materialized.redis_url)
    latest = max(layout.list_partitions(materialized))
    leavers = set(layout.read_partition(materialized, latest, ["employee_id", "is_active"]).to_pandas()
                  .query("not is_active")["employee_id"].tolist())
    served = health.scan_entities(client, materialized.feast_project)
    assert leavers and not leavers & served.keys(), "materialization retired every leaver"
    leaver = min(leavers)
    key = online.redis_key(materialized.feast_project, leaver)
    client.hset(key, mapping=client.hgetall(next(iter(served.values()))))
    try:
        report = health.check(materialized, save=False)
        assert report.inactive_served == 1
        assert any("1 entities online are not active" in w for w in report.warnings), report.warnings
    finally:
        client.delete(key)
    assert health.check(materialized, save=False).inactive_served == 0


def fill(client, keys: int) -> None:
    """``keys`` values of 2 KB each: a few thousand overflow a 3 MB server, which must evict."""
    payload = b"x" * 2048
    for start in range(0, keys, 500):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, start + 500):
                pipe.set(f"filler:{i}", payload)
            pipe.execute()


@pytest.fixture
def evicting_server(tmp_path):
    with dedicated_valkey(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru") as server:
        yield server


def test_eviction_since_last_check_fails_naming_the_count(materialized, evicting_server):
    port, client = evicting_server
    settings = replace(materialized, redis_url=f"redis://127.0.0.1:{port}/0")
    first = health.check(settings, use_registry=False)
    assert first.evicted_since_last == 0 and first.maxmemory == 3 * 1024 * 1024
    assert not any("maxmemory is not set" in w for w in first.warnings)
    assert any("allkeys-lru can evict Feast keys" in w for w in first.warnings)
    fill(client, 4000)  # ~8 MB into a 3 MB server
    assert int(client.info("stats")["evicted_keys"]) > 0
    report = health.check(settings, use_registry=False)
    recorded = health.load_state(settings)["evicted_keys"]
    assert not report.healthy and report.evicted_since_last == recorded > 0
    assert any(f"Redis evicted {recorded} keys since the previous check" in p for p in report.problems)
    again = health.check(settings, use_registry=False)
    # The baseline is the previous check's counter, kept on S3 between processes.
    assert again.evicted_since_last == health.load_state(settings)["evicted_keys"] - recorded


def test_unreachable_redis_is_a_clear_error(materialized):
    port = free_port()
    env = {**cli_env(materialized), "FP_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    proc = run_cli("monitoring", "health", env=env)
    assert proc.returncode == 1
    assert f"cannot reach Redis at 127.0.0.1:{port}/0" in proc.stderr and "FP_REDIS_URL" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr
    # behind Sentinel: the Sentinel's address and the master's name
    proc = run_cli("monitoring", "health", env={**env, "FP_REDIS_SENTINEL_MASTER": "feast"})
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach Redis at master feast of Sentinel 127.0.0.1:{port}/0" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_restarted_redis_counts_its_evictions_from_zero_and_says_so(materialized, tmp_path):
    """Eviction counters restart with Redis: the previous check's baseline is then meaningless, and
    everything the restarted server counted is new."""
    args = ("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru", "--enable-debug-command", "yes")
    with dedicated_valkey(tmp_path, *args) as (port, client):
        server = replace(materialized, redis_url=f"redis://127.0.0.1:{port}/0")
        fill(client, 6000)
        health.check(server, use_registry=False)
        evicted_before = health.load_state(server)["evicted_keys"]  # the baseline the next check finds
        assert evicted_before > 0
        run_id = client.info("server")["run_id"]
        with pytest.raises(redis.ConnectionError):
            client.execute_command("DEBUG", "RESTART")  # the same process and port, started again
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.info("server")["run_id"] != run_id
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the server did not come back"
                time.sleep(0.1)
        fill(client, 4000)
        report = health.check(server, use_registry=False)
    evicted_after = health.load_state(server)["evicted_keys"]  # the counter as the check read it
    assert 0 < evicted_after < evicted_before, "fewer than the baseline, so a subtraction would go negative"
    assert report.evicted_since_last == evicted_after
    assert "Redis restarted since the previous check (run_id changed)" in report.warnings
    assert any(f"Redis evicted {evicted_after} keys since the previous check" in p for p in report.problems)


def test_every_metric_carries_the_reports_value(materialized):
    from prometheus_client.parser import text_string_to_metric_families

    report = health.check(materialized, save=False)
    samples = {s.name: s for family in text_string_to_metric_families(health.prometheus_text(report, "proj"))
               for s in family.samples}
    coverage = (report.active_expected - report.active_missing) / report.active_expected
    expected = {
        "feature_store_online_healthy": 1.0,
        "feature_store_online_entities": report.entities_online,
        "feature_store_online_freshness_oldest_seconds": report.age_seconds["oldest"],
        "feature_store_online_freshness_median_seconds": report.age_seconds["median"],
        "feature_store_online_stale_active_entities": report.stale_active,
        "feature_store_online_coverage_ratio": coverage,
        "feature_store_online_missing_active_entities": report.active_missing,
        "feature_store_online_evicted_keys": report.evicted_since_last,
        "feature_store_online_memory_ratio": report.memory_ratio,
        "feature_store_online_check_timestamp_seconds": datetime.fromisoformat(report.checked_at).timestamp(),
    }
    assert {name: s.value for name, s in samples.items()} == pytest.approx(expected)
    assert report.entities_online > 0 and coverage == 1.0
    assert all(s.labels == {"project": "proj", "feature_view": "employee_features"} for s in samples.values())
    stale = health.check(materialized, now=datetime.now(timezone.utc) + timedelta(days=90), save=False)
    text = health.prometheus_text(stale, "proj")
    assert 'feature_store_online_healthy{feature_view="employee_features",project="proj"} 0.0' in text
    assert f'feature_store_online_stale_active_entities{{feature_view="employee_features",project="proj"}} {float(stale.stale_active)}' in text
