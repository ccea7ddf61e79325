"""Synthetic HR exports in exactly the raw contract's format, one CSV per month-end extraction date.

A seeded workforce is simulated month by month: employees age, gain tenure, get annual raises and
occasional promotions, change satisfaction and overtime, and leave with a hazard that grows with
overtime, low satisfaction and promotion stagnation (so a model has something real to learn).
Leavers appear once with Attrition "Yes" in the month they leave, then disappear; new hires with
fresh EmployeeNumbers replace them.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from etl.schema import RAW_COLUMNS

log = logging.getLogger(__name__)

DEPARTMENT_ROLES = {
    "Research & Development": ["Research Scientist", "Laboratory Technician", "Manufacturing Director",
                               "Healthcare Representative", "Research Director", "Manager"],
    "Sales": ["Sales Executive", "Sales Representative", "Manager"],
    "Human Resources": ["Human Resources", "Manager"],
}
DEPARTMENTS = list(DEPARTMENT_ROLES)
DEPARTMENT_WEIGHTS = [0.65, 0.30, 0.05]
ROLES = sorted({r for roles in DEPARTMENT_ROLES.values() for r in roles})
TRAVEL = ["Travel_Rarely", "Travel_Frequently", "Non-Travel"]
TRAVEL_WEIGHTS = [0.71, 0.19, 0.10]
EDUCATION_FIELDS = ["Life Sciences", "Medical", "Marketing", "Technical Degree", "Other", "Human Resources"]
EDUCATION_FIELD_WEIGHTS = [0.41, 0.32, 0.11, 0.09, 0.055, 0.015]
GENDERS = ["Male", "Female"]
MARITAL = ["Married", "Single", "Divorced"]
MARITAL_WEIGHTS = [0.46, 0.32, 0.22]
BASE_INCOME_BY_LEVEL = np.array([0, 2_800, 5_500, 9_800, 15_000, 19_000])  # index = JobLevel


def month_ends(end: date, months: int) -> list[date]:
    """The last ``months`` month-end dates up to and including ``end``'s month."""
    out = []
    year, month = end.year, end.month
    for _ in range(months):
        out.append(date(year, month, calendar.monthrange(year, month)[1]))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out[::-1]


def previous_month_end(today: date) -> date:
    first = today.replace(day=1)
    return date.fromordinal(first.toordinal() - 1)


@dataclass
class Workforce:
    rng: np.random.Generator
    next_id: int
    cols: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.cols["emp_no"])


def _choice(rng, options, size, weights=None) -> np.ndarray:
    return rng.choice(len(options), size=size, p=weights)


