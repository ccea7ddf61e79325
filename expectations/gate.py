"""The validation gate: Great Expectations suites on a raw export or a features partition.

A failed validation stops the pipeline before anything is published or served:

* the batch is copied to ``<quarantine prefix>/<suite>/extraction_date=D/<run id>/`` with a
  machine-readable ``reason.json`` (which expectation, which column, how many rows, sample values);
* a human-readable report (Great Expectations Data Docs) is written locally and next to the data on S3;
* the caller gets an Outcome whose ``message()`` names the file, the column and the rule.

Expectations with severity "warning" are reported without blocking. Checks that must pass before
a file can even be read as a table (encoding, a parseable row structure, each cell parsing as its
column's type, the extraction date) are reported in the same form under rules named after them.

Great Expectations is slow to import, so it is imported only here, where validation runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core import s3
from core.settings import Settings
from etl.layout import list_partitions, partition_key
from etl.schema import (RAW_COLUMNS, VALUES_SHOWN, WHOLE_NUMBER, ContractError, normalize, read_header,
                        redact_arrow_error, safe_name)
from expectations import report as html_report

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SUITES = {"raw": "raw_hr_export", "features": "employee_features"}
SAMPLE_SIZE = 10
DATE_IN_PATH = re.compile(r"(?:hr_export_|extraction_date=)(\d{4}-\d{2}-\d{2})")


@dataclass
class Failure:
    rule: str
    column: str | None
    severity: str  # "critical" blocks, "warning" is reported
    unexpected_count: int | None
    sample: list = field(default_factory=list)
    detail: str = ""

    def describe(self) -> str:
        where = f"column {self.column}: " if self.column else ""
        count = f" ({self.unexpected_count} rows)" if self.unexpected_count is not None else ""
        sample = f", e.g. {self.sample[:5]}" if self.sample else ""
        detail = f" - {self.detail}" if self.detail else ""
        return f"{where}{self.rule}{count}{sample}{detail}"


@dataclass
class Outcome:
    suite: str
    source: str
    as_of: str | None
    rows: int | None
    failures: list[Failure]
    warnings: list[Failure]
    report_path: str | None = None
    report_uri: str | None = None
    checked: int = 0  # expectations of the suite evaluated
    quarantine_uri: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({len(self.failures)} rule(s) broken)"
        lines = [f"{self.source}: suite {self.suite} {verdict}" + (f", {self.rows} rows" if self.rows is not None else "")]
        lines += [f"  error: {f.describe()}" for f in self.failures]
        lines += [f"  warning: {w.describe()}" for w in self.warnings]
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        if self.report_uri:
            lines.append(f"  report on S3: {self.report_uri}")
        if self.quarantine_uri:
            lines.append(f"  quarantined at: {self.quarantine_uri}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


class ValidationFailed(RuntimeError):
    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message())
        self.outcome = outcome


# --- reading batches -------------------------------------------------------------------------

def as_of_from_path(source: str) -> date | None:
    match = DATE_IN_PATH.search(source)
    return date.fromisoformat(match.group(1)) if match else None


def _jsonable(values) -> list:
    out = []
    for v in values:
        if isinstance(v, tuple):
            out.append([_jsonable([x])[0] for x in v])
        elif hasattr(v, "item"):
            out.append(v.item())
        elif isinstance(v, (datetime, date, pd.Timestamp)):
            out.append(v.isoformat())
        else:
            out.append(v)
    return out


def shown(column: str, values) -> list:
    """Sample values of a column, only where its values identify nobody (etl.schema.VALUES_SHOWN)."""
    return _jsonable(list(values)[:SAMPLE_SIZE]) if column in VALUES_SHOWN else []


def load_raw(data: bytes) -> tuple[pd.DataFrame | None, list[Failure]]:
    """The export as a typed frame for the suite, plus failures found while reading it.

    Every column is read as text first so that one bad cell is reported (with its value) instead
    of aborting the read; numeric columns are then parsed and unparseable cells become nulls.
    """
    if not data.strip():
        return None, [Failure("file is empty", None, "critical", None, detail="expected a header and employee rows")]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return None, [Failure("encoding: UTF-8", None, "critical", None, [data[exc.start:exc.end].hex()],
                              detail=f"line {line}, byte {exc.start}: {exc.reason}; re-export the file as UTF-8")]
    # Every column as text, as the reader does: type inference would turn "1.0" into 1 unseen.
    try:
        as_text = {name: pa.string() for name in read_header(data, "batch")}
    except ContractError as exc:
        return None, [Failure("header", None, "critical", None, detail=str(exc).removeprefix("batch: "))]
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(encoding="utf8"),
                               convert_options=pacsv.ConvertOptions(column_types=as_text, strings_can_be_null=False,
                                                                    auto_dict_encode=False,
                                                                    include_missing_columns=False),
                               parse_options=pacsv.ParseOptions(newlines_in_values=False))
    except pa.ArrowInvalid as exc:
        # Arrow quotes the offending row (age, pay, ...): keep only what it says about the structure.
        text = redact_arrow_error(str(exc))
        return None, [Failure("row structure", None, "critical", None,
                              detail=f"{text} (a truncated or malformed row)")]
    table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
    frame = table.to_pandas()
    failures: list[Failure] = []
    if data.startswith(b"\xef\xbb\xbf"):
        failures.append(Failure("byte-order mark", None, "warning", None,
                                detail="the file starts with a UTF-8 BOM; it was ignored when reading the header"))
    for column, typ in RAW_COLUMNS.items():
        if column not in frame.columns:
            continue
        text = pd.Series(normalize(pa.chunked_array([pa.array(frame[column], pa.string())])).to_pylist(),
                         index=frame.index, dtype=object)
        text = text.where(text != "", None)
        if pa.types.is_integer(typ):
            # The reader's rule (etl.schema.WHOLE_NUMBER): "1.0" or "1e3" is refused here, not parsed.
            whole = text.str.fullmatch(WHOLE_NUMBER.strip("^$")).fillna(False).astype(bool)
            bad = text[~whole & text.notna()]
            if len(bad):
                failures.append(Failure("type: integer", column, "critical", int(len(bad)),
                                        shown(column, bad.unique()), detail="values that are not whole numbers"))
            frame[column] = pd.to_numeric(text.where(whole), errors="coerce")
        else:
            frame[column] = text
    return frame, failures


class UnreadableBatch(ValueError):
    """The batch is not what its suite validates (a CSV given to the features suite, say)."""


def load_features(data: bytes) -> pd.DataFrame:
    try:
        return pq.read_table(io.BytesIO(data)).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableBatch(f"not a Parquet features partition ({redact_arrow_error(str(exc))}); "
                              "the features suite validates part-0.parquet files, the raw suite CSV exports") from None


# --- running the suite -------------------------------------------------------------------------

def load_suite(name: str) -> dict:
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


def _columns_of(expectation: dict) -> list[str]:
    kwargs = expectation["kwargs"]
    return [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]


# No cell values in results or Data Docs: they are kept on S3 next to the data, beyond raw/.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
# A first pass asks only whether each expectation held: computing the counts and observed values
# of SUMMARY doubled the validation of a passing 2,000-row export (0.82 s to 0.43 s per ingest).
PASS_FAIL = {"result_format": "BOOLEAN_ONLY"}

# Great Expectations objects, built once per process and reused by every batch it validates: a
# backfill validates dozens of exports, and building a context and its suites each time cost more
# than validating.
_GX: dict = {}


def _checkpoint(suite_name: str, present: frozenset, docs_dir: Path | None):
    """(context, checkpoint) validating ``suite_name``'s expectations on the columns ``present``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if "context" not in _GX:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GX.update(context=context, sites={}, checkpoints={})
    context = _GX["context"]
    site = None
    if docs_dir is not None:
        site = _GX["sites"].get(docs_dir)
        if site is None:
            docs_dir.mkdir(parents=True, exist_ok=True)
            site = _GX["sites"][docs_dir] = f"site{len(_GX['sites'])}"
            context.add_data_docs_site(site_name=site, site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
    key = (suite_name, present)
    if key not in _GX["checkpoints"]:
        spec = load_suite(suite_name)
        # Expectations on a missing column would only raise; the column-set expectation reports it.
        spec["expectations"] = [e for e in spec["expectations"] if set(_columns_of(e)) <= present]
        # A suite's name is unique in a context: a batch with other columns gets a variant of it.
        seen = any(name == suite_name for name, _ in _GX["checkpoints"])
        variant = f"{suite_name}_{len(_GX['checkpoints'])}" if seen else suite_name
        suite = context.suites.add(gx.ExpectationSuite(**{**spec, "name": variant}))
        batch = (context.data_sources.add_pandas(f"batch_{len(_GX['checkpoints'])}").add_dataframe_asset("frame")
                 .add_batch_definition_whole_dataframe("all"))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=variant, data=batch, suite=suite))
        _GX["checkpoints"][key] = context.checkpoints.add(gx.Checkpoint(
            name=f"{variant}_gate", validation_definitions=[definition], actions=[], result_format=RESULT_FORMAT))
    return context, _GX["checkpoints"][key], site


