"""features.online: the one vector assembler, on responses shaped exactly like Feast's (no services)."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from etl import spec
from features import online

NAMES = list(spec.FEATURE_NAMES)
SERVED = date(2026, 10, 31)
NOW = datetime(2026, 11, 2, tzinfo=timezone.utc)
TTL = timedelta(days=45)
ROSTER = online.Roster(SERVED, active=np.array([1, 2, 3]), left=np.array([7]))
VALUES = {1: [5, 4, 1, 0.6, 0.2222222222222222, 2.25], 2: [1, 2, 0, 1.0, 0.5, 3.0], 3: [9, 5, 0, 0.0, 0.1, 4.0],
          7: [3, 1, 1, 0.3, 0.3, 1.5]}


def payload(ids, order=None, overrides=None, stamps=None):
    """A feature server body: metadata.feature_names and one result per column, in ``order``."""
    overrides, stamps = overrides or {}, stamps or {}
    order = order or NAMES
    names = [spec.ENTITY_KEY, *order]
    results = [{"values": list(ids), "statuses": ["PRESENT"] * len(ids)}]
    for name in order:
        column = []
        for i in ids:
            column.append(overrides.get((i, name), VALUES.get(i, [None] * 6)[NAMES.index(name)]))
        results.append({
            "values": column,
            "statuses": ["PRESENT" if v is not None else "NOT_FOUND" for v in column],
            "event_timestamps": [stamps.get((i, name), "2026-10-31T00:00:00Z" if i in VALUES else "1970-01-01T00:00:00Z")
                                 for i in ids],
        })
    return {"metadata": {"feature_names": names}, "results": results}


def build(body, names=NAMES):
    return online.assemble(online.parse_response(body), names, ROSTER, TTL, NOW)


def test_vectors_are_assembled_by_name_whatever_the_response_order():
    shuffled = NAMES[:]
    random.Random(5).shuffle(shuffled)
    assert shuffled != NAMES
    assert build(payload([1, 2], order=shuffled)) == {1: VALUES[1], 2: VALUES[2]}
    reversed_names = list(reversed(NAMES))
    assert build(payload([1]), reversed_names) == {1: list(reversed(VALUES[1]))}


@pytest.mark.parametrize("ids, overrides, stamps, reason, text", [
    ([99], {}, {}, "unknown", "employee 99: unknown employee"),
    ([7], {}, {}, "left", "employee 7: left or absent in the extraction of 2026-10-31"),
    ([1], {(1, "career_velocity"): None}, {}, "missing", "employee 1: career_velocity missing online"),
    ([1], {}, {(1, "tenure"): "1970-01-01T00:00:00Z"}, "missing", "employee 1: tenure missing online"),
    ([1], {}, {(1, "tenure"): "2026-10-15T00:00:00Z"}, "stale",
     "employee 1: tenure from 2026-10-15, older than the served extraction 2026-10-31"),
])
def test_each_refusal_names_the_employee_and_the_reason(ids, overrides, stamps, reason, text):
    with pytest.raises(online.ServingError) as refused:
        build(payload(ids, overrides=overrides, stamps=stamps))
    assert refused.value.reason == reason
    assert text in str(refused.value)
    assert set(refused.value.problems) == set(ids)


def test_a_value_older_than_the_ttl_is_stale_even_for_the_served_extraction():
    later = NOW + timedelta(days=60)
    with pytest.raises(online.ServingError, match="older than the TTL 45 days") as refused:
        online.assemble(online.parse_response(payload([1])), NAMES, ROSTER, TTL, later)
    assert refused.value.reason == "stale"


def test_one_bad_employee_refuses_the_batch_and_the_most_basic_reason_wins():
    with pytest.raises(online.ServingError) as refused:
        build(payload([1, 99, 2], overrides={(2, "tenure"): None}))
    assert refused.value.reason == "unknown"
    assert set(refused.value.problems) == {99, 2}
    assert "refusing to serve 2 of 3 employee(s)" in str(refused.value)


def test_a_response_lacking_a_model_feature_is_a_mismatch():
    with pytest.raises(online.ServingError, match="lacks feature") as refused:
        build(payload([1], order=NAMES[:-1]))
    assert refused.value.reason == "mismatch"


def test_roster_status():
    assert [ROSTER.status(i) for i in (1, 3, 7, 4)] == ["active", "active", "left", "unknown"]
    assert ROSTER.event_time == datetime(2026, 10, 31, tzinfo=timezone.utc)


def test_the_ttl_is_a_bound_a_value_exactly_that_old_is_still_served():
    ttl_old = online.parse_response(payload([1]))  # every value stamped with the served extraction
    at_bound = ROSTER.event_time + TTL
    assert online.assemble(ttl_old, NAMES, ROSTER, TTL, at_bound) == {1: VALUES[1]}
    with pytest.raises(online.ServingError, match="older than the TTL"):
        online.assemble(ttl_old, NAMES, ROSTER, TTL, at_bound + timedelta(microseconds=1))


def test_without_a_time_given_now_is_used():
    fresh = datetime.now(timezone.utc).replace(microsecond=0)
    roster = online.Roster(fresh.date(), active=np.array([1]), left=np.array([], dtype=np.int64))
    stamp = fresh.replace(hour=0, minute=0, second=0).isoformat()
    body = payload([1], stamps={(1, name): stamp for name in NAMES})
    assert online.assemble(online.parse_response(body), NAMES, roster, TTL) == {1: VALUES[1]}


def test_a_long_refusal_lists_ten_employees_and_counts_the_rest():
    with pytest.raises(online.ServingError) as refused:
        build(payload(list(range(100, 112))))
    message = str(refused.value)
    assert message.startswith("refusing to serve 12 of 12 employee(s): employee 100: unknown employee; employee 101:")
    assert message.endswith("employee 109: unknown employee (and 2 more)")
    assert len(refused.value.problems) == 12
    with pytest.raises(online.ServingError) as eleven:
        build(payload(list(range(100, 111))))
    assert str(eleven.value).endswith("employee 109: unknown employee (and 1 more)")
    with pytest.raises(online.ServingError) as ten:
        build(payload(list(range(100, 110))))
    assert str(ten.value).endswith("employee 109: unknown employee")


def test_every_issue_of_an_employee_is_named():
    with pytest.raises(online.ServingError) as refused:
        build(payload([1], overrides={(1, "tenure"): None}, stamps={(1, "overtime"): "2026-10-15T00:00:00Z"}))
    assert refused.value.problems[1] == ("tenure missing online; "
                                         "overtime from 2026-10-15, older than the served extraction 2026-10-31")
    assert refused.value.reason == "missing", "the first issue names the reason"


def test_response_times_without_zone_are_utc_and_only_the_epoch_means_no_value():
    body = payload([1], stamps={(1, "tenure"): "2026-10-31T00:00:00", (1, "overtime"): "1970-01-01T00:00:01Z",
                                (1, "salary_band"): "2026-10-31T02:00:00+02:00"})
    columns = online.parse_response(body)
    assert columns.event_times["tenure"] == [datetime(2026, 10, 31, tzinfo=timezone.utc)]
    assert columns.event_times["salary_band"] == [datetime(2026, 10, 31, tzinfo=timezone.utc)]
    assert columns.event_times["salary_band"][0].utcoffset() == timedelta(hours=2), "an offset given is kept"
    assert columns.event_times["overtime"] == [datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)]
    assert online.parse_response(payload([1], stamps={(1, "tenure"): "1970-01-01T00:00:00Z"})).event_times["tenure"] == [None]


def test_a_response_without_event_times_is_missing_not_an_error():
    body = payload([1])
    for result in body["results"][1:]:
        del result["event_timestamps"]
    columns = online.parse_response(body)
    assert all(columns.event_times[name] == [None] for name in NAMES)
    with pytest.raises(online.ServingError) as refused:
        online.assemble(columns, NAMES, ROSTER, TTL, NOW)
    assert refused.value.reason == "missing"
