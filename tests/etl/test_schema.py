"""The raw export contract: what the HR system must send, and the errors when it does not."""

from __future__ import annotations

from datetime import date

import pyarrow.csv as pacsv
import pytest

from etl import generate as gen
from etl.schema import RAW_COLUMNS, ContractError, read_export


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory) -> bytes:
    path = gen.generate(tmp_path_factory.mktemp("one"), employees=50, months=1, end=date(2026, 10, 31))[0]
    return path.read_bytes()


def _replace_header(data: bytes, old: str, new: str) -> bytes:
    header, rest = data.split(b"\n", 1)
    return header.replace(old.encode(), new.encode()) + b"\n" + rest


def test_generated_export_follows_the_contract(good_csv):
    table = read_export(good_csv, "good.csv", columns=None)
    assert table.column_names == list(RAW_COLUMNS)
    assert table.num_rows >= 50


def test_missing_column_is_named(good_csv):
    header, rest = good_csv.split(b"\n", 1)
    names = header.decode().split(",")
    index = names.index("MonthlyIncome")
    lines = [",".join(v for i, v in enumerate(line.split(",")) if i != index)
             for line in good_csv.decode().splitlines()]
    with pytest.raises(ContractError, match=r"export\.csv: missing column\(s\) MonthlyIncome"):
        read_export("\n".join(lines).encode(), "export.csv")


def test_renamed_column_is_missing_and_unknown(good_csv):
    with pytest.raises(ContractError, match="missing column.*OverTime.*unknown column.*Overtime"):
        read_export(_replace_header(good_csv, "OverTime", "Overtime"), "export.csv")


def test_wrong_type_names_the_column(good_csv):
    lines = good_csv.decode().splitlines()
    cells = lines[1].split(",")
    cells[list(RAW_COLUMNS).index("MonthlyIncome")] = "abc"
    lines[1] = ",".join(cells)
    with pytest.raises(ContractError, match="export.csv: column MonthlyIncome: 1 row\\(s\\) empty or not a whole number") as bad:
        read_export("\n".join(lines).encode(), "export.csv")
    assert "abc" not in str(bad.value), "cell values (pay, here) are never echoed"


def _with_cells(good_csv: bytes, column: str, change) -> bytes:
    lines = good_csv.decode().splitlines()
    index = list(RAW_COLUMNS).index(column)
    rows = [line.split(",") for line in lines[1:]]
    for number, cells in enumerate(rows):
        cells[index] = change(number, cells[index])
    return "\n".join([lines[0], *(",".join(c) for c in rows)]).encode() + b"\n"


def test_padded_categories_read_as_the_gate_reads_them(good_csv):
    """' Yes' and 'Yes ' are Yes: the reader normalizes cells exactly as the validation gate does."""
    plain = read_export(good_csv, "plain.csv")
    padded = _with_cells(_with_cells(good_csv, "Attrition", lambda i, v: f" {v}" if i % 2 else f"{v} "),
                         "OverTime", lambda i, v: f"  {v}\t")
    assert read_export(padded, "padded.csv").equals(plain)
    assert "Yes" in plain["Attrition"].to_pylist() and "Yes" in plain["OverTime"].to_pylist()


@pytest.mark.parametrize("column, value", [("EmployeeNumber", "1.0"), ("MonthlyIncome", ""), ("YearsAtCompany", "1e1")])
def test_integers_that_are_not_whole_numbers_are_refused(good_csv, column, value):
    broken = _with_cells(good_csv, column, lambda i, v: value if i == 0 else v)
    with pytest.raises(ContractError, match=f"column {column}: 1 row"):
        read_export(broken, "x.csv")


def test_empty_and_header_only(good_csv):
    with pytest.raises(ContractError, match="empty file"):
        read_export(b"", "empty.csv")
    with pytest.raises(ContractError, match="header only"):
        read_export(good_csv.split(b"\n", 1)[0] + b"\n", "header.csv")


def test_non_utf8_is_rejected(good_csv):
    corrupted = good_csv.replace(b"Research & Development", b"R\xe9search & Development", 1)
    with pytest.raises(ContractError, match="bad.csv"):
        read_export(corrupted, "bad.csv", columns=None)


def test_utf8_bom_is_accepted(good_csv):
    table = read_export(b"\xef\xbb\xbf" + good_csv, "bom.csv")
    assert table.num_rows == read_export(good_csv, "plain.csv").num_rows


def test_generated_history_is_coherent(tmp_path):
    paths = gen.generate(tmp_path, employees=200, months=4, end=date(2026, 10, 31), seed=3)
    assert [p.name for p in paths] == [f"hr_export_{d}.csv" for d in ("2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31")]
    months = [pacsv.read_csv(p).to_pandas() for p in paths]
    for df in months:
        assert df["EmployeeNumber"].is_unique
        assert (df["YearsSinceLastPromotion"] <= df["YearsAtCompany"]).all()
        assert (df["YearsAtCompany"] <= df["TotalWorkingYears"]).all()
        for col in ("EnvironmentSatisfaction", "JobSatisfaction", "RelationshipSatisfaction", "WorkLifeBalance"):
            assert df[col].between(1, 4).all()
        assert set(df["Attrition"]) <= {"Yes", "No"} and set(df["OverTime"]) <= {"Yes", "No"}
    for before, after in zip(months, months[1:]):
        leavers = set(before.loc[before["Attrition"] == "Yes", "EmployeeNumber"])
        assert leavers, "every month some employees leave"
        assert not leavers & set(after["EmployeeNumber"]), "leavers disappear from the next export"
        hires = set(after["EmployeeNumber"]) - set(before["EmployeeNumber"])
        assert hires and min(hires) > before["EmployeeNumber"].max(), "new hires get new EmployeeNumbers"
    again = gen.generate(tmp_path / "again", employees=200, months=4, end=date(2026, 10, 31), seed=3)
    assert again[-1].read_bytes() == paths[-1].read_bytes(), "same seed, same exports"
