"""The raw HR export contract: the IBM HR Analytics attrition format, one CSV per extraction date.

Reading enforces the contract (every column present, each parseable as its type) and fails with
a message naming the file and the column. Value-level rules (ranges, domains, uniqueness) are the
validation gate's job (``expectations/``).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
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


class ContractError(ValueError):
    """The export does not follow the raw contract. The message names the file, column and problem."""


def _header(data: bytes, source: str) -> list[str]:
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
        problems.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}")
    if duplicated:
        problems.append(f"duplicated column(s) {', '.join(duplicated)}")
    if problems:
        raise ContractError(f"{source}: " + "; ".join(problems))


def read_export(data: bytes, source: str, columns: tuple[str, ...] | None = USED_COLUMNS) -> pa.Table:
    """Parse one export's bytes into an Arrow table of ``columns`` (all when None), typed per the contract."""
    header = _header(data, source)
    check_header(header, source)
    include = list(columns) if columns is not None else list(RAW_COLUMNS)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(encoding="utf8", block_size=16 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={c: RAW_COLUMNS[c] for c in include},
                include_columns=include,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ContractError(f"{source}: {_explain_arrow_error(str(exc), header)}") from exc
    if table.num_rows == 0:
        raise ContractError(f"{source}: header only, no employee rows")
    return table


def _explain_arrow_error(message: str, header: list[str]) -> str:
    """Arrow names columns by position in the file ('CSV column #18'); say the name."""
    match = re.search(r"column #(\d+)", message)
    if match and int(match.group(1)) < len(header):
        return f"column {header[int(match.group(1))]}: {message}"
    return message


def read_export_file(path: Path, columns: tuple[str, ...] | None = USED_COLUMNS) -> pa.Table:
    return read_export(Path(path).read_bytes(), str(path), columns)
