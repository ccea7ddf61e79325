"""Materialization semantics that operators rely on: watermarks survive apply, late rows need an
explicit window, backfills replace corrected values and never put older values over newer ones."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from helpers import cli_env, corrected_export, ingest_exports, isolated
from etl import spec
from pipeline import ingest as ing
from etl import layout
from features import definitions
from features import online
from features import store as fs
from features.resources import Resources

pytestmark = pytest.mark.integration

LATEST, PREVIOUS = date(2026, 10, 31), date(2026, 9, 30)


@pytest.fixture
def loaded(stack, exports, tmp_path):
    settings = isolated(stack, tmp_path, "mat")
    ingest_exports(settings, exports[-2:])
    resources = Resources(settings)
    fs.apply(resources)
    fs.materialize(resources, datetime.now(timezone.utc))
    return settings, resources


def vectors(settings, resources, ids):
    return online.online_vectors(resources, ids)


def test_apply_only_when_changed_and_watermarks_survive(loaded, monkeypatch):
    settings, resources = loaded
    intervals = resources.store.get_feature_view(fs.FEATURE_VIEW).materialization_intervals
    assert intervals
    assert fs.apply(resources, only_if_changed=True) == [], "unchanged definitions are not re-applied"
    monkeypatch.setattr(definitions, "FEATURE_TTL", definitions.FEATURE_TTL + timedelta(days=1))
    assert fs.changed_definitions(resources) == ["FeatureView employee_features"]
    assert "FeatureView employee_features" in fs.apply(resources, only_if_changed=True)
    fresh = Resources(settings).store.get_feature_view(fs.FEATURE_VIEW)
    assert fresh.ttl == definitions.FEATURE_TTL
    assert fresh.materialization_intervals == intervals, "apply kept the incremental watermark"


def _correct_one_employee(settings, resources, exports, tmp_path):
    """Re-send the latest export with one employee's satisfaction changed; return (id, before, expected)."""
    table = layout.read_partition(settings, LATEST)
    employee = next(r for r in table.to_pylist() if r["is_active"])["employee_id"]
    before = vectors(settings, resources, [employee])[employee]

    # The HR system re-sends the latest export with this employee's satisfaction corrected.
    corrected = corrected_export(exports[-1], tmp_path, "JobSatisfaction", {employee})
    ing.ingest(settings, str(corrected), LATEST, validate=False)
    expected = next(r for r in layout.read_partition(settings, LATEST).to_pylist() if r["employee_id"] == employee)
    assert expected["overall_satisfaction"] != before[spec.FEATURE_NAMES.index("overall_satisfaction")]
    return employee, before, [expected[n] for n in spec.FEATURE_NAMES]


def test_late_correction_needs_the_explicit_window_and_replaces_values(loaded, exports, tmp_path):
    settings, resources = loaded
    employee, before, expected = _correct_one_employee(settings, resources, exports, tmp_path)

    # Measured: the corrected row lands in an already-materialized event-time window, so the
    # incremental path never loads it.
    fs.materialize(resources, datetime.now(timezone.utc))
    assert vectors(settings, resources, [employee])[employee] == before

    # The explicit window does.
    result = fs.materialize(resources, datetime.combine(LATEST + timedelta(days=1), datetime.min.time(), timezone.utc),
                            start=datetime.combine(LATEST, datetime.min.time(), timezone.utc))
    assert "replaced in place" in result.mode
    assert vectors(settings, resources, [employee])[employee] == expected


def test_nightly_rerun_of_a_loaded_date_refreshes_it(loaded, exports, tmp_path):
    """What the nightly DAG does after re-publishing a date: incremental plus that date's window."""
    settings, resources = loaded
    employee, before, expected = _correct_one_employee(settings, resources, exports, tmp_path)
    result = fs.materialize(resources, datetime.now(timezone.utc), refresh=LATEST)
    assert f"extraction {LATEST} refreshed in place" in result.mode
    assert vectors(settings, resources, [employee])[employee] == expected


def test_backfill_of_an_older_window_never_overwrites_newer_values(loaded):
    settings, resources = loaded
    latest = {r["employee_id"]: r for r in layout.read_partition(settings, LATEST).to_pylist() if r["is_active"]}
    previous = {r["employee_id"]: r for r in layout.read_partition(settings, PREVIOUS).to_pylist()}
    changed = [i for i in latest if i in previous and
               [previous[i][n] for n in spec.FEATURE_NAMES] != [latest[i][n] for n in spec.FEATURE_NAMES]]
    assert changed, "some employees' features changed between the two months"
    sample = changed[:20]
    start = datetime.combine(PREVIOUS, datetime.min.time(), timezone.utc)
    fs.materialize(resources, start + timedelta(days=1), start=start)
    served = vectors(settings, resources, sample)
    for employee in sample:
        assert served[employee] == [latest[employee][n] for n in spec.FEATURE_NAMES], employee


