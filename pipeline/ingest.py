"""Ingest one HR export: keep it, validate it, compute the features, validate them, publish.

    keep_raw -> validate raw -> stage_features -> validate features -> publish

Each step is a function of its own; ``ingest`` runs them in order, and it is the one sequence:
the nightly and backfill DAGs and ``python -m pipeline ingest`` all call it (``recompute`` runs it again
for a published partition, from its kept raw export). Key layout: ``etl.layout``.

A partition is one object: it is staged under ``staging/`` and published with a server-side copy,
so readers see the previous version or the new one, never a half-written file, and re-running a
date replaces its partition instead of adding rows. A batch that fails validation is quarantined
and nothing is published for its date; the previous partitions stay as they were.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import lease, s3
from core.settings import Settings
from etl import layout, schema, spec
from etl.layout import partition_key, raw_key, staging_key
from expectations import gate

log = logging.getLogger(__name__)


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
    validated: bool

    def summary(self) -> str:
        kept = "already kept" if self.raw_already_kept else "kept"
        checked = ("validated (raw and features suites passed)" if self.validated
                   else "raw suite skipped (--no-validate); features suite passed")
        return (f"ingested {self.source} as of {self.as_of}: {self.rows_in} rows in, {self.rows_out} feature rows out "
                f"({self.active} active, {self.leavers} leaving) in {self.seconds:.2f}s\n"
                f"  raw export {kept} at {self.raw_uri}\n"
                f"  {checked}\n"
                f"  features published to {self.features_uri} ({self.features_bytes / 1e6:.1f} MB)")

    def as_dict(self) -> dict:
        return asdict(self)


EARLIEST_EXTRACTION = date(2000, 1, 1)  # an earlier --as-of is a typo, not an HR export


def check_extraction_date(source: str, as_of: date, future: bool = True) -> None:
    """--as-of within [EARLIEST_EXTRACTION, today] and, when the file is named for a date, that date.
    ``future=False`` leaves the future to the validation gate, which quarantines such a batch."""
    today = datetime.now(timezone.utc).date()
    if future and as_of > today:
        raise schema.ContractError(f"{source}: extraction date {as_of} is in the future (today is {today} UTC)")
    if as_of < EARLIEST_EXTRACTION:
        raise schema.ContractError(f"{source}: extraction date {as_of} is before {EARLIEST_EXTRACTION}: a typo in --as-of?")
    named = schema.export_date(source)
    if named is not None and named != as_of:
        raise schema.ContractError(f"{source}: the file name says extraction date {named}, --as-of says {as_of}; "
                                   "ingest it with --as-of matching its name (or rename the file)")


def keep_raw(settings: Settings, as_of: date, data: bytes, file_name: str) -> tuple[str, bool]:
    """Store the export as received, addressed by content: a re-run finds it, a correction sits beside it."""
    key = raw_key(settings, as_of, data, file_name)
    if s3.exists(settings, key):
        return f"s3://{settings.s3_bucket}/{key}", True
    written = s3.put_bytes(settings, key, data, content_type="text/csv", metadata={"extraction-date": as_of.isoformat()})
    return written.uri, False


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=256 * 1024)
    return sink.getvalue()


def transform(data: bytes, source: str, as_of: date) -> pa.Table:
    raw = schema.read_export(data, source)
    duplicated = raw.num_rows - pc.count_distinct(raw["EmployeeNumber"]).as_py()
    if duplicated:  # checked here too, so that --no-validate can never publish two rows for one employee
        raise schema.ContractError(f"{source}: column EmployeeNumber: {duplicated} duplicated employee number(s)")
    table = spec.compute(raw, as_of)
    return table.sort_by(spec.ENTITY_KEY)


def _metadata(table: pa.Table, data: bytes) -> dict[str, str]:
    return {"rows": str(table.num_rows), "source-sha256": hashlib.sha256(data).hexdigest()}


def stage_features(settings: Settings, data: bytes, source: str, as_of: date) -> tuple[pa.Table, bytes, str]:
    """Compute the features and write them to this run's staging key; return (table, parquet bytes, staging URI)."""
    table = transform(data, source, as_of)
    payload = to_parquet(table)
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]
    written = s3.put_bytes(settings, staging_key(settings, as_of, run), payload, metadata=_metadata(table, data))
    return table, payload, written.uri


def publish(settings: Settings, as_of: date, staged_uri: str) -> str:
    """Promote this run's staged partition of ``as_of`` with one server-side copy (atomic for readers).

    Concurrent runs of one date each publish a complete partition of their own; the last copy is
    the published version, never a mix, and neither run can delete the other's staged object."""
    client = s3.client(settings)
    extra = {"MetadataDirective": "COPY"}
    if settings.s3_sse:
        extra["ServerSideEncryption"] = settings.s3_sse
    key = partition_key(settings, as_of)
    _, staged = s3.parse_uri(staged_uri)
    client.copy({"Bucket": settings.s3_bucket, "Key": staged}, settings.s3_bucket, key, ExtraArgs=extra,
                Config=s3.TRANSFER)
    client.delete_object(Bucket=settings.s3_bucket, Key=staged)
    return f"s3://{settings.s3_bucket}/{key}"