def run_suite(suite_name: str, frame: pd.DataFrame, parameters: dict, docs_dir: Path | None):
    """Validate ``frame``; return (failures, warnings, Data Docs page of a failing batch, expectations checked)."""
    context, checkpoint, site = _checkpoint(suite_name, frozenset(frame.columns), docs_dir)
    # The batch is validated directly: the checkpoint's run would first compare every stored object
    # with its definition (a fifth of the time of a 78-expectation suite) and store the result,
    # which only the Data Docs of a failing batch read; such a batch runs through the checkpoint below.
    definition = checkpoint.validation_definitions[0]
    batch = definition.batch_definition.get_batch(batch_parameters={"dataframe": frame})
    validated = batch.validate(definition.suite, result_format=PASS_FAIL, expectation_parameters=parameters)
    if not all(r.success for r in validated.results):  # a failure or warning is reported with its counts
        validated = batch.validate(definition.suite, result_format=RESULT_FORMAT, expectation_parameters=parameters)
    failures, warnings = [], []
    for r in validated.results:
        if r.success:
            continue
        config = r.expectation_config
        severity = getattr(config.severity, "value", str(config.severity)).lower()
        kwargs = config.kwargs
        column = kwargs.get("column") or (f"{kwargs['column_A']}, {kwargs['column_B']}" if "column_A" in kwargs else None)
        details = r.result or {}
        detail = (config.meta or {}).get("why", "")
        if r.exception_info and r.exception_info.get("raised_exception"):
            detail = f"{detail}; raised {r.exception_info.get('exception_message')}"
        if config.type == "expect_table_columns_to_match_set":
            observed = details.get("observed_value") or []
            expected = kwargs["column_set"]
            missing = [c for c in expected if c not in observed]
            unknown = [c for c in observed if c not in expected]
            detail = f"missing: {missing or 'none'}; unknown: {unknown or 'none'}"
        elif "observed_value" in details:
            detail = f"{detail}; observed {details['observed_value']}"
        failure = Failure(config.type, column, severity, details.get("unexpected_count"), [], detail.strip("; "))
        (failures if severity == "critical" else warnings).append(failure)
    report = None
    if site is not None and failures:
        # Data Docs take longer to render than the validation itself: they are built for a batch
        # that fails, where someone reads every expectation; every batch gets the report page.
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        result = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
        for identifier, run_result in result.run_results.items():
            context.build_data_docs(site_names=[site], build_index=True, resource_identifiers=[
                identifier, ExpectationSuiteIdentifier(name=run_result.suite_name)])
            urls = context.get_docs_sites_urls(resource_identifier=identifier, site_names=[site])
            report = next((u["site_url"].removeprefix("file://") for u in urls if u.get("site_url")), None)
    return failures, warnings, report, len(validated.results)