def _new_people(rng: np.random.Generator, first_id: int, n: int, hired_now: bool) -> dict[str, np.ndarray]:
    age = rng.normal(37, 9, n).clip(18.5, 60)
    max_career_months = ((age - 18) * 12).astype(np.int64)
    if hired_now:
        months_at = np.zeros(n, np.int64)
    else:
        months_at = np.minimum(rng.exponential(7 * 12, n).astype(np.int64), max_career_months)
    prior_years = np.minimum(rng.poisson(4, n), (max_career_months - months_at) // 12).clip(0)
    level = np.clip(1 + rng.poisson((prior_years + months_at / 12) / 8, n), 1, 5)
    dept = _choice(rng, DEPARTMENTS, n, DEPARTMENT_WEIGHTS)
    role_in_dept = rng.integers(0, 100, n)
    months_in_role = (months_at * rng.uniform(0.2, 1.0, n)).astype(np.int64)
    return {
        "emp_no": np.arange(first_id, first_id + n, dtype=np.int64),
        "age": age,
        "gender": _choice(rng, GENDERS, n, [0.6, 0.4]),
        "marital": _choice(rng, MARITAL, n, MARITAL_WEIGHTS),
        "education": rng.integers(1, 6, n),
        "education_field": _choice(rng, EDUCATION_FIELDS, n, EDUCATION_FIELD_WEIGHTS),
        "dept": dept,
        "role_pick": role_in_dept,
        "travel": _choice(rng, TRAVEL, n, TRAVEL_WEIGHTS),
        "distance": rng.integers(1, 30, n),
        "num_companies": np.minimum(rng.poisson(2.5, n), 9),
        "prior_years": prior_years.astype(np.int64),
        "months_at": months_at,
        "months_in_role": months_in_role,
        "months_since_promo": (months_in_role * rng.uniform(0.5, 1.0, n)).astype(np.int64),
        "months_with_manager": (months_in_role * rng.uniform(0.3, 1.0, n)).astype(np.int64),
        "level": level.astype(np.int64),
        "income": (BASE_INCOME_BY_LEVEL[level] * rng.uniform(0.7, 1.3, n)).clip(1_009, 19_999),
        "daily_rate": rng.integers(102, 1_500, n),
        "hourly_rate": rng.integers(30, 101, n),
        "monthly_rate": rng.integers(2_094, 27_000, n),
        "env_sat": rng.integers(1, 5, n),
        "job_sat": rng.integers(1, 5, n),
        "rel_sat": rng.integers(1, 5, n),
        "wlb": rng.choice([1, 2, 3, 4], n, p=[0.05, 0.23, 0.61, 0.11]),
        "involvement": rng.choice([1, 2, 3, 4], n, p=[0.06, 0.26, 0.59, 0.09]),
        "hike": rng.integers(11, 26, n),
        "stock": rng.choice([0, 1, 2, 3], n, p=[0.43, 0.41, 0.11, 0.05]),
        "training": rng.integers(0, 7, n),
        "overtime": rng.random(n) < 0.28,
    }


def new_workforce(employees: int, seed: int) -> Workforce:
    rng = np.random.default_rng(seed)
    first_id = 1
    return Workforce(rng, first_id + employees, _new_people(rng, first_id, employees, hired_now=False))


def _advance_month(wf: Workforce) -> np.ndarray:
    """Move the workforce one month on; return the mask of employees leaving this month."""
    rng, c, n = wf.rng, wf.cols, wf.size
    for key in ("months_at", "months_in_role", "months_since_promo", "months_with_manager"):
        c[key] += 1
    c["age"] += 1 / 12
    promoted = (rng.random(n) < 0.012) & (c["level"] < 5) & (c["months_since_promo"] > 9)
    c["level"][promoted] += 1
    c["income"][promoted] *= rng.uniform(1.08, 1.2, promoted.sum())
    for key in ("months_in_role", "months_since_promo"):
        c[key][promoted] = 0
    anniversary = (c["months_at"] % 12 == 0) & (c["months_at"] > 0)
    c["hike"][anniversary] = rng.integers(11, 26, anniversary.sum())
    c["income"][anniversary] *= 1 + c["hike"][anniversary] / 100
    c["income"] = c["income"].clip(1_009, 19_999)
    new_manager = rng.random(n) < 0.01
    c["months_with_manager"][new_manager] = 0
    for key in ("env_sat", "job_sat", "rel_sat"):
        drift = rng.random(n) < 0.03
        c[key][drift] = rng.integers(1, 5, drift.sum())
    flip = rng.random(n) < 0.04
    c["overtime"][flip] = ~c["overtime"][flip]

    satisfaction = (c["env_sat"] + c["job_sat"] + c["rel_sat"] + c["wlb"]) / 4
    hazard = np.full(n, 0.006)
    hazard *= np.where(c["overtime"], 2.4, 1.0)
    hazard *= np.where(satisfaction < 2.5, 2.0, 1.0)
    hazard *= np.where(c["months_since_promo"] > 48, 1.6, 1.0)
    hazard *= np.where(c["age"] < 30, 1.5, 1.0)
    hazard *= np.where(c["level"] == 1, 1.4, 1.0)
    hazard *= np.where(c["travel"] == 1, 1.5, 1.0)
    return rng.random(n) < hazard


def _replace_leavers(wf: Workforce, leaving: np.ndarray) -> None:
    keep = ~leaving
    hires = int(leaving.sum() + wf.rng.integers(-2, 3)) if leaving.any() else 0
    hires = max(hires, 0)
    fresh = _new_people(wf.rng, wf.next_id, hires, hired_now=True)
    wf.next_id += hires
    wf.cols = {k: np.concatenate([v[keep], fresh[k]]) for k, v in wf.cols.items()}


def _export_table(wf: Workforce, leaving: np.ndarray) -> pa.Table:
    c = wf.cols
    years_at = c["months_at"] // 12

    def labels(options, codes):
        return np.asarray(options, dtype=object)[codes]

    roles = np.empty(wf.size, dtype=object)
    for d_index, d_name in enumerate(DEPARTMENTS):
        mask = c["dept"] == d_index
        options = np.asarray(DEPARTMENT_ROLES[d_name], dtype=object)
        roles[mask] = options[c["role_pick"][mask] % len(options)]
    data = {
        "Age": np.floor(c["age"]).astype(np.int64),
        "Attrition": np.where(leaving, "Yes", "No"),
        "BusinessTravel": labels(TRAVEL, c["travel"]),
        "DailyRate": c["daily_rate"],
        "Department": labels(DEPARTMENTS, c["dept"]),
        "DistanceFromHome": c["distance"],
        "Education": c["education"],
        "EducationField": labels(EDUCATION_FIELDS, c["education_field"]),
        "EmployeeCount": np.ones(wf.size, np.int64),
        "EmployeeNumber": c["emp_no"],
        "EnvironmentSatisfaction": c["env_sat"],
        "Gender": labels(GENDERS, c["gender"]),
        "HourlyRate": c["hourly_rate"],
        "JobInvolvement": c["involvement"],
        "JobLevel": c["level"],
        "JobRole": roles,
        "JobSatisfaction": c["job_sat"],
        "MaritalStatus": labels(MARITAL, c["marital"]),
        "MonthlyIncome": np.round(c["income"]).astype(np.int64),
        "MonthlyRate": c["monthly_rate"],
        "NumCompaniesWorked": c["num_companies"],
        "Over18": np.full(wf.size, "Y"),
        "OverTime": np.where(c["overtime"], "Yes", "No"),
        "PercentSalaryHike": c["hike"],
        "PerformanceRating": np.where(c["hike"] >= 20, 4, 3),
        "RelationshipSatisfaction": c["rel_sat"],
        "StandardHours": np.full(wf.size, 80),
        "StockOptionLevel": c["stock"],
        "TotalWorkingYears": c["prior_years"] + years_at,
        "TrainingTimesLastYear": c["training"],
        "WorkLifeBalance": c["wlb"],
        "YearsAtCompany": years_at,
        "YearsInCurrentRole": np.minimum(c["months_in_role"], c["months_at"]) // 12,
        "YearsSinceLastPromotion": np.minimum(c["months_since_promo"], c["months_at"]) // 12,
        "YearsWithCurrManager": np.minimum(c["months_with_manager"], c["months_at"]) // 12,
    }
    return pa.table({name: pa.array(data[name], type=typ) for name, typ in RAW_COLUMNS.items()})


def export_name(as_of: date) -> str:
    return f"hr_export_{as_of.isoformat()}.csv"


def generate(out_dir: Path, employees: int, months: int, end: date, seed: int = 7) -> list[Path]:
    """Write ``months`` monthly exports ending at ``end``'s month into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wf = new_workforce(employees, seed)
    paths = []
    dates = month_ends(end, months)
    for index, as_of in enumerate(dates, start=1):
        leaving = _advance_month(wf)
        path = out_dir / export_name(as_of)
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "wb") as out:
            # The HR system writes a plain header and unquoted values; pyarrow would quote the header.
            out.write((",".join(RAW_COLUMNS) + "\n").encode())
            pacsv.write_csv(_export_table(wf, leaving), out,
                            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))
        tmp.replace(path)  # a crashed run never leaves a truncated export behind
        paths.append(path)
        if index == len(dates) or index % 6 == 0:
            log.info("generated %d/%d exports (%s: %d employees, %d leaving)",
                     index, len(dates), as_of, wf.size, int(leaving.sum()))
        _replace_leavers(wf, leaving)
    return paths
