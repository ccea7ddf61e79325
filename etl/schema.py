"""The raw HR export contract: the IBM HR Analytics attrition format, one CSV per extraction date.

Reading enforces the contract (every column present, each parseable as its type) and fails with
a message naming the file and the column. Value-level rules (ranges, domains, uniqueness) are the
validation gate's job (``expectations/``).
"""

from __future__ import annotations

import io
import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# Column -> Arrow type, in the order the HR system exports them.
RAW_COLUMNS: dict[str, pa.DataType] = {
    "Age": pa.int64(),
    "Attrition": pa.string(),
    "BusinessTravel": pa.string(),
    "DailyRate": pa.int64(),
    "Department": pa.string(),
    "DistanceFromHome": pa.int64(),
    "Education": pa.int64(),
    "EducationField": pa.string(),
    "EmployeeCount": pa.int64(),
    "EmployeeNumber": pa.int64(),
    "EnvironmentSatisfaction": pa.int64(),
    "Gender": pa.string(),
    "HourlyRate": pa.int64(),
    "JobInvolvement": pa.int64(),
    "JobLevel": pa.int64(),
    "JobRole": pa.string(),
    "JobSatisfaction": pa.int64(),
    "MaritalStatus": pa.string(),
    "MonthlyIncome": pa.int64(),
    "MonthlyRate": pa.int64(),
    "NumCompaniesWorked": pa.int64(),
    "Over18": pa.string(),
    "OverTime": pa.string(),
    "PercentSalaryHike": pa.int64(),
    "PerformanceRating": pa.int64(),
    "RelationshipSatisfaction": pa.int64(),
    "StandardHours": pa.int64(),
    "StockOptionLevel": pa.int64(),
    "TotalWorkingYears": pa.int64(),
    "TrainingTimesLastYear": pa.int64(),
    "WorkLifeBalance": pa.int64(),
    "YearsAtCompany": pa.int64(),
    "YearsInCurrentRole": pa.int64(),
    "YearsSinceLastPromotion": pa.int64(),
    "YearsWithCurrManager": pa.int64(),
}

# The only raw columns the feature transform reads; everything else (and with it every personal
# attribute the model does not need) is dropped at read time and never leaves the ETL.
USED_COLUMNS: tuple[str, ...] = (
    "EmployeeNumber", "Attrition", "OverTime", "MonthlyIncome", "JobLevel", "TotalWorkingYears",
    "YearsAtCompany", "YearsSinceLastPromotion", "EnvironmentSatisfaction", "JobSatisfaction",
    "RelationshipSatisfaction", "WorkLifeBalance",
)


# Exports are named for their extraction date: hr_export_YYYY-MM-DD.csv.
EXPORT_NAME = re.compile(r"hr_export_(\d{4}-\d{2}-\d{2})\.csv")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def export_date(name: str) -> date | None:
    """The extraction date an export's file name (or path, or key) states, if it follows the naming."""
    match = EXPORT_NAME.fullmatch(name.replace("\\", "/").rsplit("/", 1)[-1])
    if not match:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def safe_name(name: str) -> str:
    """A file name fit for S3 keys and logs: letters, digits, '.', '_' and '-'; anything else '_'."""
    cleaned = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1])[:200].lstrip(".")
    return cleaned or "export.csv"


# Columns whose cell values may appear in a report, a quarantine reason, a log line or an alert:
# HR categories and scales that identify nobody. Every other column (pay, demographics, the
# employee number, anything unknown) is reported by column, rule and count only.
VALUES_SHOWN: frozenset[str] = frozenset({
    "Attrition", "BusinessTravel", "Department", "JobRole", "OverTime", "EnvironmentSatisfaction",
    "JobSatisfaction", "RelationshipSatisfaction", "WorkLifeBalance", "JobInvolvement", "JobLevel",
    "PerformanceRating", "EmployeeCount", "StandardHours",
})


class ContractError(ValueError):
    """The export does not follow the raw contract. The message names the file, column and problem."""


# Far above any real export (35 columns, rows of about 200 bytes) and far below what hurts: a
# hostile file is refused before a parser spends gigabytes on it.
MAX_COLUMNS = 200
MAX_LINE_BYTES = 64 * 1024


