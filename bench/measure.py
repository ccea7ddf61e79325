"""One benchmark measurement, run in its own process: `python -m bench.measure etl|materialize SIZE`.

Prints one JSON line: our time and peak RSS, the limit's time and peak RSS (each measured in a
child of its own), and what the limit is.
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import redis

from core import s3
from core import settings as settings_mod
from etl import generate as gen
from pipeline import ingest as ing

AS_OF = date(2026, 10, 31)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_settings() -> settings_mod.Settings:
    base = settings_mod.load()
    return replace(base, s3_bucket=os.environ.get("FP_BENCH_BUCKET", "fp-bench"),
                   feast_project=os.environ.get("FP_BENCH_PROJECT", "bench"),
                   registry_url=f"sqlite:///{base.local_dir / 'bench' / 'registry.db'}")


def export_of(rows: int) -> Path:
    """A single export with ``rows`` employees, generated once and cached under .local/bench."""
    folder = settings_mod.load().local_dir / "bench" / f"export-{rows}"
    path = folder / gen.export_name(AS_OF)
    if not path.exists():
        gen.generate(folder, employees=rows, months=1, end=AS_OF, seed=1)
    return path


# --- the measured parts, each in its own process -------------------------------------------

def etl_ours(rows: int) -> dict:
    settings = bench_settings()
    s3.ensure_bucket(settings)
    path = export_of(rows)
    started = time.perf_counter()
    ing.ingest(settings, str(path), AS_OF, validate=False)  # the gate is measured on its own below
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb()}


def etl_limit(rows: int) -> dict:
    """pyarrow read of the same CSV bytes, Parquet write of the whole table, upload of the result."""
    settings = bench_settings()
    s3.ensure_bucket(settings)
    path = export_of(rows)
    started = time.perf_counter()
    table = pacsv.read_csv(io.BytesIO(path.read_bytes()))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    s3.put_bytes(settings, f"bench/limit-{rows}.parquet", sink.getvalue())
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb()}


def _features_partition(rows: int) -> bytes:
    return ing.to_parquet(ing.transform(export_of(rows).read_bytes(), "bench", AS_OF))


def validate_ours(rows: int) -> dict:
    """The features suite on a partition, Great Expectations already imported (as in a worker)."""
    from expectations import gate

    import great_expectations  # noqa: F401  (import time is excluded, as the issue's target says)

    settings = bench_settings()
    payload = _features_partition(rows)
    started = time.perf_counter()
    outcome = gate.validate(settings, "features", "bench/part-0.parquet", as_of=AS_OF, data=payload,
                            previous_rows=rows, quarantine=False, publish_report=False)
    seconds = time.perf_counter() - started
    if not outcome.passed:
        raise SystemExit(outcome.message())
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def validate_limit(rows: int) -> dict:
    """Reading the same partition into pandas and one vectorised range check per column."""
    from etl import spec

    payload = _features_partition(rows)
    started = time.perf_counter()
    frame = pq.read_table(io.BytesIO(payload)).to_pandas()
    for name in spec.FEATURE_NAMES:
        frame[name].between(-1e9, 1e9).all()
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb()}


def _prepare_materialization(entities: int) -> settings_mod.Settings:
    settings = replace(bench_settings(), feast_project=f"bench_{entities}")
    (settings.local_dir / "bench").mkdir(parents=True, exist_ok=True)
    s3.ensure_bucket(settings)
    settings = replace(settings, s3_features_prefix=f"bench/features-{entities}")
    # In a process of its own: the ingest's features suite (pandas over every row) must not count
    # in the peak memory measured for materialization.
    subprocess.run([sys.executable, "-m", "pipeline", "ingest", str(export_of(entities)), "--as-of", AS_OF.isoformat(),
                    "--no-validate"], check=True, capture_output=True,
                   env={**os.environ, "FP_S3_BUCKET": settings.s3_bucket,
                        "FP_S3_FEATURES_PREFIX": settings.s3_features_prefix})
    return settings


def materialize_ours(entities: int, engine: str = "local") -> dict:
    from features import store as fs  # Feast is slow to import; only this measurement needs it
    from features.resources import Resources

    settings = replace(_prepare_materialization(entities), compute_engine=engine)
    resources = Resources(settings)
    fs.apply(resources)
    start = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=timezone.utc) - timedelta(days=1)
    started = time.perf_counter()
    fs.materialize(resources, datetime.now(timezone.utc), start=start)
    seconds = time.perf_counter() - started
    _drop_keys(settings)
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def materialize_limit(entities: int) -> dict:
    """Raw redis-py pipelined HSETs of the same keys and serialized values, 10k per round trip."""
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from etl import spec
    from features import online

    settings = replace(bench_settings(), feast_project=f"benchlimit_{entities}")
    table = ing.transform(export_of(entities).read_bytes(), "bench", AS_OF)
    ts = Timestamp()
    ts.FromDatetime(datetime(AS_OF.year, AS_OF.month, AS_OF.day))
    *fields, ts_field = online.feature_fields()
    ts_value = ts.SerializeToString()
    columns = [table[f.name].to_pylist() for f in spec.FEATURES]
    kinds = ["int64_val" if f.dtype == "int64" else "double_val" for f in spec.FEATURES]
    payload = []
    for i, employee_id in enumerate(table["employee_id"].to_pylist()):
        key = online.redis_key(settings.feast_project, employee_id)
        mapping = {f: Value(**{k: col[i]}).SerializeToString() for f, k, col in zip(fields, kinds, columns)}
        mapping[ts_field] = ts_value
        payload.append((key, mapping))
    client = redis.Redis.from_url(settings.redis_url)
    started = time.perf_counter()
    for begin in range(0, len(payload), 10_000):
        with client.pipeline(transaction=False) as pipe:
            for key, mapping in payload[begin:begin + 10_000]:
                pipe.hset(key, mapping=mapping)
            pipe.execute()
    seconds = time.perf_counter() - started
    _drop_keys(settings)
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def _drop_keys(settings: settings_mod.Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    suffix = settings.feast_project.encode()
    batch = []
    for key in client.scan_iter(match=b"*" + suffix, count=10_000):
        if key.endswith(suffix):
            batch.append(key)
        if len(batch) >= 10_000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def _prepare_health(entities: int) -> settings_mod.Settings:
    """A project with ``entities`` employees materialized (timing of this part is not measured)."""
    from features import store as fs
    from features.resources import Resources

    settings = _prepare_materialization(entities)
    settings = replace(settings, feast_project=f"benchhealth_{entities}")
    resources = Resources(settings)
    store = resources.store
    fs.apply(resources)
    start = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=timezone.utc) - timedelta(days=1)
    store.materialize(start_date=start, end_date=datetime.now(timezone.utc), feature_views=["employee_features"])
    return settings


def health_ours(entities: int) -> dict:
    from monitoring import health

    settings = _prepare_health(entities)
    started = time.perf_counter()
    report = health.check(settings)
    seconds = time.perf_counter() - started
    _drop_keys(settings)
    if report.entities_online != entities:
        raise SystemExit(f"expected {entities} entities online, found {report.entities_online}")
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def health_limit(entities: int) -> dict:
    """Raw SCAN of the project's keys + pipelined HMGET of every timestamp field, nothing else."""
    settings = _prepare_health(entities)
    client = redis.Redis.from_url(settings.redis_url)
    suffix = settings.feast_project.encode()
    started = time.perf_counter()
    keys = [k for k in client.scan_iter(match=b"*" + suffix, count=5_000) if k.endswith(suffix)]
    for begin in range(0, len(keys), 10_000):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[begin:begin + 10_000]:
                pipe.hmget(key, [b"_ts:employee_features"])
            pipe.execute()
    seconds = time.perf_counter() - started
    _drop_keys(settings)
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


