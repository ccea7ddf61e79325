"""FP_COMPUTE_ENGINE=ray: materialization and training retrieval on Ray, for data past one machine.

**Materialization** is Feast's own Ray compute engine reading through Feast's Ray offline store:
Ray Data reads the features folder on S3, filters the window, keeps each employee's newest row and
writes batches to Redis from parallel Ray tasks, through our online store's Arrow write path
(features/ray_compute.py, as features/engine.py does for the local engine), so Redis ends
byte-identical to the default engine's.

**Training retrieval** is a point-in-time join on Ray Data (``historical_features``), not Feast's
Ray offline store's ``get_historical_features``, which on Feast 0.67 is not point-in-time
correct: it ignores the feature view's TTL (a label row months after an employee's last row
still gets that row's values), and above its broadcast threshold (100 MB of features) it joins
only rows that fall in the same hour window of the same Ray batch. Here every employee's feature
rows and label rows meet in one group (Ray's shuffle on a bucket of ``employee_id``; a bucket holds
many employees, so the join runs vectorized, not once per employee), where pandas' ``merge_asof``
takes the newest row at or before each label time within the TTL, as Feast's DuckDB store does;
ties on event time go to the newest ``created_timestamp``.

``ray`` is imported only when one of these runs (it is slow to import and DAG parsing, the CLI's
help and the default engine never need it).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from core.settings import Settings
from etl import spec
from features.definitions import source_path

if TYPE_CHECKING:
    from features.resources import Resources

log = logging.getLogger(__name__)

# Parallel writers to Redis on a Ray cluster: each holds a connection and writes whole batches;
# the write script keeps concurrent batches correct (a value is replaced only by a newer or equal one).
CLUSTER_WRITE_CONCURRENCY = 8

_LABEL_ROW = "__label_row"  # position of a label row in the caller's frame; -1 on feature rows
_BUCKET = "__bucket"  # employee_id modulo the number of buckets: the unit Ray shuffles and joins
ROWS_PER_BUCKET = 500_000  # feature and label rows a join task holds at once (about 100 MB)


def engine_config(settings: Settings) -> dict:
    """The ``batch_engine`` and ``offline_store`` sections of feature_store.yaml for Ray.

    With FP_RAY_ADDRESS (a KubeRay cluster's ``ray://...:10001``), the worker pod is the Ray
    driver and the cluster's pods do the reading, joining and writing: each job hands them the S3
    endpoint and region of these settings, never credentials (the cluster's pods have their own,
    from their Secret). Without it, Ray starts in this process, bounded to this machine's cores
    and FP_RAY_OBJECT_STORE_MB of shared memory, its workers given the settings' S3 access.
    """
    if settings.ray_address:
        location = {k: v for k, v in settings.s3_env().items() if k in {"AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}}
        ray_conf, writers = {"runtime_env": {"env_vars": location}}, CLUSTER_WRITE_CONCURRENCY
    else:
        ray_conf = {"num_cpus": os.cpu_count() or 1,
                    "object_store_memory": settings.ray_object_store_mb * 1024 * 1024,
                    "runtime_env": {"env_vars": settings.s3_env()}}
        writers = os.cpu_count() or 1
    return {
        "batch_engine": {"type": "features.ray_compute.PlatformRayComputeEngine", "ray_address": settings.ray_address,
                         "ray_conf": ray_conf, "write_concurrency": writers},
        "offline_store": {"type": "ray", "ray_address": settings.ray_address, "ray_conf": ray_conf,
                          # Where Feast's Ray offline store may stage a job's result.
                          "storage_path": f"s3://{settings.s3_bucket}/ray-staging/{settings.feast_project}"},
    }


def historical_features(resources: "Resources", keys: pd.DataFrame, names: list[str], ttl: timedelta) -> pd.DataFrame:
    """``keys`` (employee, event time; unique) with ``names`` as of each row, joined on Ray.

    Every key row comes back once, in order; a row with no feature value within ``ttl`` before it
    gets nulls. Integer features come back as int64 when complete, float64 with NaN otherwise, as
    from the default engine."""
    import ray.data
    from feast.infra.ray_initializer import ensure_ray_initialized

    ensure_ray_initialized(resources.store.config.batch_engine)  # the engine's Ray: local or the cluster
    columns = [spec.ENTITY_KEY, spec.TIMESTAMP, spec.CREATED, *names]
    schema = pa.schema([*(spec.OUTPUT_SCHEMA.field(c) for c in columns),
                        pa.field(_LABEL_ROW, pa.int64()), pa.field(_BUCKET, pa.int64())])
    features = ray.data.read_parquet(source_path(resources.settings), columns=columns)
    buckets = max(4 * int(ray.cluster_resources().get("CPU", 1)), -(-(features.count() + len(keys)) // ROWS_PER_BUCKET))

    def feature_rows(batch: pa.Table) -> pa.Table:
        ids = batch[spec.ENTITY_KEY].cast(pa.int64())
        return pa.table({**{c: batch[c].cast(schema.field(c).type) for c in columns},
                         _LABEL_ROW: pa.array(np.full(batch.num_rows, -1, dtype=np.int64)),
                         _BUCKET: pa.array(ids.to_numpy() % buckets)}, schema=schema)

    ids = keys[spec.ENTITY_KEY].to_numpy(dtype=np.int64)
    times = pa.array(pd.to_datetime(keys[spec.TIMESTAMP], utc=True)).cast(schema.field(spec.TIMESTAMP).type)
    label_table = pa.table({spec.ENTITY_KEY: pa.array(ids), spec.TIMESTAMP: times,
                            **{c: pa.nulls(len(keys), schema.field(c).type) for c in [spec.CREATED, *names]},
                            _LABEL_ROW: pa.array(np.arange(len(keys), dtype=np.int64)),
                            _BUCKET: pa.array(ids % buckets)}, schema=schema)
    combined = features.map_batches(feature_rows, batch_format="pyarrow").union(ray.data.from_arrow(label_table))
    joined = combined.groupby(_BUCKET).map_groups(
        lambda group: _join_bucket(group, names, ttl), batch_format="pandas").to_pandas()
    if len(joined) != len(keys):
        raise RuntimeError(f"the Ray join returned {len(joined)} rows for {len(keys)} label rows")
    joined = joined.sort_values(_LABEL_ROW).reset_index(drop=True)
    out = keys[[spec.ENTITY_KEY, spec.TIMESTAMP]].reset_index(drop=True).copy()
    for name in names:
        values = joined[name].to_numpy(dtype="float64")
        integer = spec.OUTPUT_SCHEMA.field(name).type == pa.int64()
        out[name] = values.astype("int64") if integer and not np.isnan(values).any() else values
    log.info("point-in-time join on Ray: %d label rows, %d with every feature", len(out),
             int(out[names].notna().all(axis=1).sum()))
    return out


def _join_bucket(group: pd.DataFrame, names: list[str], ttl: timedelta) -> pd.DataFrame:
    """A bucket's label rows, each with its employee's newest feature row at or before it within ``ttl``."""
    is_label = group[_LABEL_ROW].to_numpy() >= 0
    labels = group.loc[is_label, [_LABEL_ROW, spec.ENTITY_KEY, spec.TIMESTAMP]].sort_values(spec.TIMESTAMP, kind="stable")
    # Equal event times: the newest created_timestamp last, so the join takes it.
    rows = group.loc[~is_label, [spec.ENTITY_KEY, spec.TIMESTAMP, spec.CREATED, *names]].sort_values(
        [spec.TIMESTAMP, spec.CREATED], kind="stable")
    merged = pd.merge_asof(labels, rows.drop(columns=[spec.CREATED]), on=spec.TIMESTAMP, by=spec.ENTITY_KEY,
                           direction="backward", tolerance=pd.Timedelta(ttl), allow_exact_matches=True)
    return merged[[_LABEL_ROW, *names]].astype({name: "float64" for name in names})
