"""Ingest one HR export: keep it, validate it, compute the features, validate them, publish.

    keep_raw -> validate_raw -> stage_features -> validate_features -> publish

The order is ``pipeline.sequence.INGEST_STEPS``; each step is a function of a ``Batch`` (``STEPS``).
``ingest`` runs them all in one process (``python -m pipeline ingest``, the backfill DAG;
``recompute`` for a published partition, from its kept raw export); ``run_step`` runs one step for
the nightly DAG, which makes each its own Airflow task: the batch travels between tasks as XCom and
every step reads what it needs from S3. Key layout: ``etl.layout``.

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
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import lease, s3
from core.settings import Settings
from etl import layout, schema, spec
from etl.layout import partition_key, raw_key, staging_key
from expectations import gate
from pipeline.sequence import INGEST_STEPS

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


# --- the steps ---------------------------------------------------------------------------------

@dataclass
class Batch:
    """One export on its way through the steps: what each step leaves for the next.

    ``as_dict``/``from_dict`` carry it between processes (the nightly DAG's tasks); the bytes a
    step read or wrote stay in memory when the steps run in one process, and are read again from
    S3 (the kept raw export, the staged partition) when they do not."""

    as_of: date
    source: str
    file_name: str
    validate: bool = True
    row_tolerance: float = 0.25
    raw_uri: str = ""
    raw_already_kept: bool = False
    staged_uri: str = ""
    features_uri: str = ""
    rows: int = 0
    active: int = 0
    features_bytes: int = 0
    rejected: str = ""  # why this batch stopped (its step and reason), when it did
    data: bytes | None = field(default=None, repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("data", "payload")}
        return {**kept, "as_of": self.as_of.isoformat()}

    @classmethod
    def from_dict(cls, values: dict) -> "Batch":
        return cls(**{**values, "as_of": date.fromisoformat(values["as_of"])})

    def progress(self, step: str) -> str:
        """What ``step`` did to this batch, in a line for the task log."""
        if self.rejected:
            return f"the export of {self.as_of}: {self.rejected}"
        done = {
            "keep_raw": f"raw export {'already kept' if self.raw_already_kept else 'kept'} at {self.raw_uri}",
            "validate_raw": "suite raw_hr_export passed" if self.validate else "suite raw_hr_export skipped",
            "stage_features": f"{self.rows} feature rows ({self.active} active, {self.rows - self.active} leaving) "
                              f"staged at {self.staged_uri}",
            "validate_features": "suite employee_features passed",
            "publish": f"published to {self.features_uri} ({self.features_bytes / 1e6:.1f} MB)",
        }[step]
        return f"the export of {self.as_of}: {done}"

    def raw_bytes(self, settings: Settings) -> bytes:
        if self.data is None:
            self.data = s3.get_bytes(settings, s3.parse_uri(self.raw_uri)[1])
        return self.data

    def features_payload(self, settings: Settings) -> bytes:
        if self.payload is None:
            self.payload = s3.get_bytes(settings, s3.parse_uri(self.staged_uri)[1])
        return self.payload


def _keep_raw(settings: Settings, batch: Batch, held: lease.Lease) -> None:
    if batch.data is None:
        batch.data, batch.file_name = s3.read_source(settings, batch.source)
    batch.raw_uri, batch.raw_already_kept = keep_raw(settings, batch.as_of, batch.data, batch.file_name)


def _validate_raw(settings: Settings, batch: Batch, held: lease.Lease) -> None:
    if not batch.validate:
        return
    outcome = gate.validate(settings, "raw", batch.source, as_of=batch.as_of, data=batch.raw_bytes(settings),
                            row_tolerance=batch.row_tolerance, kept_at=batch.raw_uri)
    if not outcome.passed:
        raise gate.ValidationFailed(outcome)


def _stage_features(settings: Settings, batch: Batch, held: lease.Lease) -> None:
    table, batch.payload, batch.staged_uri = stage_features(settings, batch.raw_bytes(settings), batch.source,
                                                           batch.as_of)
    batch.rows, batch.features_bytes = table.num_rows, len(batch.payload)
    batch.active = pc.sum(pc.cast(table[spec.ACTIVE], pa.int64())).as_py() or 0


def _validate_features(settings: Settings, batch: Batch, held: lease.Lease) -> None:
    # Always, --no-validate included: nothing the features suite rejects is ever published.
    outcome = gate.validate(settings, "features", batch.staged_uri, as_of=batch.as_of,
                            data=batch.features_payload(settings), row_tolerance=batch.row_tolerance,
                            previous_rows=gate.previous_row_count(settings, batch.as_of),
                            publish_report=batch.validate)
    if not outcome.passed:
        raise gate.ValidationFailed(outcome)


def _publish(settings: Settings, batch: Batch, held: lease.Lease) -> None:
    held.check()  # a run whose lease expired and was taken over must not publish over the newer run
    batch.features_uri = publish(settings, batch.as_of, batch.staged_uri)


_STEP_FUNCTIONS = {"keep_raw": _keep_raw, "validate_raw": _validate_raw, "stage_features": _stage_features,
                   "validate_features": _validate_features, "publish": _publish}
if set(_STEP_FUNCTIONS) != set(INGEST_STEPS):
    raise ImportError(f"pipeline.sequence.INGEST_STEPS {INGEST_STEPS} and the step functions "
                      f"{sorted(_STEP_FUNCTIONS)} differ")
# The one sequence, in the order of pipeline.sequence.INGEST_STEPS.
STEPS = tuple((name, _STEP_FUNCTIONS[name]) for name in INGEST_STEPS)

# A lease the nightly DAG holds from its first ingest task to its last: long enough to wait for the
# next task (or a retry's backoff); a run that died lets another run in after this.
SPANNING_LEASE_SECONDS = 1800.0

REJECTIONS = (gate.ValidationFailed, schema.ContractError)  # bad data: retrying cannot help


def ingest(settings: Settings, source: str, as_of: date, validate: bool = True,
           row_tolerance: float = 0.25) -> IngestResult:
    """Run every ingest step for one export. Raises gate.ValidationFailed (batch quarantined),
    schema.ContractError (unreadable export), s3.StorageError, or lease.Busy / lease.LeaseLost
    (another run of the same date)."""
    started = time.perf_counter()
    check_extraction_date(source, as_of, future=not validate)
    data, file_name = s3.read_source(settings, source)
    batch = Batch(as_of, source, file_name, validate=validate, row_tolerance=row_tolerance, data=data)
    return _run_all(settings, batch, f"ingest of {as_of} ({file_name})", started)


def _run_all(settings: Settings, batch: Batch, what: str, started: float) -> IngestResult:
    with s3.storage_errors(settings, f"store the run for {batch.as_of} (nothing is published until the last step; "
                                     "re-run when S3 answers)"):
        s3.ensure_bucket(settings)
        # One run per extraction date at a time, across machines: a second one stops (lease.Busy)
        # before writing anything, so exactly one version is published and exit codes tell the truth.
        with lease.Lease(settings, layout.ingest_lock_key(settings, batch.as_of), what) as held:
            for _, step in STEPS:
                step(settings, batch, held)
    log.info("ingest %s as of %s: %d rows -> %s", batch.file_name, batch.as_of, batch.rows, batch.features_uri)
    return IngestResult(
        as_of=batch.as_of.isoformat(), source=batch.source, rows_in=batch.rows, rows_out=batch.rows,
        active=batch.active, leavers=batch.rows - batch.active, raw_uri=batch.raw_uri,
        raw_already_kept=batch.raw_already_kept, features_uri=batch.features_uri,
        features_bytes=batch.features_bytes, seconds=time.perf_counter() - started, validated=batch.validate)


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
    batch = Batch(as_of, source, file_name, row_tolerance=row_tolerance, data=data)
    result = _run_all(settings, batch, f"recompute of {as_of}", started)
    log.info("recomputed the partition of %s from %s with the current code", as_of, source)
    return result


def plan_batches(settings: Settings, planned: list[tuple[date, str]], row_tolerance: float) -> list[dict]:
    """The batches of a run that takes the steps one task at a time, oldest first."""
    batches = []
    for as_of, source in planned:
        check_extraction_date(source, as_of)
        batches.append(Batch(as_of, source, source.rsplit("/", 1)[-1], row_tolerance=row_tolerance).as_dict())
    return batches


def run_step(settings: Settings, name: str, batches: list[dict], holder: str) -> list[dict]:
    """Run step ``name`` for each batch, oldest first, in a process of its own (a DAG task).

    Each batch's date stays leased to ``holder`` (the DAG run) from the first step to the last,
    across processes: this step resumes the lease and, unless it is the last step, leaves it for
    the next. A batch that the data rejects (validation, contract) is quarantined by its step and
    marked ``rejected``: it and every newer batch go no further (nothing newer is published before
    it), while older ones go on to be published. Anything else (S3, the lease) raises, keeping the
    lease for the task's retry."""
    step = _STEP_FUNCTIONS[name]
    last = name == INGEST_STEPS[-1]
    out, stopped = [], None
    for item in batches:
        batch = Batch.from_dict(item)
        if batch.rejected or stopped is not None:
            if not batch.rejected:
                batch.rejected = f"not ingested: the older export of {stopped} was rejected"
                _release(lease.Lease(settings, layout.ingest_lock_key(settings, batch.as_of), "", holder=holder))
            out.append(batch.as_dict())
            stopped = stopped or batch.as_of
            continue
        held = lease.Lease(settings, layout.ingest_lock_key(settings, batch.as_of),
                           f"nightly ingest of {batch.as_of} ({batch.file_name})", seconds=SPANNING_LEASE_SECONDS,
                           holder=holder)
        with s3.storage_errors(settings, f"{name} for {batch.as_of} (re-run the task when S3 answers)"):
            if name == INGEST_STEPS[0]:
                s3.ensure_bucket(settings)
            held.acquire()
            try:
                step(settings, batch, held)
            except REJECTIONS as exc:
                batch.rejected = f"{name}: {exc}"
                stopped = batch.as_of
                held.release()
            except BaseException:
                held.suspend()
                raise
            else:
                held.release() if last else held.suspend()
        out.append(batch.as_dict())
    return out


def _release(held: lease.Lease) -> None:
    """Release a lease this holder may hold for a batch it will not take further."""
    try:
        held.acquire()
    except lease.Busy:
        return  # held by another run: not ours to release
    held.release()
