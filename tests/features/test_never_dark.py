"""Online values never go missing while they are rewritten: readers run during every kind of run.

A reader loop asks for the vectors of every employee active before and after the run, with a
fresh registry and a fresh served extraction on each call (the worst case for a reader), while
the nightly materialization, a correction, a backfill and failing runs happen in the foreground.
An observer polls Redis itself and counts complete employee hashes.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
import redis
from feast import FeatureViewState

from helpers import Loop, cli_env, corrected_export, dedicated_valkey, free_port, ingest_exports, isolated, run_cli
from core import s3
from etl import spec
from pipeline import ingest as ing
from etl import layout
from features import online
from features import store as fs
from features.resources import Resources

pytestmark = pytest.mark.integration

LATEST, PREVIOUS = date(2026, 10, 31), date(2026, 9, 30)
# The night after LATEST's export arrived: PREVIOUS's values are still within the TTL.
NIGHT = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)


def _at(day: date) -> datetime:
    return spec.extraction_timestamp(day)


def _active(settings, day: date) -> set[int]:
    return set(online.read_roster(settings, day).active_ids())


class Reader:
    """Strict in-process reads, as `features online` and predict do, refreshing everything each time."""

    def __init__(self, settings, ids):
        self.settings, self.ids = settings, sorted(ids)
        self.resources = Resources(settings)
        self.roster = online.RosterCache(settings)
        self()  # warm: connections open and the registry cached before the run starts

    def __call__(self):
        self.resources.store.refresh_registry()
        online.online_vectors(self.resources, self.ids, roster=self.roster.refresh(), now=NIGHT)


def _observer(settings, ids, counts):
    client = redis.Redis.from_url(settings.redis_url)
    keys = [online.redis_key(settings.feast_project, i) for i in ids]
    fields = online.feature_fields()

    def step():
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            counts.append(sum(all(v is not None for v in values) for values in pipe.execute()))
    return step


def _redis_dump(settings) -> dict:
    """Every key of the project and its fields, byte for byte."""
    client = redis.Redis.from_url(settings.redis_url)
    suffix = settings.feast_project.encode()
    return {k: client.hgetall(k) for k in client.scan_iter(match=b"*" + suffix) if k.endswith(suffix)}


def _serve_history(settings, exports):
    """Five months ingested and loaded (the sixth, LATEST, is the test's), in small write batches
    so that a run lasts long enough for many concurrent reads."""
    ingest_exports(settings, exports[:-1])
    resources = Resources(settings)
    fs.apply(resources)
    first = date.fromisoformat(exports[0].stem.removeprefix("hr_export_"))
    fs.materialize(resources, _at(PREVIOUS) + timedelta(hours=2), start=_at(first))
    return resources


@pytest.fixture
def served_previous(stack, exports, tmp_path):
    settings = replace(isolated(stack, tmp_path, "dark"), materialize_batch_size=10)
    return settings, _serve_history(settings, exports)


def _nightly(settings, resources, exports):
    ingest_exports(settings, exports[-1:])
    return fs.materialize(resources, NIGHT, refresh=LATEST)


def test_nightly_run_never_leaves_an_active_employee_unserved(served_previous, exports):
    settings, resources = served_previous
    before = _active(settings, PREVIOUS)
    ingest_exports(settings, exports[-1:])
    both = before & _active(settings, LATEST)
    counts: list[int] = []
    with Loop(Reader(settings, both)) as reader, Loop(_observer(settings, both, counts)) as observer:
        result = fs.materialize(resources, NIGHT, refresh=LATEST)
    assert result.served_extraction == LATEST.isoformat()
    assert reader.calls >= 3 and observer.calls >= 3, (reader.calls, observer.calls)
    assert reader.failures == [], reader.failures[:3]
    assert min(counts) == len(both), f"an observer saw only {min(counts)} of {len(both)} complete hashes"
    assert online.served_extraction(settings) == LATEST


def test_correction_of_the_latest_date_is_written_in_place(served_previous, exports, tmp_path):
    settings, resources = served_previous
    _nightly(settings, resources, exports)
    active = _active(settings, LATEST)
    employee = min(active)
    old = online.online_vectors(resources, [employee], now=NIGHT)[employee]

    # The HR system re-sends the latest export with one employee's satisfaction corrected.
    corrected = corrected_export(exports[-1], tmp_path, "JobSatisfaction", {employee})
    ing.ingest(settings, str(corrected), LATEST, validate=False)

    counts: list[int] = []
    with Loop(Reader(settings, active)) as reader, Loop(_observer(settings, active, counts)) as observer:
        fs.materialize(resources, NIGHT, refresh=LATEST)
    assert reader.calls >= 3 and observer.calls >= 3
    assert reader.failures == [], reader.failures[:3]
    assert min(counts) == len(active)
    new = online.online_vectors(resources, [employee], now=NIGHT)[employee]
    expected = next(r for r in layout.read_partition(settings, LATEST).to_pylist() if r["employee_id"] == employee)
    assert new == [expected[n] for n in spec.FEATURE_NAMES] and new != old


def test_backfill_of_an_old_window_keeps_newer_values_served(served_previous, exports):
    settings, resources = served_previous
    _nightly(settings, resources, exports)
    active = _active(settings, LATEST)
    snapshot = _redis_dump(settings)
    with Loop(Reader(settings, active)) as reader:
        start = _at(date(2026, 7, 31))
        fs.materialize(resources, start + timedelta(days=1), start=start)
    assert reader.calls >= 3 and reader.failures == [], reader.failures[:3]
    assert _redis_dump(settings) == snapshot, "an older window changed nothing that was served"


def test_run_failing_on_s3_leaves_previous_values_byte_for_byte(served_previous, exports):
    settings, resources = served_previous
    ingest_exports(settings, exports[-1:])
    both = _active(settings, PREVIOUS) & _active(settings, LATEST)
    snapshot = _redis_dump(settings)
    reader = Reader(settings, both)
    # Opened last: the offline engine's S3 settings are process-wide (ibis's default backend).
    unreachable = replace(settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    broken = Resources(unreachable)
    with Loop(reader) as reader:
        with pytest.raises(Exception):
            fs.materialize(broken, NIGHT, refresh=LATEST)
    Resources(settings).store  # the process-wide S3 settings back
    assert reader.failures == [], reader.failures[:3]
    assert _redis_dump(settings) == snapshot
    assert online.served_extraction(settings) == PREVIOUS


def test_run_failing_on_redis_writes_leaves_previous_values_served(stack, exports, tmp_path):
    """A dedicated Redis refuses writes (out of memory, noeviction) while a nightly run loads."""
    with dedicated_valkey(tmp_path, "--maxmemory-policy", "noeviction") as (port, client):
        settings = replace(isolated(stack, tmp_path, "oom"), redis_url=f"redis://127.0.0.1:{port}/0",
                           materialize_batch_size=10)
        resources = _serve_history(settings, exports)
        ingest_exports(settings, exports[-1:])
        both = _active(settings, PREVIOUS) & _active(settings, LATEST)
        snapshot = _redis_dump(settings)
        client.config_set("maxmemory", 1)
        with Loop(Reader(settings, both)) as reader:
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                fs.materialize(resources, NIGHT, refresh=LATEST)
        assert reader.calls >= 1 and reader.failures == [], reader.failures[:3]
        assert _redis_dump(settings) == snapshot, "a refused run leaves every served value as it was"
        assert online.served_extraction(settings) == PREVIOUS
        client.config_set("maxmemory", 0)
        result = fs.materialize(resources, NIGHT, refresh=LATEST)
        assert result.served_extraction == LATEST.isoformat(), "the re-run converges"
        served = online.online_vectors(resources, sorted(both), now=NIGHT)
        assert len(served) == len(both)


def test_materialization_into_a_frozen_or_dead_redis_fails_cleanly_and_converges(stack, exports, tmp_path):
    """SIGSTOP (connections accepted, never answered), then kill: the CLI ends within its Redis
    deadlines with exit 3 and one line saying what failed (the 600 s limit only detects a hang),
    nothing is marked materialized, and once Redis is back a re-run loads everything."""
    with dedicated_valkey(tmp_path) as (port, client):
        settings = replace(isolated(stack, tmp_path, "frozen"), redis_url=f"redis://127.0.0.1:{port}/0")
        ingest_exports(settings, exports)
        run_cli("features", "apply", env=cli_env(settings))
        pid = client.info("server")["process_id"]
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen = run_cli("features", "materialize-incremental", NIGHT.isoformat(), env=cli_env(settings),
                             timeout=600)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert frozen.returncode == 3, frozen.stderr[-2000:]
        assert "Traceback" not in frozen.stderr
        assert f"the online store (Redis at 127.0.0.1:{port}/0) failed: TimeoutError" in frozen.stderr
        resources = Resources(settings)
        assert resources.store.get_feature_view(fs.FEATURE_VIEW).materialization_intervals == []
        assert not s3.exists(settings, layout.served_state_key(settings)), "no extraction committed as served"

        recovered = run_cli("features", "materialize-incremental", NIGHT.isoformat(), env=cli_env(settings))
        assert recovered.returncode == 0, recovered.stderr[-2000:]
        assert online.served_extraction(settings) == LATEST
        assert len(online.online_vectors(Resources(settings), sorted(_active(settings, LATEST)),
                                         now=NIGHT)) == len(_active(settings, LATEST))
        client.shutdown(nosave=True)
    dead = run_cli("features", "materialize-incremental", NIGHT.isoformat(), env=cli_env(settings))
    assert dead.returncode == 3 and "Traceback" not in dead.stderr
    assert "failed: ConnectionError" in dead.stderr


def test_a_view_marked_materializing_keeps_serving(served_previous):
    """Feast marks a view MATERIALIZING while it loads and by default refuses to serve it (#6780).
    features/feature_store.yaml sets `serve_features_while_materializing`, so a reader that sees
    the mark keeps serving the last loaded values. Measured with Feast 0.67 on the SQL registry:
    the mark never reaches the registry at all (an apply whose definition is unchanged is skipped,
    and FeatureView equality ignores the state); the reader loops above refresh the registry on
    every call during real runs and never fail."""
    settings, resources = served_previous
    employee = min(_active(settings, PREVIOUS))
    reader = Resources(settings)
    assert reader.store.registry.serve_features_while_materializing is True
    resources.store.set_feature_view_state(fs.FEATURE_VIEW, FeatureViewState.MATERIALIZING)
    reader.store.refresh_registry()
    assert reader.store.get_feature_view(fs.FEATURE_VIEW).state in {FeatureViewState.MATERIALIZING,
                                                               FeatureViewState.AVAILABLE_ONLINE}
    now = _at(PREVIOUS) + timedelta(days=1)
    assert online.online_vectors(reader, [employee], now=now)[employee]