RETRIEVAL_FEATURE_MONTHS = 10  # 100k employees x 10 monthly extractions = 1M feature rows


def _prepare_retrieval(labels: int):
    """1M feature rows on S3 (generated once) and ``labels`` label rows over the same employees."""
    import numpy as np
    import pandas as pd

    base = bench_settings()
    settings = replace(base, s3_features_prefix="bench/retrieval-features", feast_project="bench_retrieval",
                       registry_url=f"sqlite:///{base.local_dir / 'bench' / 'retrieval-registry.db'}")
    (settings.local_dir / "bench").mkdir(parents=True, exist_ok=True)
    s3.ensure_bucket(settings)
    from etl.layout import list_partitions

    if len(list_partitions(settings)) < RETRIEVAL_FEATURE_MONTHS:
        folder = settings.local_dir / "bench" / "retrieval-exports"
        for path in gen.generate(folder, employees=100_000, months=RETRIEVAL_FEATURE_MONTHS, end=AS_OF, seed=5):
            ing.ingest(settings, str(path), date.fromisoformat(path.stem.removeprefix("hr_export_")), validate=False)
    rng = np.random.default_rng(9)
    start = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(days=30 * RETRIEVAL_FEATURE_MONTHS)
    offsets = rng.integers(0, 30 * RETRIEVAL_FEATURE_MONTHS * 86_400, labels)
    frame = pd.DataFrame({"employee_id": rng.integers(1, 100_000, labels),
                          "event_timestamp": start + pd.to_timedelta(offsets, unit="s")}).drop_duplicates()
    return settings, frame


