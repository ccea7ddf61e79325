"""The validation gate against the real S3 API server: every kind of bad input is stopped with a
clear error naming file, column and rule, quarantined with its reason, kept raw, and never served."""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from helpers import ROOT, run_cli
from core import s3
from pipeline import ingest as ing
from etl import layout
from etl.layout import partition_key, staging_prefix
from expectations import gate

pytestmark = pytest.mark.integration

GOOD_DAY, BAD_DAY = date(2026, 9, 30), date(2026, 10, 31)


@pytest.fixture(scope="module")
def gate_settings(stack, exports):
    """Its own features prefix, with the previous month published as the baseline."""
    settings = replace(stack, s3_features_prefix="gate-test/features", s3_raw_prefix="gate-test/raw",
                       s3_quarantine_prefix="gate-test/quarantine")
    ing.ingest(settings, str(exports[-2]), GOOD_DAY)
    return settings


@pytest.fixture(scope="module")
def good_export(exports) -> bytes:
    return exports[-1].read_bytes()


def frame_of(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def csv_of(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def edit(data: bytes, change) -> bytes:
    frame = frame_of(data)
    change(frame)
    return csv_of(frame)


def set_cells(column: str, value: str, rows=slice(0, 3)):
    def change(frame):
        frame.loc[frame.index[rows], column] = value
    return change


def duplicate_first_id(frame):
    frame.loc[frame.index[1], "EmployeeNumber"] = frame.loc[frame.index[0], "EmployeeNumber"]


CASES = {
    "missing column": (lambda d: csv_of(frame_of(d).drop(columns=["JobLevel"])), "JobLevel",
                       "expect_table_columns_to_match_set"),
    "extra unknown column": (lambda d: edit(d, lambda f: f.insert(3, "Salary2", "1")), "Salary2",
                             "expect_table_columns_to_match_set"),
    "renamed column": (lambda d: csv_of(frame_of(d).rename(columns={"OverTime": "Overtime"})), "Overtime",
                       "expect_table_columns_to_match_set"),
    "wrong type": (lambda d: edit(d, set_cells("MonthlyIncome", "abc")), "MonthlyIncome", "type: integer"),
    "null EmployeeNumber": (lambda d: edit(d, set_cells("EmployeeNumber", "")), "EmployeeNumber",
                            "expect_column_values_to_not_be_null"),
    "duplicate EmployeeNumber": (lambda d: edit(d, duplicate_first_id), "EmployeeNumber",
                                 "expect_column_values_to_be_unique"),
    "negative YearsAtCompany": (lambda d: edit(d, set_cells("YearsAtCompany", "-2")), "YearsAtCompany",
                                "expect_column_values_to_be_between"),
    "satisfaction 0": (lambda d: edit(d, set_cells("JobSatisfaction", "0")), "JobSatisfaction",
                       "expect_column_values_to_be_between"),
    "satisfaction 5": (lambda d: edit(d, set_cells("EnvironmentSatisfaction", "5")), "EnvironmentSatisfaction",
                       "expect_column_values_to_be_between"),
    "unknown category": (lambda d: edit(d, set_cells("Department", "Marketing & Sales")), "Department",
                         "expect_column_values_to_be_in_set"),
    "empty file": (lambda d: b"", None, "file is empty"),
    "header-only file": (lambda d: d.split(b"\n", 1)[0] + b"\n", None, "expect_table_row_count_to_be_between"),
    "truncated file": (lambda d: d[: len(d) // 2], None, "row structure"),
    "non-UTF-8 bytes": (lambda d: d.replace(b"Sales", b"S\xe4les", 3), None, "encoding: UTF-8"),
    "half the rows": (lambda d: b"\n".join(d.split(b"\n")[: len(d.split(b"\n")) // 2]) + b"\n", None,
                      "expect_table_row_count_to_be_between"),
    "everyone leaving": (lambda d: edit(d, set_cells("Attrition", "Yes", rows=slice(None))), "Attrition",
                         "implausible attrition"),
    "EmployeeNumber 1.0": (lambda d: edit(d, set_cells("EmployeeNumber", "1.0", rows=slice(0, 1))), "EmployeeNumber",
                           "type: integer"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_export_is_stopped_quarantined_and_not_served(case, gate_settings, good_export, tmp_path):
    mutate, column, rule = CASES[case]
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(mutate(good_export))
    baseline = s3.get_bytes(gate_settings, partition_key(gate_settings, GOOD_DAY))

    with pytest.raises(gate.ValidationFailed) as raised:
        ing.ingest(gate_settings, str(path), BAD_DAY)
    outcome = raised.value.outcome
    message = str(raised.value)
    assert str(path) in message
    assert any(f.rule == rule and (column is None or column in (f.column or "") + f.detail)
               for f in outcome.failures), message
    if column:
        assert column in message
    assert rule in message

    # Quarantined with a machine-readable reason.
    assert outcome.quarantine_uri
    _, prefix = s3.parse_uri(outcome.quarantine_uri)
    keys = s3.list_keys(gate_settings, prefix)
    assert keys == [f"{prefix}reason.json"], "the batch is stored once: in raw/, which the reason points at"
    reason = json.loads(s3.get_bytes(gate_settings, f"{prefix}reason.json"))
    assert reason["source"] == str(path) and any(f["rule"] == rule for f in reason["failures"])
    assert s3.get_bytes(gate_settings, s3.parse_uri(reason["batch"])[1]) == path.read_bytes()

    # Nothing lost: the raw export is kept as received. Nothing served: no partition for the bad
    # date, and the previous good partition is untouched.
    raw_keys = s3.list_keys(gate_settings, f"{gate_settings.s3_raw_prefix}/extraction_date={BAD_DAY}/")
    assert path.read_bytes() in {s3.get_bytes(gate_settings, k) for k in raw_keys}
    assert not s3.exists(gate_settings, partition_key(gate_settings, BAD_DAY))
    assert s3.get_bytes(gate_settings, partition_key(gate_settings, GOOD_DAY)) == baseline

    # The human-readable report exists locally and on S3, unreadable batches included, and names the rule.
    assert reason["report"] == outcome.report_uri and outcome.report_uri.endswith("/report.html")
    page = s3.get_bytes(gate_settings, s3.parse_uri(outcome.report_uri)[1]).decode()
    local = Path(outcome.report_path).read_text()
    for text in (page, local):
        assert html.escape(rule) in text and (column is None or column in text) and ">failed<" in text


def test_the_report_page_reads_offline_and_links_the_data_docs(gate_settings, good_export, tmp_path):
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(edit(good_export, set_cells("JobSatisfaction", "0")))
    with pytest.raises(gate.ValidationFailed) as raised:
        ing.ingest(gate_settings, str(path), BAD_DAY)
    outcome = raised.value.outcome
    key = s3.parse_uri(outcome.report_uri)[1]
    page = s3.get_bytes(gate_settings, key).decode()
    # Self-contained: styles inline, no script, nothing fetched from anywhere.
    assert "<style>" in page and "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(""", page), "the page fetches nothing"
    assert "expect_column_values_to_be_between" in page and "JobSatisfaction" in page
    assert html.escape(outcome.quarantine_uri) in page and html.escape(str(path)) in page
    # Its link to the full Data Docs page resolves next to it, on S3 and locally.
    link = re.search(r'href="([^"]+)"', page).group(1)
    assert s3.exists(gate_settings, f"{key.rsplit('/', 1)[0]}/{link}") and link.endswith(".html")
    local = Path(outcome.report_path)
    local_link = re.search(r'href="([^"]+)"', local.read_text()).group(1)
    assert (local.parent / local_link).resolve().is_file()
    # A passing batch gets its page too.
    passed = gate.validate(gate_settings, "raw", str(tmp_path / "good.csv"), as_of=GOOD_DAY, data=good_export,
                           quarantine=False)
    assert passed.passed and ">passed<" in s3.get_bytes(gate_settings, s3.parse_uri(passed.report_uri)[1]).decode()


def test_padded_categories_publish_the_true_counts(gate_settings, good_export, tmp_path):
    """' Yes' passes the gate and is read as Yes by the features: both read the same normalized cells."""
    frame = frame_of(good_export)
    truth = ((frame["Attrition"] == "Yes").sum(), (frame["OverTime"] == "Yes").sum())
    frame["Attrition"] = " " + frame["Attrition"]
    frame["OverTime"] = frame["OverTime"] + " "
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(csv_of(frame))
    result = ing.ingest(gate_settings, str(path), BAD_DAY)
    published = layout.read_partition(gate_settings, BAD_DAY).to_pandas()
    assert (result.leavers, int(published["overtime"].sum())) == truth
    assert int((~published["is_active"]).sum()) == truth[0]
    s3.client(gate_settings).delete_object(Bucket=gate_settings.s3_bucket, Key=partition_key(gate_settings, BAD_DAY))


def test_future_extraction_date_is_refused(gate_settings, good_export, tmp_path):
    future = date.today() + timedelta(days=3)
    path = tmp_path / f"hr_export_{future}.csv"
    path.write_bytes(good_export)
    outcome = gate.validate(gate_settings, "raw", str(path), as_of=future)
    assert not outcome.passed
    assert outcome.failures[0].rule == "extraction date not in the future"
    assert outcome.quarantine_uri
    proc = run_cli("pipeline", "ingest", str(path), "--as-of", future.isoformat())
    assert proc.returncode == 1 and "extraction date not in the future" in proc.stderr, proc.stderr
    assert not s3.exists(gate_settings, partition_key(gate_settings, future))


def test_bom_is_accepted_with_a_warning(gate_settings, good_export, tmp_path):
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(b"\xef\xbb\xbf" + good_export)
    outcome = gate.validate(gate_settings, "raw", str(path), as_of=BAD_DAY, quarantine=False)
    assert outcome.passed, outcome.message()
    assert [w.rule for w in outcome.warnings] == ["byte-order mark"]


def test_good_export_passes_both_suites_and_is_published(gate_settings, good_export, tmp_path):
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(good_export)
    result = ing.ingest(gate_settings, str(path), BAD_DAY)
    assert result.validated
    assert s3.exists(gate_settings, partition_key(gate_settings, BAD_DAY))
    assert s3.list_keys(gate_settings, staging_prefix(gate_settings, BAD_DAY)) == [], "staging is cleaned up"
    s3.client(gate_settings).delete_object(Bucket=gate_settings.s3_bucket, Key=partition_key(gate_settings, BAD_DAY))


def test_warning_expectations_report_without_blocking(gate_settings, good_export, tmp_path):
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(edit(good_export, set_cells("MonthlyIncome", "60000", rows=slice(0, 1))))
    outcome = gate.validate(gate_settings, "raw", str(path), as_of=BAD_DAY, quarantine=False)
    assert outcome.passed, outcome.message()
    assert any(w.column == "MonthlyIncome" and w.unexpected_count == 1 and w.sample == [] for w in outcome.warnings), \
        "pay is reported by column, rule and count, never by value"


def test_bad_features_partition_fails_the_features_suite(gate_settings, tmp_path):
    table = layout.read_partition(gate_settings, GOOD_DAY).to_pandas()
    table.loc[table.index[:4], "promotion_stagnation"] = 1.5
    table.loc[table.index[:2], "overtime"] = 2
    path = tmp_path / "part-0.parquet"
    table.to_parquet(path)
    proc = run_cli("expectations", "validate", "--suite", "features", str(path), "--as-of", str(GOOD_DAY),
                   "--previous-rows", str(len(table)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "column promotion_stagnation: expect_column_values_to_be_between (4 rows)" in proc.stdout
    assert "column overtime: expect_column_values_to_be_in_set (2 rows)" in proc.stdout
    assert "report:" in proc.stdout and "quarantined at: s3://" in proc.stdout


def test_real_published_partition_passes_the_features_suite_cli(gate_settings):
    uri = f"s3://{gate_settings.s3_bucket}/{partition_key(gate_settings, GOOD_DAY)}"
    proc = run_cli("expectations", "validate", "--suite", "features", uri, "--no-quarantine",
                   env={"FP_S3_FEATURES_PREFIX": gate_settings.s3_features_prefix})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout


def test_the_published_ibm_export_passes_both_suites(gate_settings):
    """The first rows of the public IBM HR Analytics Employee Attrition file, byte for byte in its
    published format (a UTF-8 BOM, an unquoted header, CRLF-free rows)."""
    path = ROOT / "tests" / "data" / "ibm_hr_attrition_head.csv"
    raw = gate.validate(gate_settings, "raw", str(path), as_of=GOOD_DAY, previous_rows=5, quarantine=False)
    assert raw.passed, raw.message()
    assert [w.rule for w in raw.warnings] == ["byte-order mark"]
    features = ing.to_parquet(ing.transform(path.read_bytes(), str(path), GOOD_DAY))
    outcome = gate.validate(gate_settings, "features", "ibm/part-0.parquet", as_of=GOOD_DAY, data=features,
                            previous_rows=5, quarantine=False, publish_report=False)
    assert outcome.passed, outcome.message()
    rows = {r["employee_id"]: r for r in ing.transform(path.read_bytes(), str(path), GOOD_DAY).to_pylist()}
    assert rows[1]["salary_band"] == 2 and rows[1]["overtime"] == 1 and rows[1]["is_active"] is False
    assert rows[1]["overall_satisfaction"] == (2 + 4 + 1 + 1) / 4


def test_pay_and_demographics_leave_no_trace_outside_raw_and_quarantine(gate_settings, good_export, tmp_path, caplog):
    """Distinctive salaries and ages in a failing export: reason.json, the Data Docs (local and on
    S3), the logs and the alert body carry rules, columns and counts, never those values."""
    from orchestration import alerts

    def change(frame):
        # Seven digits: long enough never to appear by chance in a timestamp, a run id or a hash.
        frame.loc[frame.index[:4], "MonthlyIncome"] = "9876543"
        frame.loc[frame.index[4:6], "Age"] = "4242424x"
        frame.loc[frame.index[:2], "JobSatisfaction"] = "0"
    path = tmp_path / f"hr_export_{BAD_DAY}.csv"
    path.write_bytes(edit(good_export, change))
    with caplog.at_level("DEBUG"):
        with pytest.raises(gate.ValidationFailed) as raised:
            ing.ingest(gate_settings, str(path), BAD_DAY)
    outcome = raised.value.outcome
    assert {f.column for f in outcome.failures} >= {"Age", "JobSatisfaction"}
    _, prefix = s3.parse_uri(outcome.quarantine_uri)
    reason = s3.get_bytes(gate_settings, f"{prefix}reason.json").decode()
    _, report_key = s3.parse_uri(outcome.report_uri)
    report_prefix = report_key.rsplit("/", 1)[0]
    reports = [s3.get_bytes(gate_settings, k).decode(errors="replace") for k in s3.list_keys(gate_settings, report_prefix)]
    local_docs = [p.read_text(errors="replace") for p in
                  (gate_settings.local_dir / "reports" / "data_docs").rglob("*.html")]
    alert = alerts.render({"kind": "task_failed", "title": "validate_raw failed", "error": str(raised.value)}, "slack")
    for name, text in [("reason.json", reason), ("the error", str(raised.value)), ("logs", caplog.text),
                       ("alert", alert.decode()), *((f"report {i}", r) for i, r in enumerate(reports)),
                       *((f"local docs {i}", d) for i, d in enumerate(local_docs))]:
        assert "9876543" not in text and "4242424" not in text, f"a salary or an age is in {name}"
    kept = s3.parse_uri(json.loads(reason)["batch"])[1]
    assert kept.startswith(gate_settings.s3_raw_prefix + "/"), "the batch stays in raw/, access-controlled"
    assert path.read_bytes() == s3.get_bytes(gate_settings, kept), "the quarantine's reason points at the batch"


def test_a_csv_given_to_the_features_suite_is_a_clear_error(good_export, tmp_path):
    path = tmp_path / "hr_export_2026-10-31.csv"
    path.write_bytes(good_export)
    proc = run_cli("expectations", "validate", "--suite", "features", str(path), "--no-quarantine")
    assert proc.returncode == 2 and "not a Parquet features partition" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
