"""expectations.gate's rules that run before and around Great Expectations, on bytes and frames
built by hand: reading a raw export, the attrition and row-count bounds, what a report may show."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pytest

from expectations import gate
from helpers import ROOT

HEAD = (ROOT / "tests" / "data" / "ibm_hr_attrition_head.csv").read_bytes()  # starts with a UTF-8 BOM
HEADER, *ROWS = HEAD.removeprefix(b"\xef\xbb\xbf").decode().splitlines()
COLUMNS = HEADER.split(",")


def export(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def with_cell(row: str, column: str, value: str) -> str:
    cells = row.split(",")
    cells[COLUMNS.index(column)] = value
    return ",".join(cells)


def test_a_clean_export_reads_typed_with_only_the_bom_noted():
    frame, failures = gate.load_raw(HEAD)
    assert [f.rule for f in failures] == ["byte-order mark"] and failures[0].severity == "warning"
    assert failures[0].detail == "the file starts with a UTF-8 BOM; it was ignored when reading the header"
    assert len(frame) == len(ROWS) and frame["EmployeeNumber"].tolist()[:2] == [1, 2]
    assert frame["Attrition"].tolist()[0] == "Yes" and frame["MonthlyIncome"].dtype.kind in "iuf"
    frame, failures = gate.load_raw(export(*ROWS))
    assert failures == [] and len(frame) == len(ROWS)


def test_cells_that_are_not_whole_numbers_are_named_with_values_only_where_they_identify_nobody():
    rows = [with_cell(ROWS[0], "JobLevel", "2.0"), with_cell(ROWS[1], "MonthlyIncome", "5k"),
            with_cell(ROWS[2], "JobLevel", "1e3"), ROWS[3], with_cell(ROWS[4], "JobLevel", "")]
    frame, failures = gate.load_raw(export(*rows))
    by_column = {f.column: f for f in failures}
    assert set(by_column) == {"JobLevel", "MonthlyIncome"}
    assert by_column["JobLevel"].unexpected_count == 2 and by_column["JobLevel"].sample == ["2.0", "1e3"]
    assert by_column["MonthlyIncome"].unexpected_count == 1 and by_column["MonthlyIncome"].sample == [], "pay is never shown"
    assert all(f.rule == "type: integer" and f.severity == "critical" for f in failures)
    assert all(f.detail == "values that are not whole numbers" for f in failures)
    assert frame["JobLevel"].isna().tolist() == [True, False, True, False, True], "bad and empty cells become nulls"
    assert frame["MonthlyIncome"].isna().tolist()[:2] == [False, True]


@pytest.mark.parametrize("data, rule, detail", [
    (b"", "file is empty", "expected a header and employee rows"),
    (b"  \n\n", "file is empty", "expected a header and employee rows"),
    (b"Age,Attrition\r41,Yes\r", "header",
     "lines end with a lone CR (old Mac format); save the export as CSV with LF or CRLF line endings"),
    (export(ROWS[0] + ",extra,cells"), "row structure",
     "CSV parse error: Expected 35 columns, got 37 (a truncated or malformed row)"),
])
def test_unreadable_exports_say_exactly_why_without_a_frame(data, rule, detail):
    frame, failures = gate.load_raw(data)
    assert frame is None and [f.rule for f in failures] == [rule]
    assert failures[0].severity == "critical" and failures[0].detail == detail


def test_a_row_structure_error_never_quotes_the_row():
    frame, failures = gate.load_raw(export(ROWS[0] + ",extra,cells"))
    assert frame is None and failures[0].rule == "row structure"
    assert "Sales" not in failures[0].detail and "Female" not in failures[0].detail


def test_bad_encoding_names_the_line_and_the_bytes():
    frame, failures = gate.load_raw(b"a,b\n1,2\n3,\xff\n")
    assert frame is None and [(f.rule, f.severity) for f in failures] == [("encoding: UTF-8", "critical")]
    assert failures[0].sample == ["ff"]
    assert failures[0].detail == "line 3, byte 10: invalid start byte; re-export the file as UTF-8"
    assert gate.load_raw(b"\n\xff")[1][0].detail.startswith("line 2, byte 1:"), "lines count from the first byte"


def frame_with_leavers(rows: int, leavers: int) -> pd.DataFrame:
    return pd.DataFrame({"Attrition": ["Yes"] * leavers + ["No"] * (rows - leavers)})


def test_attrition_beyond_a_fifth_is_implausible_from_fifty_rows():
    assert gate.implausible_attrition(frame_with_leavers(100, 20)) is None
    failure = gate.implausible_attrition(frame_with_leavers(100, 21))
    assert (failure.rule, failure.column, failure.severity, failure.unexpected_count) == \
        ("implausible attrition", "Attrition", "critical", 21)
    assert failure.detail == "21 of 100 employees (21%) leave in one extraction; at most 20% is plausible"
    assert failure.sample == [], "no values of anyone"
    assert gate.implausible_attrition(frame_with_leavers(50, 11)) is not None
    assert gate.implausible_attrition(frame_with_leavers(49, 49)) is None, "too few rows to judge"
    assert gate.implausible_attrition(pd.DataFrame({"Other": range(100)})) is None


def test_row_count_bounds_around_the_previous_extraction():
    assert gate.row_count_bounds(None, 0.25) == {"min_rows": 1, "max_rows": None}
    assert gate.row_count_bounds(100, 0.25) == {"min_rows": 75, "max_rows": 126}
    assert gate.row_count_bounds(2, 0.9) == {"min_rows": 1, "max_rows": 4}
    assert gate.row_count_bounds(10, 0.33) == {"min_rows": 6, "max_rows": 14}


def test_the_extraction_date_is_read_from_export_and_partition_paths():
    assert gate.as_of_from_path("s3://b/inbox/hr_export_2026-10-31.csv") == date(2026, 10, 31)
    assert gate.as_of_from_path("features/extraction_date=2026-09-30/part-0.parquet") == date(2026, 9, 30)
    assert gate.as_of_from_path("export.csv") is None


def test_samples_are_json_values_and_only_for_columns_that_identify_nobody():
    import json

    values = [np.int64(3), pd.Timestamp("2026-10-31T00:00:00Z"), date(2026, 1, 2), ("a", np.float64(1.5)), "x"]
    sample = gate.shown("JobLevel", values)
    assert sample == [3, "2026-10-31T00:00:00+00:00", "2026-01-02", ["a", 1.5], "x"]
    assert json.dumps(sample) == '[3, "2026-10-31T00:00:00+00:00", "2026-01-02", ["a", 1.5], "x"]', "plain JSON types"
    assert gate.shown("JobLevel", range(20)) == list(range(gate.SAMPLE_SIZE))
    assert gate.shown("Age", [41]) == [] and gate.shown("EmployeeNumber", [1]) == []
    assert gate._jsonable([datetime(2026, 1, 2, 3, tzinfo=timezone.utc)]) == ["2026-01-02T03:00:00+00:00"]


def test_an_outcome_message_names_source_rules_report_and_quarantine():
    broken = gate.Failure("expect_column_values_to_be_between", "Age", "critical", 3, [17, 16], "plausible range")
    warned = gate.Failure("byte-order mark", None, "warning", None, detail="ignored")
    outcome = gate.Outcome("raw", "s3://b/hr_export_2026-10-31.csv", "2026-10-31", 300, [broken], [warned],
                           report_path="/tmp/r.html", report_uri="s3://b/r.html", quarantine_uri="s3://b/q/")
    assert not outcome.passed and outcome.as_dict()["passed"] is False
    assert outcome.message().splitlines() == [
        "s3://b/hr_export_2026-10-31.csv: suite raw FAILED (1 rule(s) broken), 300 rows",
        "  error: column Age: expect_column_values_to_be_between (3 rows), e.g. [17, 16] - plausible range",
        "  warning: byte-order mark - ignored",
        "  report: /tmp/r.html",
        "  report on S3: s3://b/r.html",
        "  quarantined at: s3://b/q/",
    ]
    clean = gate.Outcome("features", "part-0.parquet", None, None, [], [])
    assert clean.passed and clean.message() == "part-0.parquet: suite features passed"
    failed = gate.ValidationFailed(outcome)
    assert str(failed) == outcome.message() and failed.outcome is outcome
    many = gate.Failure("type: integer", "JobLevel", "critical", 7, [1, 2, 3, 4, 5, 6, 7])
    assert many.describe() == "column JobLevel: type: integer (7 rows), e.g. [1, 2, 3, 4, 5]"
    assert gate.Failure("file is empty", None, "critical", None).describe() == "file is empty"
