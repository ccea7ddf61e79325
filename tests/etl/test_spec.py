"""The feature definitions, on rows computed by hand."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from core import settings as settings_mod
from etl import spec
from etl.schema import RAW_COLUMNS, USED_COLUMNS

ROOT_README = settings_mod.PROJECT_ROOT / "README.md"


def raw_rows(*rows: dict) -> pa.Table:
    base = {"EmployeeNumber": 1, "Attrition": "No", "OverTime": "No", "MonthlyIncome": 5000, "JobLevel": 2,
            "TotalWorkingYears": 10, "YearsAtCompany": 4, "YearsSinceLastPromotion": 1,
            "EnvironmentSatisfaction": 3, "JobSatisfaction": 3, "RelationshipSatisfaction": 3, "WorkLifeBalance": 3}
    filled = [{**base, **row} for row in rows]
    return pa.table({c: pa.array([r[c] for r in filled], RAW_COLUMNS[c]) for c in USED_COLUMNS})


AS_OF = date(2026, 10, 31)


def test_hand_computed_row():
    row = spec.compute(raw_rows({
        "EmployeeNumber": 42, "OverTime": "Yes", "MonthlyIncome": 6500, "JobLevel": 3, "TotalWorkingYears": 12,
        "YearsAtCompany": 8, "YearsSinceLastPromotion": 2, "EnvironmentSatisfaction": 1, "JobSatisfaction": 2,
        "RelationshipSatisfaction": 4, "WorkLifeBalance": 3,
    }), AS_OF).to_pylist()[0]
    assert row["employee_id"] == 42
    assert row["tenure"] == 8
    assert row["salary_band"] == 3  # 6,000-9,999
    assert row["overtime"] == 1
    assert row["promotion_stagnation"] == pytest.approx(2 / 8)
    assert row["career_velocity"] == pytest.approx(3 / 12)
    assert row["overall_satisfaction"] == pytest.approx((1 + 2 + 4 + 3) / 4)
    assert row["event_timestamp"] == datetime(2026, 10, 31, tzinfo=timezone.utc)
    assert row["is_active"] is True
    assert row["attrition"] == 0


def test_zero_years_do_not_divide_by_zero():
    row = spec.compute(raw_rows({"YearsAtCompany": 0, "YearsSinceLastPromotion": 0, "TotalWorkingYears": 0,
                                     "JobLevel": 1}), AS_OF).to_pylist()[0]
    assert row["promotion_stagnation"] == 0.0
    assert row["career_velocity"] == 1.0  # JobLevel / max(0, 1)


@pytest.mark.parametrize("income, band", [(1009, 1), (2999, 1), (3000, 2), (5999, 2), (6000, 3), (9999, 3),
                                          (10000, 4), (14999, 4), (15000, 5), (19999, 5)])
def test_salary_band_edges(income, band):
    assert spec.compute(raw_rows({"MonthlyIncome": income}), AS_OF)["salary_band"][0].as_py() == band


@pytest.mark.parametrize("column", ["MonthlyIncome", "YearsAtCompany", "OverTime", "JobLevel", "TotalWorkingYears",
                                    "YearsSinceLastPromotion", "WorkLifeBalance"])
def test_a_missing_input_never_becomes_a_valid_looking_value(column):
    """The reader refuses empty cells; if one ever got through, its features stay missing (which the
    features suite rejects) instead of landing in a band or a ratio."""
    rows = raw_rows({"EmployeeNumber": 1}, {"EmployeeNumber": 2})
    values = rows[column].to_pylist()
    rows = rows.set_column(rows.schema.get_field_index(column), column,
                           pa.array([values[0], None], rows.schema.field(column).type))
    computed = spec.compute(rows, AS_OF).to_pylist()
    affected = {"MonthlyIncome": ["salary_band"], "YearsAtCompany": ["tenure", "promotion_stagnation"],
                "OverTime": ["overtime"], "JobLevel": ["career_velocity"], "TotalWorkingYears": ["career_velocity"],
                "YearsSinceLastPromotion": ["promotion_stagnation"],
                "WorkLifeBalance": ["overall_satisfaction"]}[column]
    assert all(computed[1][name] is None for name in affected), computed[1]
    assert all(computed[0][name] is not None for name in spec.FEATURE_NAMES)


def test_leaver_is_inactive_and_labelled():
    row = spec.compute(raw_rows({"Attrition": "Yes"}), AS_OF).to_pylist()[0]
    assert row["is_active"] is False
    assert row["attrition"] == 1


def test_output_has_no_personal_or_raw_columns():
    table = spec.compute(raw_rows({}), AS_OF)
    assert table.column_names == ["employee_id", "event_timestamp", *spec.FEATURE_NAMES,
                                  "is_active", "attrition", "created_timestamp"]
    forbidden = {"MonthlyIncome", "Age", "Gender", "MaritalStatus", "EmployeeNumber", "DailyRate", "HourlyRate",
                 "MonthlyRate", "monthly_income", "salary"}
    assert not forbidden & set(table.column_names)


def test_readme_documents_exactly_these_features_and_settings():
    readme = ROOT_README.read_text()
    assert spec.markdown_table() in readme, "README feature table is out of date: python -m etl describe"
    assert settings_mod.markdown_table() in readme, "README settings table is out of date: python -m core.settings --markdown"


def test_generate_and_describe_work_as_command_lines(tmp_path):
    from helpers import run_cli
    from etl import schema

    generated = run_cli("etl", "generate", "--out", str(tmp_path), "--employees", "40", "--months", "2",
                        "--end", "2026-10-31", "--seed", "3")
    assert generated.returncode == 0, generated.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.glob("*.csv"))
    assert files == ["hr_export_2026-09-30.csv", "hr_export_2026-10-31.csv"]
    table = schema.read_export_file(tmp_path / files[-1])
    assert table.num_rows >= 30 and table.column_names == list(USED_COLUMNS)
    described = run_cli("etl", "describe")
    assert described.returncode == 0 and spec.markdown_table() in described.stdout
    assert all(f"{name:22} {value}" in described.stdout for name, value in spec.fingerprints().items())


def test_the_partition_has_the_declared_schema_timestamps_and_fingerprints():
    """What Feast and the skew checks read besides the values: column types, the event time (the
    extraction date, midnight UTC), the created time, and which code computed each feature."""
    import json
    from datetime import timedelta

    created = datetime(2026, 11, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    table = spec.compute(raw_rows({"EmployeeNumber": 1}, {"EmployeeNumber": 2}), AS_OF, created=created)
    assert table.schema.remove_metadata().equals(spec.OUTPUT_SCHEMA.remove_metadata())
    assert table.schema.metadata == {spec.FINGERPRINTS_KEY: json.dumps(spec.fingerprints(), sort_keys=True).encode()}
    assert list(json.loads(table.schema.metadata[spec.FINGERPRINTS_KEY])) == sorted(spec.FEATURE_NAMES)
    assert spec.extraction_timestamp(AS_OF) == datetime(2026, 10, 31, tzinfo=timezone.utc)
    assert spec.extraction_timestamp(AS_OF).utcoffset() == timedelta(0)
    assert table[spec.TIMESTAMP].to_pylist() == [datetime(2026, 10, 31, tzinfo=timezone.utc)] * 2
    assert table[spec.CREATED].to_pylist() == [created.astimezone(timezone.utc)] * 2

    before = datetime.now(timezone.utc)
    stamped = spec.compute(raw_rows({"EmployeeNumber": 1}), AS_OF)[spec.CREATED][0].as_py()
    assert before <= stamped <= datetime.now(timezone.utc), "created defaults to now, in UTC"


def test_the_feature_table_has_its_header():
    lines = spec.markdown_table().splitlines()
    assert lines[:2] == ["| feature | type | unit | definition |", "| --- | --- | --- | --- |"]
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == list(spec.FEATURE_NAMES)


def test_timestamps_do_not_depend_on_the_machines_time_zone(monkeypatch):
    import time
    from datetime import timedelta

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        created = datetime(2026, 11, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        table = spec.compute(raw_rows({"EmployeeNumber": 1}), AS_OF, created=created)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert table[spec.CREATED][0].as_py() == datetime(2026, 11, 2, 1, 4, 5, tzinfo=timezone.utc)
    assert table[spec.TIMESTAMP][0].as_py() == datetime(2026, 10, 31, tzinfo=timezone.utc)