# --- the gate ---------------------------------------------------------------------------------

def previous_row_count(settings: Settings, as_of: date | None) -> int | None:
    """Rows of the latest published features partition before ``as_of`` (from object metadata)."""
    earlier = [d for d in list_partitions(settings) if as_of is None or d < as_of]
    if not earlier:
        return None
    head = s3.client(settings).head_object(Bucket=settings.s3_bucket, Key=partition_key(settings, earlier[-1]))
    rows = head.get("Metadata", {}).get("rows")
    return int(rows) if rows else None


# More leavers than this in one extraction is a broken export (an HR system that marks everyone as
# gone), not news: serving it would remove that many employees from the online store at once.
MAX_LEAVER_SHARE = 0.20
MIN_ROWS_FOR_LEAVER_SHARE = 50  # below this a share says little (a sample file, a tiny team)


def implausible_attrition(frame: pd.DataFrame) -> Failure | None:
    if "Attrition" not in frame.columns or len(frame) < MIN_ROWS_FOR_LEAVER_SHARE:
        return None
    leavers = int((frame["Attrition"] == "Yes").sum())
    if leavers <= MAX_LEAVER_SHARE * len(frame):
        return None
    return Failure("implausible attrition", "Attrition", "critical", leavers, [],
                   f"{leavers} of {len(frame)} employees ({leavers / len(frame):.0%}) leave in one extraction; "
                   f"at most {MAX_LEAVER_SHARE:.0%} is plausible")


def row_count_bounds(previous: int | None, tolerance: float) -> dict:
    if previous is None:
        return {"min_rows": 1, "max_rows": None}
    return {"min_rows": max(1, int(previous * (1 - tolerance))), "max_rows": int(previous * (1 + tolerance)) + 1}


def _publish_report(settings: Settings, report: str, docs_dir: Path, prefix: str) -> str:
    """Upload the run's Data Docs page, the site index and its styles next to the data."""
    page = Path(report)
    files = [page, docs_dir / "index.html", *sorted((docs_dir / "static" / "styles").glob("*.css"))]
    uri = None
    for path in files:
        if not path.exists():
            continue
        relative = path.relative_to(docs_dir).as_posix()
        written = s3.put_bytes(settings, f"{prefix}/{relative}", path.read_bytes(),
                               content_type="text/html" if path.suffix == ".html" else "text/css")
        if path == page:
            uri = written.uri
    return uri or ""


