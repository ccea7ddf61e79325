"""Ingest one HR export: keep the raw file, compute the features, publish one Parquet partition.

Layout on S3 (prefixes from core.settings):

    <raw prefix>/extraction_date=YYYY-MM-DD/<sha256[:16]>-<file name>     raw export, never modified
    <features prefix>/extraction_date=YYYY-MM-DD/part-0.parquet           features of that extraction

A partition is one object, uploaded whole: readers see the previous version or the new one, never
a half-written file, and re-running a date replaces its partition instead of adding rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import s3
from core.settings import Settings
from etl import features, schema

log = logging.getLogger(__name__)

PARTITION_FILE = "part-0.parquet"


def partition_prefix(settings: Settings, as_of: date) -> str:
    return f"{settings.s3_features_prefix}/extraction_date={as_of.isoformat()}/"


def partition_key(settings: Settings, as_of: date) -> str:
    return partition_prefix(settings, as_of) + PARTITION_FILE


def raw_key(settings: Settings, as_of: date, data: bytes, file_name: str) -> str:
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{settings.s3_raw_prefix}/extraction_date={as_of.isoformat()}/{digest}-{file_name}"


@dataclass(frozen=True)
class IngestResult:
    as_of: str
    source: str
    rows_in: int
    rows_out: int
    active: int
    leavers: int
    raw_uri: str
    raw_already_kept: bool
    features_uri: str
    features_bytes: int
    seconds: float

    def summary(self) -> str:
        kept = "already kept" if self.raw_already_kept else "kept"
        return (f"ingested {self.source} as of {self.as_of}: {self.rows_in} rows in, {self.rows_out} feature rows out "
                f"({self.active} active, {self.leavers} leaving) in {self.seconds:.2f}s\n"
                f"  raw export {kept} at {self.raw_uri}\n"
                f"  features written to {self.features_uri} ({self.features_bytes / 1e6:.1f} MB)")

    def as_dict(self) -> dict:
        return asdict(self)


def read_source(settings: Settings, source: str) -> tuple[bytes, str]:
    """Bytes and file name of an export given as a local path or an s3:// URI."""
    if source.startswith("s3://"):
        bucket, key = s3.parse_uri(source)
        body = s3.client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
        return body, key.rsplit("/", 1)[-1]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"export not found: {source}")
    return path.read_bytes(), path.name


def keep_raw(settings: Settings, as_of: date, data: bytes, file_name: str, client=None) -> tuple[str, bool]:
    """Store the export as received, addressed by content: a re-run finds it, a correction sits beside it."""
    key = raw_key(settings, as_of, data, file_name)
    if s3.exists(settings, key, client):
        return f"s3://{settings.s3_bucket}/{key}", True
    written = s3.put_bytes(settings, key, data, content_type="text/csv", metadata={"extraction-date": as_of.isoformat()},
                           s3=client)
    return written.uri, False


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=256 * 1024)
    return sink.getvalue()


def transform(data: bytes, source: str, as_of: date) -> pa.Table:
    raw = schema.read_export(data, source)
    table = features.compute(raw, as_of)
    return table.sort_by(features.ENTITY_KEY)


def ingest(settings: Settings, source: str, as_of: date) -> IngestResult:
    started = time.perf_counter()
    today = datetime.now(timezone.utc).date()
    if as_of > today:
        raise schema.ContractError(f"{source}: extraction date {as_of} is in the future (today is {today} UTC)")
    data, file_name = read_source(settings, source)
    client = s3.client(settings)
    s3.ensure_bucket(settings, client)
    # The raw file is kept before anything can reject it: a bad export is never lost.
    raw_uri, already = keep_raw(settings, as_of, data, file_name, client)
    table = transform(data, source, as_of)
    payload = to_parquet(table)
    written = s3.put_bytes(settings, partition_key(settings, as_of), payload,
                           metadata={"rows": str(table.num_rows), "source-sha256": hashlib.sha256(data).hexdigest()},
                           s3=client)
    active = pc.sum(pc.cast(table[features.ACTIVE], pa.int64())).as_py() or 0
    result = IngestResult(
        as_of=as_of.isoformat(), source=source, rows_in=table.num_rows, rows_out=table.num_rows,
        active=active, leavers=table.num_rows - active, raw_uri=raw_uri, raw_already_kept=already,
        features_uri=written.uri, features_bytes=written.size, seconds=time.perf_counter() - started,
    )
    log.info("ingest %s as of %s: %d rows -> %s", file_name, as_of, table.num_rows, written.uri)
    return result


def list_partitions(settings: Settings) -> list[date]:
    """Extraction dates that have a published features partition, oldest first."""
    dates = set()
    for key in s3.list_keys(settings, settings.s3_features_prefix + "/"):
        part = key[len(settings.s3_features_prefix) + 1:].split("/", 1)[0]
        if part.startswith("extraction_date=") and key.endswith(PARTITION_FILE):
            dates.add(date.fromisoformat(part.split("=", 1)[1]))
    return sorted(dates)


def read_partition(settings: Settings, as_of: date) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get_bytes(settings, partition_key(settings, as_of))))