def test_materialize_window_works_as_a_command_line(stack, exports, tmp_path):
    """`python -m features materialize START END` loads exactly the window's newest extraction."""
    from helpers import run_cli

    settings = isolated(stack, tmp_path, "window")
    ingest_exports(settings, exports[-3:])
    env = cli_env(settings)
    assert run_cli("features", "apply", env=env).returncode == 0
    dates = layout.list_partitions(settings)
    start, end = spec.extraction_timestamp(dates[0]), spec.extraction_timestamp(dates[1]) + timedelta(days=1)
    proc = run_cli("features", "materialize", start.isoformat(), end.isoformat(), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"serving the extraction of {dates[1].isoformat()}" in proc.stdout, proc.stdout
    resources = Resources(settings)
    active = sorted(online.active_ids(settings, dates[1]).tolist())[:5]
    served = online.online_vectors(resources, active, now=end)
    rows = {r["employee_id"]: r for r in layout.read_partition(settings, dates[1]).to_pylist()}
    assert {i: v for i, v in served.items()} == {i: [rows[i][n] for n in spec.FEATURE_NAMES] for i in active}

    # S3 unreachable during the read: exit 3, what failed and what to check, the watermark unchanged.
    from helpers import free_port

    intervals = Resources(settings).store.get_feature_view(fs.FEATURE_VIEW).materialization_intervals
    down = {**env, "FP_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "FP_S3_TIMEOUT_SECONDS": "1"}
    failed = run_cli("features", "materialize", start.isoformat(), (end + timedelta(days=40)).isoformat(), env=down)
    assert failed.returncode == 3, failed.stderr[-2000:]
    assert f"error: reading the features at {settings.features_uri} failed:" in failed.stderr
    assert "Nothing was marked materialized" in failed.stderr and "Traceback" not in failed.stderr
    after = Resources(settings).store.get_feature_view(fs.FEATURE_VIEW, allow_registry_cache=False)
    assert after.materialization_intervals == intervals


# --- The Arrow write path against Feast's stock path, byte for byte --------------------------------

def _dump(client) -> dict[bytes, dict[bytes, bytes]]:
    """Every key of a Redis database with every field and value, as stored."""
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


def _stock_store(settings, port: int, registry):
    """Feast as shipped: its local engine and its own Redis online store, on a Redis of its own."""
    from feast import FeatureStore, RepoConfig

    from features.definitions import build

    config = RepoConfig(project=settings.feast_project, provider="local", entity_key_serialization_version=3,
                        registry={"registry_type": "sql", "path": f"sqlite:///{registry}", "cache_ttl_seconds": 0},
                        online_store={"type": "redis", "connection_string": f"127.0.0.1:{port}"},
                        offline_store={"type": "duckdb"}, batch_engine="local",
                        materialization={"online_write_batch_size": settings.materialize_batch_size})
    store = FeatureStore(config=config)
    store.apply(list(build(settings)))
    return store


def _day(day: date) -> tuple[datetime, datetime]:
    start = spec.extraction_timestamp(day)
    return start, start + timedelta(days=1)


def test_arrow_writes_are_byte_identical_to_feasts_stock_path(stack, exports, tmp_path):
    """Windows loaded out of order (an older one after newer ones is skipped where Redis holds newer
    values), a correction replaced in place, leavers removed: every key and field as Feast writes it."""
    from contextlib import ExitStack
    from dataclasses import replace

    from helpers import dedicated_valkey
    from features.engine import PlatformComputeEngine

    settings = replace(isolated(stack, tmp_path, "bytes"), materialize_batch_size=37)
    ingest_exports(settings, exports[-3:])
    older, previous, latest = layout.list_partitions(settings)
    with ExitStack() as servers:
        (ours_port, ours), (stock_port, stock), (fresh_port, fresh) = (
            servers.enter_context(dedicated_valkey(tmp_path)) for _ in range(3))
        mine = replace(settings, redis_url=f"redis://127.0.0.1:{ours_port}/0")
        resources = Resources(mine)
        fs.apply(resources)
        assert isinstance(resources.store._get_provider().batch_engine, PlatformComputeEngine)
        feast_store = _stock_store(settings, stock_port, tmp_path / "stock-registry.db")

        for day in (previous, latest, older):  # the older window last: newer values stay
            for each in (resources.store, feast_store):
                each.materialize(*_day(day), feature_views=[fs.FEATURE_VIEW])
            assert _dump(ours) == _dump(stock), day
        intervals = [each.get_feature_view(fs.FEATURE_VIEW, allow_registry_cache=False).materialization_intervals
                     for each in (resources.store, feast_store)]
        assert intervals[0] == intervals[1] and len(intervals[0]) == 3, "the registry records the windows as Feast does"
        assert len(_dump(ours)) == len({r["employee_id"] for d in (older, previous, latest)
                                        for r in layout.read_partition(settings, d).to_pylist()})

        # A corrected latest extraction: Feast's store skips a row of the same event time, ours
        # replaces it in place. The result equals Feast's own load of the corrected data from scratch.
        rows = layout.read_partition(settings, latest).to_pylist()
        corrected_ids = [r["employee_id"] for r in rows if r["is_active"]][:25]
        ingest_exports(settings, [corrected_export(exports[-1], tmp_path, "JobSatisfaction", set(corrected_ids))])
        resources.store.materialize(*_day(latest), feature_views=[fs.FEATURE_VIEW])
        feast_fresh = _stock_store(settings, fresh_port, tmp_path / "fresh-registry.db")
        for day in (previous, latest, older):
            feast_fresh.materialize(*_day(day), feature_views=[fs.FEATURE_VIEW])
        assert _dump(ours) == _dump(fresh)
        assert _dump(ours) != _dump(stock), "the correction changed served bytes"

        # The whole materialization of the pipeline: leavers' hashes go, every other byte stays Feast's.
        result = fs.materialize(resources, _day(latest)[1], start=_day(older)[0])
        left = online.read_roster(settings, latest).left
        assert result.retired == len(left) > 0
        leaver_keys = {online.redis_key(settings.feast_project, i) for i in left}
        expected = {k: v for k, v in _dump(fresh).items() if k not in leaver_keys}
        assert _dump(ours) == expected


def test_the_stock_feast_cli_takes_the_same_write_path(stack, exports, tmp_path):
    """`feast materialize-incremental`, run as Feast ships it from features/, goes through the Arrow
    writer (its log line) and leaves the same bytes as Feast's stock store."""
    import os
    import subprocess
    from dataclasses import replace

    from helpers import ROOT, dedicated_valkey

    settings = isolated(stack, tmp_path, "cli")
    ingest_exports(settings, exports[-1:])
    with dedicated_valkey(tmp_path) as (ours_port, ours), dedicated_valkey(tmp_path) as (stock_port, stock):
        mine = replace(settings, redis_url=f"redis://127.0.0.1:{ours_port}/0")
        fs.apply(Resources(mine))
        end = _day(LATEST)[1]
        feast = os.path.join(os.path.dirname(os.sys.executable), "feast")
        proc = subprocess.run([feast, "--log-level", "INFO", "-c", "features", "materialize-incremental", end.isoformat()],
                              cwd=ROOT, env={**os.environ, **mine.feast_env(), **mine.s3_env()},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "written to the online store" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
        feast_store = _stock_store(settings, stock_port, tmp_path / "stock-registry.db")
        feast_store.materialize_incremental(end_date=end, feature_views=[fs.FEATURE_VIEW])
        assert len(_dump(ours)) == layout.read_partition(settings, LATEST).num_rows
        assert _dump(ours) == _dump(stock)


def test_arrow_serialization_equals_feasts_row_conversion_with_nulls_and_microseconds(stack, exports, tmp_path):
    """``arrow_writes`` (per distinct value) against Feast's ``_convert_arrow_to_proto`` then the
    row serialization, on a partition with missing values and event times down to the microsecond."""
    from dataclasses import replace

    import pyarrow as pa
    from feast.utils import _convert_arrow_to_proto

    from helpers import dedicated_valkey
    from features.online_store import arrow_writes, row_writes

    settings = isolated(stack, tmp_path, "ser")
    ingest_exports(settings, exports[-1:])
    resources = Resources(settings)
    fs.apply(resources)
    view = resources.store.get_feature_view(fs.FEATURE_VIEW)
    table = layout.read_partition(settings, LATEST).slice(0, 200)
    # Missing values in an integer and a float feature, and distinct sub-second event times.
    for name in ("salary_band", "career_velocity"):
        column = table[name].to_pylist()
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array([None if i % 7 == 0 else v for i, v in enumerate(column)], table[name].type))
    times = table[spec.TIMESTAMP].to_pylist()
    table = table.set_column(table.schema.get_field_index(spec.TIMESTAMP), spec.TIMESTAMP,
                             pa.array([t + timedelta(microseconds=i * 1001) for i, t in enumerate(times)],
                                      table[spec.TIMESTAMP].type))
    batch = table.to_batches()[0]
    rows = _convert_arrow_to_proto(batch, view, {e.name: e.dtype.to_value_type() for e in view.entity_columns})
    assert arrow_writes(resources.store.config, view, batch) == row_writes(resources.store.config, view, rows)
    assert b"" in arrow_writes(resources.store.config, view, batch).values[1], "a missing value is Feast's empty Value"

    # And in Redis: Feast's own store writing Feast's rows, ours writing the Arrow batch.
    with dedicated_valkey(tmp_path) as (stock_port, stock), dedicated_valkey(tmp_path) as (ours_port, ours):
        feast_store = _stock_store(settings, stock_port, tmp_path / "stock-registry.db")
        feast_store._get_provider().online_store.online_write_batch(feast_store.config, view, rows, None)
        mine = Resources(replace(settings, redis_url=f"redis://127.0.0.1:{ours_port}/0"))
        assert mine.store._get_provider().online_store.online_write_arrow(mine.store.config, view, batch) == batch.num_rows
        assert len(_dump(ours)) == batch.num_rows
        assert _dump(ours) == _dump(stock)

        # One batch holding employees twice at different event times, in both orders: a newer row
        # before the current one, an older row after it. The newest wins on both paths.
        def shifted(rows_of, delta):
            moved = [t + delta for t in rows_of[spec.TIMESTAMP].to_pylist()]
            return rows_of.set_column(rows_of.schema.get_field_index(spec.TIMESTAMP), spec.TIMESTAMP,
                                      pa.array(moved, rows_of[spec.TIMESTAMP].type))

        newer = shifted(table.slice(10, 10), timedelta(days=1)).set_column(
            table.schema.get_field_index("tenure"), "tenure", pa.array([99] * 10, table["tenure"].type))
        older = shifted(table.slice(0, 10), -timedelta(days=1)).set_column(
            table.schema.get_field_index("tenure"), "tenure", pa.array([-1] * 10, table["tenure"].type))
        mixed = pa.concat_tables([newer, table, older]).combine_chunks().to_batches()[0]
        mixed_rows = _convert_arrow_to_proto(mixed, view, {e.name: e.dtype.to_value_type() for e in view.entity_columns})
        for client in (stock, ours):
            client.flushdb()
        feast_store._get_provider().online_store.online_write_batch(feast_store.config, view, mixed_rows, None)
        mine.store._get_provider().online_store.online_write_arrow(mine.store.config, view, mixed)
        assert _dump(ours) == _dump(stock)
        from feast.protos.feast.types.Value_pb2 import Value

        tenure_field = online.feature_fields(names=["tenure"])[0]
        tenure = {r["employee_id"]: Value.FromString(ours.hget(online.redis_key(settings.feast_project,
                                                                                r["employee_id"]), tenure_field)).int64_val
                  for r in table.slice(0, 20).to_pylist()}
        original = table["tenure"].to_pylist()
        assert list(tenure.values()) == original[:10] + [99] * 10, "the newest row of each employee is served"


def test_cluster_writes_follow_the_scripts_rule(stack, exports, tmp_path):
    """A Redis Cluster takes two pipelined passes instead of the script: same rule, same bytes."""
    import pyarrow as pa

    from features.online_store import PlatformRedisOnlineStore, arrow_writes

    from helpers import dedicated_valkey

    settings = isolated(stack, tmp_path, "rule")
    ingest_exports(settings, exports[-3:])
    older, previous, latest = layout.list_partitions(settings)
    resources = Resources(settings)
    fs.apply(resources)
    view = resources.store.get_feature_view(fs.FEATURE_VIEW)
    writer = PlatformRedisOnlineStore()
    ts_field = online.timestamp_field(fs.FEATURE_VIEW)
    batches = [layout.read_partition(settings, day).to_batches()[0] for day in (previous, latest, older)]
    corrected = layout.read_partition(settings, latest)
    corrected = corrected.set_column(corrected.schema.get_field_index("overtime"), "overtime", pa.array(
        [1 - v for v in corrected["overtime"].to_pylist()], corrected["overtime"].type)).to_batches()[0]
    with dedicated_valkey(tmp_path) as (_, by_script), dedicated_valkey(tmp_path) as (_, by_passes):
        # A batch holding an entity twice at the same event time: the later row (the correction) wins.
        both = pa.Table.from_batches([batches[1], corrected]).combine_chunks().to_batches()[0]
        for batch in [*batches, both, batches[1], corrected]:
            writes = arrow_writes(resources.store.config, view, batch)
            written = writer._write_by_script(by_script, resources.store.config.online_store, ts_field, writes)
            assert writer._write_in_two_passes(by_passes, resources.store.config.online_store, ts_field, writes) == written
            assert _dump(by_script) == _dump(by_passes)
        assert 0 < written == corrected.num_rows, "a correction of the newest date is written in full"