def retrieval_ours(labels: int, engine: str = "local") -> dict:
    from features import store as fs
    from features.resources import Resources
    from training import dataset

    settings, frame = _prepare_retrieval(labels)
    resources = Resources(replace(settings, compute_engine=engine))
    fs.apply(resources)
    started = time.perf_counter()
    result = dataset.point_in_time(resources, frame)
    seconds = time.perf_counter() - started
    if len(result) != len(frame):
        raise SystemExit(f"retrieval returned {len(result)} rows for {len(frame)} label rows")
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def retrieval_limit(labels: int) -> dict:
    """DuckDB ASOF LEFT JOIN of the same label rows against the same feature rows (read from S3
    with pyarrow, so no DuckDB extension is needed), TTL applied."""
    import duckdb

    from etl.layout import features_dataset
    from features.definitions import FEATURE_TTL

    settings, frame = _prepare_retrieval(labels)
    started = time.perf_counter()
    features = features_dataset(settings).to_table()
    con = duckdb.connect()
    con.register("labels", frame)
    con.register("features", features)
    result = con.execute(f"""
        SELECT l.employee_id, l.event_timestamp,
               CASE WHEN l.event_timestamp - f.event_timestamp <= INTERVAL {int(FEATURE_TTL.total_seconds())} SECOND
                    THEN f.tenure END AS tenure
        FROM labels l ASOF LEFT JOIN features f
          ON l.employee_id = f.employee_id AND l.event_timestamp >= f.event_timestamp
    """).fetch_arrow_table()
    seconds = time.perf_counter() - started
    if result.num_rows != len(frame):
        raise SystemExit(f"ASOF join returned {result.num_rows} rows for {len(frame)}")
    return {"seconds": seconds, "peak_mb": peak_rss_mb()}


def materialize_ray(entities: int) -> dict:
    """Our materialization with FP_COMPUTE_ENGINE=ray, a local Ray on this machine (Ray's start included)."""
    return materialize_ours(entities, engine="ray")


def retrieval_ray(labels: int) -> dict:
    """Our training retrieval with FP_COMPUTE_ENGINE=ray, a local Ray on this machine (Ray's start included)."""
    return retrieval_ours(labels, engine="ray")


KINDS = {
    "etl": (etl_ours, etl_limit, "pyarrow CSV read + Parquet write + S3 upload of the same export"),
    "validate": (validate_ours, validate_limit,
                 "pyarrow read of the same partition into pandas + one range check per feature"),
    "retrieval": (retrieval_ours, retrieval_limit,
                  "DuckDB ASOF LEFT JOIN of the same label rows against the same 1M feature rows, TTL applied"),
    "health": (health_ours, health_limit,
               "raw SCAN of the same keys + pipelined HMGET of their timestamps"),
    "materialize": (materialize_ours, materialize_limit,
                    "raw pipelined redis-py HSET of the same keys and values (Feast's layout), 10k per round trip"),
    # Here "ours" is the Ray engine and the reference is the default engine on the same data.
    "engine-materialize": (materialize_ray, materialize_ours,
                           "the default engine (one process) materializing the same partition"),
    "engine-retrieval": (retrieval_ray, retrieval_ours,
                         "the default engine (DuckDB, one process) retrieving the same label rows"),
}


def main(argv: list[str]) -> int:
    kind, size = argv[0], int(argv[1])
    ours, limit, what = KINDS[kind]
    if len(argv) > 2:  # a child: run one side
        side = ours if argv[2] == "ours" else limit
        print(json.dumps(side(size)))
        return 0
    export_of(size)  # generate outside both measurements

    def child(side: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "bench.measure", kind, str(size), side],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-4000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    limit_result = child("limit")
    ours_result = child("ours")
    print(json.dumps({"kind": kind, "size": size, "ours_s": ours_result["seconds"], "ours_peak_mb": ours_result["peak_mb"],
                      "limit_s": limit_result["seconds"], "limit_peak_mb": limit_result["peak_mb"], "limit": what}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
