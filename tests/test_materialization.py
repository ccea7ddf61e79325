"""Materialization semantics that operators rely on: watermarks survive apply, late rows need an
explicit window, backfills replace corrected values and never put older values over newer ones."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from conftest import cli_env, corrected_export, ingest_exports, isolated
from etl import features as spec
from etl import ingest as ing
from etl import layout
from features import definitions
from features import online
from features import store as fs

pytestmark = pytest.mark.integration

LATEST, PREVIOUS = date(2026, 10, 31), date(2026, 9, 30)


@pytest.fixture
def loaded(stack, exports, tmp_path):
    settings = isolated(stack, tmp_path, "mat")
    ingest_exports(settings, exports[-2:])
    store = fs.open_store(settings)
    fs.apply(store, settings)
    fs.materialize(store, settings, datetime.now(timezone.utc))
    return settings, store


def vectors(settings, store, ids):
    return online.online_vectors(store, settings, ids)


def test_apply_only_when_changed_and_watermarks_survive(loaded, monkeypatch):
    settings, store = loaded
    intervals = store.get_feature_view(fs.FEATURE_VIEW).materialization_intervals
    assert intervals
    assert fs.apply(store, settings, only_if_changed=True) == [], "unchanged definitions are not re-applied"
    monkeypatch.setattr(definitions, "FEATURE_TTL", definitions.FEATURE_TTL + timedelta(days=1))
    assert fs.changed_definitions(store, settings) == ["FeatureView employee_features"]
    assert "FeatureView employee_features" in fs.apply(store, settings, only_if_changed=True)
    fresh = fs.open_store(settings).get_feature_view(fs.FEATURE_VIEW)
    assert fresh.ttl == definitions.FEATURE_TTL
    assert fresh.materialization_intervals == intervals, "apply kept the incremental watermark"


def _correct_one_employee(settings, store, exports, tmp_path):
    """Re-send the latest export with one employee's satisfaction changed; return (id, before, expected)."""
    table = layout.read_partition(settings, LATEST)
    employee = next(r for r in table.to_pylist() if r["is_active"])["employee_id"]
    before = vectors(settings, store, [employee])[employee]

    # The HR system re-sends the latest export with this employee's satisfaction corrected.
    corrected = corrected_export(exports[-1], tmp_path, "JobSatisfaction", {employee})
    ing.ingest(settings, str(corrected), LATEST, validate=False)
    expected = next(r for r in layout.read_partition(settings, LATEST).to_pylist() if r["employee_id"] == employee)
    assert expected["overall_satisfaction"] != before[spec.FEATURE_NAMES.index("overall_satisfaction")]
    return employee, before, [expected[n] for n in spec.FEATURE_NAMES]


def test_late_correction_needs_the_explicit_window_and_replaces_values(loaded, exports, tmp_path):
    settings, store = loaded
    employee, before, expected = _correct_one_employee(settings, store, exports, tmp_path)

    # Measured: the corrected row lands in an already-materialized event-time window, so the
    # incremental path never loads it.
    fs.materialize(store, settings, datetime.now(timezone.utc))
    assert vectors(settings, store, [employee])[employee] == before

    # The explicit window does.
    result = fs.materialize(store, settings, datetime.combine(LATEST + timedelta(days=1), datetime.min.time(), timezone.utc),
                            start=datetime.combine(LATEST, datetime.min.time(), timezone.utc))
    assert "replaced in place" in result.mode
    assert vectors(settings, store, [employee])[employee] == expected


def test_nightly_rerun_of_a_loaded_date_refreshes_it(loaded, exports, tmp_path):
    """What the nightly DAG does after re-publishing a date: incremental plus that date's window."""
    settings, store = loaded
    employee, before, expected = _correct_one_employee(settings, store, exports, tmp_path)
    result = fs.materialize(store, settings, datetime.now(timezone.utc), refresh=LATEST)
    assert f"extraction {LATEST} refreshed in place" in result.mode
    assert vectors(settings, store, [employee])[employee] == expected


def test_backfill_of_an_older_window_never_overwrites_newer_values(loaded):
    settings, store = loaded
    latest = {r["employee_id"]: r for r in layout.read_partition(settings, LATEST).to_pylist() if r["is_active"]}
    previous = {r["employee_id"]: r for r in layout.read_partition(settings, PREVIOUS).to_pylist()}
    changed = [i for i in latest if i in previous and
               [previous[i][n] for n in spec.FEATURE_NAMES] != [latest[i][n] for n in spec.FEATURE_NAMES]]
    assert changed, "some employees' features changed between the two months"
    sample = changed[:20]
    start = datetime.combine(PREVIOUS, datetime.min.time(), timezone.utc)
    fs.materialize(store, settings, start + timedelta(days=1), start=start)
    served = vectors(settings, store, sample)
    for employee in sample:
        assert served[employee] == [latest[employee][n] for n in spec.FEATURE_NAMES], employee


def test_materialize_window_works_as_a_command_line(stack, exports, tmp_path):
    """`python -m features materialize START END` loads exactly the window's newest extraction."""
    from conftest import run_cli

    settings = isolated(stack, tmp_path, "window")
    ingest_exports(settings, exports[-3:])
    env = cli_env(settings)
    assert run_cli("features", "apply", env=env).returncode == 0
    dates = layout.list_partitions(settings)
    start, end = spec.extraction_timestamp(dates[0]), spec.extraction_timestamp(dates[1]) + timedelta(days=1)
    proc = run_cli("features", "materialize", start.isoformat(), end.isoformat(), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"serving the extraction of {dates[1].isoformat()}" in proc.stdout, proc.stdout
    store = fs.open_store(settings)
    active = sorted(online.active_ids(settings, dates[1]).tolist())[:5]
    served = online.online_vectors(store, settings, active, now=end)
    rows = {r["employee_id"]: r for r in layout.read_partition(settings, dates[1]).to_pylist()}
    assert {i: v for i, v in served.items()} == {i: [rows[i][n] for n in spec.FEATURE_NAMES] for i in active}