def validate(settings: Settings, suite: str, source: str, *, as_of: date | None = None, data: bytes | None = None,
             previous_rows: int | None = None, row_tolerance: float = 0.25, quarantine: bool = True,
             publish_report: bool = True, kept_at: str | None = None) -> Outcome:
    """Validate one batch against suite "raw" or "features"; quarantine it when it fails.

    ``kept_at``: the batch is already stored there (the raw export an ingest kept); the quarantine
    then records that location instead of storing the bytes a second time."""
    started = time.perf_counter()
    suite_name = SUITES[suite]
    as_of = as_of or as_of_from_path(source)
    data = s3.read_source(settings, source)[0] if data is None else data
    pre_failures: list[Failure] = []
    today = datetime.now(timezone.utc).date()
    if as_of is not None and as_of > today:
        pre_failures.append(Failure("extraction date not in the future", None, "critical", None, [as_of.isoformat()],
                                    f"today is {today} UTC"))
    pre_warnings: list[Failure] = []
    if suite == "raw":
        frame, read_failures = load_raw(data)
        if frame is not None and (attrition := implausible_attrition(frame)):
            read_failures.append(attrition)
        pre_failures += [f for f in read_failures if f.severity == "critical"]
        pre_warnings += [f for f in read_failures if f.severity != "critical"]
    else:
        frame = load_features(data)
    if previous_rows is None and publish_report:
        previous_rows = previous_row_count(settings, as_of)
    parameters = {**row_count_bounds(previous_rows, row_tolerance), "now": pd.Timestamp(datetime.now(timezone.utc))}
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    docs_dir = settings.local_dir / "reports" / "data_docs"
    failures, warnings, report, checked = [], [], None, 0
    if frame is not None:
        failures, warnings, report, checked = run_suite(suite_name, frame, parameters, docs_dir)
    # A cell that failed to parse is also null; the type failure already says so, with the value.
    typed = {(f.column, f.unexpected_count) for f in pre_failures if f.rule.startswith("type:")}
    failures = [f for f in failures
                if not (f.rule == "expect_column_values_to_not_be_null" and (f.column, f.unexpected_count) in typed)]
    outcome = Outcome(suite_name, source, as_of.isoformat() if as_of else None,
                      None if frame is None else len(frame), pre_failures + failures, pre_warnings + warnings,
                      checked=checked)
    partition = f"extraction_date={as_of.isoformat() if as_of else 'unknown'}"
    reports = f"validation-reports/{suite_name}/{partition}/{run_id}"
    data_docs = None
    if publish_report:
        if report:
            data_docs = _publish_report(settings, report, docs_dir, reports)
        outcome.report_uri = f"s3://{settings.s3_bucket}/{reports}/{html_report.REPORT_FILE}"
    if quarantine and not outcome.passed:
        prefix = f"{settings.s3_quarantine_prefix}/{suite_name}/{partition}/{run_id}"
        if kept_at is None:
            name = safe_name(source.rstrip("/").rsplit("/", 1)[-1] or "batch")
            if name == "reason.json":
                name = "batch-reason.json"  # the batch must never overwrite its own reason
            kept_at = s3.put_bytes(settings, f"{prefix}/{name}", data).uri
        reason = {"suite": suite_name, "source": source, "batch": kept_at, "extraction_date": outcome.as_of,
                  "rows": outcome.rows,
                  "failures": [asdict(f) for f in outcome.failures], "warnings": [asdict(w) for w in outcome.warnings],
                  "report": outcome.report_uri, "quarantined_at": run_id}
        s3.put_bytes(settings, f"{prefix}/reason.json", json.dumps(reason, indent=2, default=str).encode(),
                     content_type="application/json")
        outcome.quarantine_uri = f"s3://{settings.s3_bucket}/{prefix}/"
    # The page a person opens (the log, reason.json and the alert link it): styled with no network.
    local = docs_dir / "runs" / suite_name / run_id / html_report.REPORT_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(html_report.render(outcome, os.path.relpath(report, local.parent) if report else None))
    outcome.report_path = str(local)
    if outcome.report_uri:
        relative = data_docs.split(f"/{reports}/", 1)[1] if data_docs else None
        s3.put_bytes(settings, f"{reports}/{html_report.REPORT_FILE}", html_report.render(outcome, relative).encode(),
                     content_type="text/html")
    outcome.seconds = time.perf_counter() - started
    if outcome.passed:
        log.info("%s: suite %s passed (%s rows, %d warnings) in %.2fs", source, suite_name, outcome.rows,
                 len(outcome.warnings), outcome.seconds)
    else:
        log.warning("%s: suite %s failed: %s", source, suite_name, "; ".join(f.describe() for f in outcome.failures))
    return outcome
