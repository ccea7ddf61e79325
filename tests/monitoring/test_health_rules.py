"""monitoring.health's rules on values built by hand: coverage, freshness, counters, memory."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from monitoring import health

NOW = datetime(2026, 11, 2, tzinfo=timezone.utc)
LATEST = datetime(2026, 10, 31, tzinfo=timezone.utc)
ALLOWED = timedelta(days=45)


def report(**fields) -> health.HealthReport:
    return health.HealthReport(checked_at=NOW.isoformat(), redis="redis", entities_online=0, sampled=0,
                               latest_extraction="2026-10-31", **fields)


def test_coverage_fails_only_beyond_the_tolerance_and_counts_both_ways():
    active, served = set(range(1, 11)), set(range(3, 14))  # 1 and 2 missing; 11, 12, 13 no longer active
    within = report()
    health.judge_coverage(within, active, served, tolerance=0.2)
    assert (within.active_expected, within.active_missing, within.inactive_served) == (10, 2, 3)
    assert within.problems == []
    assert within.warnings == ["3 entities online are not active in the newest extraction"]
    beyond = report()
    health.judge_coverage(beyond, active, served, tolerance=0.1)
    assert beyond.problems == ["2 of 10 active employees have no online features (e.g. [1, 2]); tolerance 10.0%"]


def test_coverage_lists_five_missing_in_order_and_nothing_when_complete():
    many = report()
    health.judge_coverage(many, set(range(1, 21)), {20, 19}, tolerance=0.0)
    assert "18 of 20 active employees have no online features (e.g. [1, 2, 3, 4, 5])" in many.problems[0]
    complete = report()
    health.judge_coverage(complete, {1, 2}, {1, 2}, tolerance=0.0)
    assert (complete.problems, complete.warnings, complete.inactive_served) == ([], [], 0)
    nobody = report()
    health.judge_coverage(nobody, set(), {5}, tolerance=0.0)
    assert nobody.problems == [] and nobody.inactive_served == 1


def test_freshness_ages_and_the_three_ways_to_be_stale():
    stamps = {1: LATEST, 2: None, 3: LATEST - timedelta(days=1), 4: NOW - ALLOWED - timedelta(seconds=1), 5: LATEST,
              6: LATEST - timedelta(days=30)}
    ids = sorted(stamps)
    checked = report()
    health.judge_freshness(checked, ids, [stamps[i] for i in ids], active={1, 2, 3, 4, 5}, now=NOW, allowed=ALLOWED,
                           latest=LATEST)
    assert checked.sampled == 6
    ages = sorted((NOW - s).total_seconds() for s in stamps.values() if s is not None)
    assert checked.age_seconds == {"oldest": ages[-1], "median": ages[2], "newest": ages[0]}
    assert checked.stale_active == 3, "absent (2), older than the extraction (3), older than allowed (4); 6 is not active"
    assert checked.problems == [f"3 active employees are served values older than the newest extraction (2026-10-31) "
                                f"or than {ALLOWED} (e.g. [2, 3, 4])"]


def test_freshness_names_five_stale_employees():
    ids = list(range(1, 9))
    checked = report()
    health.judge_freshness(checked, ids, [None] * 8, active=set(ids), now=NOW, allowed=ALLOWED, latest=LATEST)
    assert checked.problems[0].endswith("(e.g. [1, 2, 3, 4, 5])")


def test_freshness_at_the_bounds_and_without_an_extraction():
    at_bound = report()
    health.judge_freshness(at_bound, [1, 2], [NOW - ALLOWED, LATEST], active={1, 2}, now=NOW, allowed=ALLOWED,
                           latest=NOW - ALLOWED)
    assert at_bound.stale_active == 0 and at_bound.problems == [], "exactly as old as allowed, or as the extraction"
    nothing = report()
    health.judge_freshness(nothing, [1], [None], active={1}, now=NOW, allowed=ALLOWED, latest=None)
    assert nothing.age_seconds == {} and nothing.stale_active == 1
    no_extraction = report()
    health.judge_freshness(no_extraction, [1], [LATEST - timedelta(days=3)], active={1}, now=NOW, allowed=ALLOWED,
                           latest=None)
    assert no_extraction.stale_active == 0


def test_counters_are_deltas_on_the_same_server_and_restart_from_zero_after_a_restart():
    before = {"run_id": "a", "evicted_keys": 10, "expired_keys": 4}
    same = report(maxmemory=100, maxmemory_policy="noeviction")
    health.judge_counters(same, before, {"run_id": "a", "evicted_keys": 15, "expired_keys": 9})
    assert (same.evicted_since_last, same.expired_since_last) == (5, 5)
    assert same.problems == ["Redis evicted 5 keys since the previous check (policy noeviction, maxmemory 100)"]
    assert same.warnings == []
    restarted = report()
    health.judge_counters(restarted, before, {"run_id": "b", "evicted_keys": 3, "expired_keys": 1})
    assert (restarted.evicted_since_last, restarted.expired_since_last) == (3, 1)
    assert restarted.warnings == ["Redis restarted since the previous check (run_id changed)"]
    one = report()
    health.judge_counters(one, before, {"run_id": "a", "evicted_keys": 11, "expired_keys": 4})
    assert one.problems and one.evicted_since_last == 1, "a single evicted key is a problem"
    first = report()
    health.judge_counters(first, None, {"run_id": "a", "evicted_keys": 0, "expired_keys": 2})
    assert (first.evicted_since_last, first.expired_since_last, first.problems, first.warnings) == (0, 2, [], [])


@pytest.mark.parametrize("maxmemory, used, policy, expected", [
    (0, 50, "noeviction", ["maxmemory is not set: Redis can grow until its container is killed for memory"]),
    (100, 80, "noeviction", []),
    (100, 81, "volatile-lru", ["memory at 81% of maxmemory"]),
    (100, 10, "allkeys-lru", ["maxmemory-policy allkeys-lru can evict Feast keys, which have no TTL; "
                              "prefer noeviction (writes fail loudly) or volatile-*"]),
])
def test_memory_warnings(maxmemory, used, policy, expected):
    checked = report(maxmemory=maxmemory, used_memory=used, maxmemory_policy=policy)
    health.judge_memory(checked, warn_ratio=0.8)
    assert checked.warnings == expected and checked.problems == []


def test_a_sample_is_spread_over_all_ids():
    ids = list(range(100))
    assert health.sampled_ids(ids, None) == ids and health.sampled_ids(ids, 100) == ids
    assert health.sampled_ids(ids, 4) == [0, 25, 50, 75]
    assert health.sampled_ids(ids[:3], 5) == [0, 1, 2]
