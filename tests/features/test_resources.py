"""features/resources.py: each client built once per process, from the settings alone; the
compute engine chosen by FP_COMPUTE_ENGINE gives the same online values and training sets."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import pandas as pd
import pytest

from core import s3
from etl import generate as gen
from etl import layout, spec
from features import resources as resources_mod
from features import store as fs
from features.resources import Resources
from training import dataset

from helpers import cli_env, dedicated_valkey, ingest_exports, isolated, run_cli


def test_a_process_builds_its_resources_once_per_settings(stack, tmp_path):
    first = Resources.for_process(stack)
    assert Resources.for_process(replace(stack)) is first, "equal settings share one object"
    assert first.store is first.store and first.redis is first.redis, "clients are built once"
    assert first.s3 is s3.client(stack), "the S3 client is the process's one for these settings"
    other = Resources.for_process(isolated(stack, tmp_path, "res"))
    assert other is not first and other.store is not first.store


def _built_in_child(settings, parent_id, queue) -> None:
    queue.put(id(Resources.for_process(settings)) != parent_id)


def test_a_forked_child_builds_its_own(stack):
    parent = Resources.for_process(stack)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_built_in_child, args=(stack, id(parent), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) is True, "the child must not reuse its parent's connections"


def test_the_store_is_configured_from_the_settings_not_the_environment(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_FEAST_REPO_PROJECT", "not_this_one")
    before = dict(os.environ)
    mine = isolated(stack, tmp_path, "cfg")
    store = Resources(mine).store
    assert dict(os.environ) == before, "building a store must leave the process environment alone"
    assert store.config.project == mine.feast_project
    assert store.config.registry.path == mine.registry_url
    assert store.config.online_store.connection_string == mine.redis_connection_string
    assert store.config.materialization_config.online_write_batch_size == mine.materialize_batch_size
    assert Resources(stack).store.config.project == stack.feast_project, "two settings, two configurations"


def test_the_redis_client_is_the_online_stores_own(stack):
    resources = Resources(stack)
    online_store = resources.store._get_provider().online_store
    assert resources.redis is online_store._get_client(resources.store.config.online_store)
    url = urlparse(stack.redis_url)
    kwargs = resources.redis.connection_pool.connection_kwargs
    assert (kwargs["host"], int(kwargs["port"])) == (url.hostname, url.port or 6379)
    assert resources.redis.ping()


def test_a_configuration_naming_an_unknown_setting_says_which(stack, tmp_path, monkeypatch):
    config = tmp_path / "feature_store.yaml"
    config.write_text(resources_mod.CONFIG_FILE.read_text() + "\nextra: ${FP_NOT_A_SETTING}\n")
    monkeypatch.setattr(resources_mod, "CONFIG_FILE", config)
    with pytest.raises(SystemExit, match=r"\$\{FP_NOT_A_SETTING\}.*Settings.feast_env"):
        resources_mod.repo_config(stack)


@pytest.fixture(scope="module")
def engines(stack, tmp_path_factory):
    """One published history, read by the default engine and by Ray in local mode: the same Feast
    project, each with its own registry and its own database of one dedicated Redis.

    The exports end last month, as a nightly run's do: Feast's Ray engine materializes only rows
    younger than the TTL at the time of the run (older ones would be refused as stale anyway)."""
    folder = tmp_path_factory.mktemp("engines")
    history = isolated(stack, folder, "engines")
    end = gen.previous_month_end(datetime.now(timezone.utc).date())
    ingest_exports(history, gen.generate(folder / "exports", employees=300, months=6, end=end, seed=11))
    environment = dict(os.environ)
    with dedicated_valkey(folder) as (port, client):
        default = replace(history, redis_url=f"redis://127.0.0.1:{port}/0",
                          registry_url=f"sqlite:///{folder / 'default.db'}")
        ray = replace(history, compute_engine="ray", ray_object_store_mb=256,
                      redis_url=f"redis://127.0.0.1:{port}/1", registry_url=f"sqlite:///{folder / 'ray.db'}")
        yield Resources(default), Resources(ray), port
    import ray as ray_runtime
    from feast.infra import ray_initializer

    ray_runtime.shutdown()
    ray_initializer._ray_initialized = False  # a later Ray store in this process starts its own again
    os.environ.clear()
    os.environ.update(environment)


def _dump(port: int, db: int) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    client = redis.Redis(port=port, db=db)
    try:
        return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}
    finally:
        client.close()


def test_the_ray_engine_is_feasts_on_the_same_data(engines):
    default, ray, _ = engines
    import ray as ray_runtime
    from feast.infra.compute_engines.ray.compute import RayComputeEngine

    fs.apply(ray)
    assert not ray_runtime.is_initialized(), "registry work builds the engine but starts no Ray"
    assert isinstance(ray.store._get_provider().batch_engine, RayComputeEngine)
    assert type(ray.store._get_provider().offline_store).__name__ == "RayOfflineStore"
    assert ray.store.config.online_store.connection_string == default.store.config.online_store.connection_string.replace("db=0", "db=1")
    assert default.store.config.batch_engine.type == "features.engine.PlatformComputeEngine"


def test_materializing_through_ray_leaves_redis_byte_identical(engines, caplog):
    default, ray, port = engines
    partitions = layout.list_partitions(default.settings)
    start, end = spec.extraction_timestamp(partitions[0]), spec.extraction_timestamp(partitions[-1]) + timedelta(days=1)
    results = {}
    for name, resources in (("default", default), ("ray", ray)):
        fs.apply(resources)
        with caplog.at_level("INFO", logger="features.ray_compute"):
            results[name] = fs.materialize(resources, end, start=start)
    written = [r.getMessage() for r in caplog.records if r.name == "features.ray_compute"]
    assert len(written) == 1 and "written to the online store" in written[0], "Ray tasks wrote whole Arrow batches"
    local_keys, ray_keys = _dump(port, 0), _dump(port, 1)
    assert len(local_keys) == results["default"].active > 0
    assert ray_keys == local_keys, "every key, field and value as the default engine wrote them"
    assert results["ray"].served_extraction == results["default"].served_extraction == partitions[-1].isoformat()
    intervals = [r.store.get_feature_view(fs.FEATURE_VIEW, allow_registry_cache=False).materialization_intervals
                 for r in (default, ray)]
    assert intervals[0] == intervals[1], "the registry records the same window"


def test_the_command_line_takes_the_engine_from_the_environment(engines, tmp_path):
    """`python -m features materialize` in a fresh process with FP_COMPUTE_ENGINE=ray: same Redis."""
    default, ray, port = engines
    partitions = layout.list_partitions(default.settings)
    start, end = spec.extraction_timestamp(partitions[0]), spec.extraction_timestamp(partitions[-1]) + timedelta(days=1)
    fs.apply(default)
    fs.materialize(default, end, start=start)
    env = cli_env(ray.settings, FP_COMPUTE_ENGINE="ray", FP_RAY_OBJECT_STORE_MB="256",
                  FP_REDIS_URL=f"redis://127.0.0.1:{port}/2", FP_REGISTRY_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    assert run_cli("features", "apply", env=env).returncode == 0
    proc = run_cli("features", "materialize", start.isoformat(), end.isoformat(), env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "features.ray_compute: employee_features:" in proc.stderr, "the Ray engine's writer ran"
    assert _dump(port, 2) == _dump(port, 0)


def test_the_point_in_time_training_set_through_ray_is_the_default_one(engines):
    default, ray, _ = engines
    fs.apply(default)
    fs.apply(ray)
    labels = dataset.build_labels(default.settings, horizon=2)
    # Label rows between extractions and past the TTL too: every rule of the join is exercised.
    shifted = labels.assign(**{spec.TIMESTAMP: labels[spec.TIMESTAMP] + pd.Timedelta(days=10)})
    newest = pd.Timestamp(spec.extraction_timestamp(layout.list_partitions(default.settings)[-1]))
    late = labels.head(20).assign(**{spec.TIMESTAMP: newest + pd.Timedelta(days=60)})
    entity_df = pd.concat([labels, shifted, late], ignore_index=True)
    expected = dataset.point_in_time(default, entity_df)
    assert expected[list(spec.FEATURE_NAMES)].notna().all(axis=1).sum() > len(labels) / 2
    assert expected[list(spec.FEATURE_NAMES)].isna().all(axis=1).sum() >= 20, "rows past the TTL get nulls"
    pd.testing.assert_frame_equal(dataset.point_in_time(ray, entity_df), expected)
    complete = dataset.point_in_time(default, labels)
    assert complete[list(spec.FEATURE_NAMES)].notna().all().all(), "labels sit on extractions: every value found"
    pd.testing.assert_frame_equal(dataset.point_in_time(ray, labels), complete)  # integer columns stay int64


def test_a_ray_cluster_gets_where_s3_is_but_never_the_keys(stack):
    from features import ray_engine

    cluster = replace(stack, compute_engine="ray", ray_address="ray://feature-platform-ray-head-svc:10001")
    sections = ray_engine.engine_config(cluster)
    assert sections["batch_engine"]["ray_address"] == sections["offline_store"]["ray_address"] == cluster.ray_address
    shipped = repr(sections)
    assert stack.aws_secret_access_key not in shipped and stack.aws_access_key_id not in shipped
    assert sections["batch_engine"]["ray_conf"]["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == stack.s3_endpoint_url
    local = ray_engine.engine_config(replace(cluster, ray_address=None, ray_object_store_mb=300))
    assert local["batch_engine"]["ray_conf"]["object_store_memory"] == 300 * 1024 * 1024, "a local Ray is bounded"
    assert local["batch_engine"]["ray_conf"]["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == stack.aws_secret_access_key
    assert resources_mod.repo_config(cluster).batch_engine.type == "features.ray_compute.PlatformRayComputeEngine"


def test_a_registry_applied_for_another_engine_is_refused_before_anything_runs(engines):
    default, ray, port = engines
    fs.apply(default)
    stale = Resources(replace(ray.settings, registry_url=default.settings.registry_url))
    with pytest.raises(fs.DefinitionsOutOfDate, match=r"\*/\*\.parquet, but this configuration .*FP_COMPUTE_ENGINE=ray\) reads s3://\S+/\. Nothing"):
        fs.materialize(stale, datetime.now(timezone.utc))
    env = cli_env(stale.settings, FP_COMPUTE_ENGINE="ray", FP_REDIS_URL=f"redis://127.0.0.1:{port}/3")
    proc = run_cli("features", "materialize-incremental", env=env)
    assert proc.returncode == 2 and "run `python -m features apply` first" in proc.stderr, proc.stderr[-2000:]
    assert _dump(port, 3) == {}