def ingest(settings: Settings, source: str, as_of: date, validate: bool = True,
           row_tolerance: float = 0.25) -> IngestResult:
    """Run every ingest step for one export. Raises gate.ValidationFailed (batch quarantined),
    schema.ContractError (unreadable export), s3.StorageError, or lease.Busy / lease.LeaseLost
    (another run of the same date)."""
    started = time.perf_counter()
    check_extraction_date(source, as_of, future=not validate)
    data, file_name = s3.read_source(settings, source)
    with s3.storage_errors(settings, f"store the run for {as_of} (nothing is published until the last step; "
                                     "re-run when S3 answers)"):
        s3.ensure_bucket(settings)
        # One run per extraction date at a time, across machines: a second one stops (lease.Busy)
        # before writing anything, so exactly one version is published and exit codes tell the truth.
        with lease.Lease(settings, layout.ingest_lock_key(settings, as_of), f"ingest of {as_of} ({file_name})") as held:
            return _ingest(settings, source, as_of, validate, row_tolerance, data, file_name, started, held)


def stale_partitions(settings: Settings) -> list[date]:
    """Published partitions computed by other code than this checkout's (etl.spec.fingerprints)."""
    current = spec.fingerprints()
    return [day for day, found in layout.partition_fingerprints(settings).items() if found != current]


def recompute(settings: Settings, as_of: date, row_tolerance: float = 0.25) -> IngestResult:
    """Recompute one published partition from the raw export it was computed from, with this code.

    The published partition records its export's SHA-256; that export was kept under raw/ before
    anything else happened. Every step of an ingest runs again (validation included), under the
    date's lease; the old partition stays published until the new one replaces it."""
    started = time.perf_counter()
    client = s3.client(settings)
    with s3.storage_errors(settings, f"recompute the partition of {as_of}"):
        head = client.head_object(Bucket=settings.s3_bucket, Key=layout.partition_key(settings, as_of))
        digest = (head.get("Metadata") or {}).get("source-sha256", "")
        prefix = layout.raw_prefix(settings, as_of)
        kept = [key for key in s3.list_keys(settings, prefix)
                if digest and key[len(prefix):].startswith(digest[:16] + "-")]
        if not kept:
            raise schema.ContractError(f"the partition of {as_of} records no kept raw export (source-sha256 "
                                       f"{digest[:16] or 'missing'} under s3://{settings.s3_bucket}/{prefix}): "
                                       "ingest that date's export again")
        data = s3.get_bytes(settings, kept[0])
        source = f"s3://{settings.s3_bucket}/{kept[0]}"
        file_name = kept[0][len(prefix) + 17:]
        with lease.Lease(settings, layout.ingest_lock_key(settings, as_of), f"recompute of {as_of}") as held:
            result = _ingest(settings, source, as_of, True, row_tolerance, data, file_name, started, held)
    log.info("recomputed the partition of %s from %s with the current code", as_of, source)
    return result


def _ingest(settings: Settings, source: str, as_of: date, validate: bool, row_tolerance: float, data: bytes,
            file_name: str, started: float, held: lease.Lease) -> IngestResult:
    # The raw file is kept before anything can reject it: a bad export is never lost.
    raw_uri, already = keep_raw(settings, as_of, data, file_name)
    if validate:
        outcome = gate.validate(settings, "raw", source, as_of=as_of, data=data, row_tolerance=row_tolerance,
                                kept_at=raw_uri)
        if not outcome.passed:
            raise gate.ValidationFailed(outcome)
    table, payload, staged_uri = stage_features(settings, data, source, as_of)
    # Always, --no-validate included: nothing the features suite rejects is ever published.
    outcome = gate.validate(settings, "features", staged_uri, as_of=as_of, data=payload, row_tolerance=row_tolerance,
                            previous_rows=gate.previous_row_count(settings, as_of), publish_report=validate)
    if not outcome.passed:
        raise gate.ValidationFailed(outcome)
    held.check()  # a run whose lease expired and was taken over must not publish over the newer run
    features_uri = publish(settings, as_of, staged_uri)
    active = pc.sum(pc.cast(table[spec.ACTIVE], pa.int64())).as_py() or 0
    result = IngestResult(
        as_of=as_of.isoformat(), source=source, rows_in=table.num_rows, rows_out=table.num_rows,
        active=active, leavers=table.num_rows - active, raw_uri=raw_uri, raw_already_kept=already,
        features_uri=features_uri, features_bytes=len(payload), seconds=time.perf_counter() - started,
        validated=validate,
    )
    log.info("ingest %s as of %s: %d rows -> %s", file_name, as_of, table.num_rows, features_uri)
    return result