def check_shape(data: bytes, source: str) -> None:
    """Line endings, line length and column count, before any parser reads the file."""
    newline = data.find(b"\n", 0, MAX_LINE_BYTES + 1)
    first_line = data[: newline if newline >= 0 else MAX_LINE_BYTES + 1]
    if b"\r" in first_line.rstrip(b"\r"):
        raise ContractError(f"{source}: lines end with a lone CR (old Mac format); save the export as CSV with LF "
                            "or CRLF line endings")
    columns = first_line.count(b",") + 1
    if columns > MAX_COLUMNS:
        raise ContractError(f"{source}: header has {'at least ' if newline < 0 else ''}{columns} columns; an export "
                            f"has {len(RAW_COLUMNS)} and at most {MAX_COLUMNS} are read")
    start, line = 0, 1
    while True:
        end = data.find(b"\n", start, start + MAX_LINE_BYTES + 1)
        if end < 0:
            if len(data) - start > MAX_LINE_BYTES:
                raise ContractError(f"{source}: line {line} is longer than {MAX_LINE_BYTES} bytes; an export row "
                                    "is a few hundred (a truncated or corrupted file?)")
            return
        start, line = end + 1, line + 1


def _listed(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def read_header(data: bytes, source: str) -> list[str]:
    """The export's column names as every reader takes them (BOM, quotes and spaces removed)."""
    check_shape(data, source)
    first_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first_line.strip():
        raise ContractError(f"{source}: empty file, expected a header with {len(RAW_COLUMNS)} columns")
    try:
        text = first_line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ContractError(f"{source}: header is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return [c.strip().strip('"') for c in text.split(",")]


def check_header(columns: list[str], source: str) -> None:
    missing = [c for c in RAW_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in RAW_COLUMNS]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {_listed(missing)}")
    if unknown:
        problems.append(f"unknown column(s) {_listed(unknown)}")
    if duplicated:
        problems.append(f"duplicated column(s) {_listed(duplicated)}")
    if problems:
        raise ContractError(f"{source}: " + "; ".join(problems))


# A whole number as the HR system writes one: the gate (expectations.gate) applies the same rule.
WHOLE_NUMBER = r"^[+-]?[0-9]+$"


def normalize(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """What every reader of an export does to a cell first: surrounding whitespace is not data."""
    return pc.utf8_trim_whitespace(text)


def read_export(data: bytes, source: str, columns: tuple[str, ...] | None = USED_COLUMNS) -> pa.Table:
    """Parse one export's bytes into an Arrow table of ``columns`` (all when None), typed per the contract.

    Cells are read as text, normalized (``normalize``) and only then typed, exactly as the
    validation gate reads them, so a file that passes the gate is a file whose features are right:
    `" Yes"` is `Yes`, and `1.0` or an empty cell in an integer column is refused, never guessed.
    Errors name the column and count the rows, never echo cell values (they can be pay or age).
    """
    header = read_header(data, source)
    check_header(header, source)
    include = list(columns) if columns is not None else list(RAW_COLUMNS)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(encoding="utf8", block_size=16 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in include},
                include_columns=include,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ContractError(f"{source}: {_explain_arrow_error(str(exc), header)}") from exc
    if table.num_rows == 0:
        raise ContractError(f"{source}: header only, no employee rows")
    typed = []
    for name in include:
        text = normalize(table[name])
        if pa.types.is_integer(RAW_COLUMNS[name]):
            bad = table.num_rows - pc.sum(pc.match_substring_regex(text, WHOLE_NUMBER)).as_py()
            if bad:
                raise ContractError(f"{source}: column {name}: {bad} row(s) empty or not a whole number")
            text = pc.cast(text, RAW_COLUMNS[name])
        typed.append(text)
    return pa.table(typed, names=include)


def redact_arrow_error(message: str) -> str:
    """Arrow's parse errors quote the offending row (age, pay, ...): keep what they say about structure."""
    return re.sub(r"(got \d+):.*$", r"\1", message.splitlines()[0] if message else message)[:300]


def _explain_arrow_error(message: str, header: list[str]) -> str:
    """Arrow names columns by position in the file ('CSV column #18'); say the name."""
    message = redact_arrow_error(message)
    match = re.search(r"column #(\d+)", message)
    if match and int(match.group(1)) < len(header):
        return f"column {header[int(match.group(1))]}: {message}"
    return message


def read_export_file(path: Path, columns: tuple[str, ...] | None = USED_COLUMNS) -> pa.Table:
    return read_export(Path(path).read_bytes(), str(path), columns)
