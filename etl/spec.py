"""The one definition of every attrition feature.

Training reads these columns from the offline store and serving reads them from Redis; both were
computed here, once. ``FEATURES`` is also the order the model receives them in (the feature
service ``attrition_model_v1`` declares exactly this list), and the Feast schema is built from it.

| feature | type | unit | definition |
| --- | --- | --- | --- |
| tenure | int64 | years | YearsAtCompany |
| salary_band | int64 | band 1-5 | MonthlyIncome banded at SALARY_BAND_EDGES (USD/month) |
| overtime | int64 | 0/1 | 1 if OverTime is "Yes" |
| promotion_stagnation | float64 | ratio | YearsSinceLastPromotion / max(YearsAtCompany, 1) |
| career_velocity | float64 | levels/year | JobLevel / max(TotalWorkingYears, 1) |
| overall_satisfaction | float64 | score 1-4 | mean of Environment, Job, Relationship satisfaction and WorkLifeBalance |
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.fingerprint import code_fingerprint


# Lower edges of salary bands 2..5 in MonthlyIncome (USD/month): band 1 is below 3,000,
# band 2 is 3,000-5,999, band 3 6,000-9,999, band 4 10,000-14,999, band 5 is 15,000 and above.
SALARY_BAND_EDGES: tuple[int, ...] = (3_000, 6_000, 10_000, 15_000)
_F64 = pa.float64()


def _at_least_one(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # skip_nulls=False: a missing count stays missing instead of becoming 1
    return pc.max_element_wise(column, pa.scalar(1, pa.int64()), skip_nulls=False)


def _ratio(numerator: pa.ChunkedArray, denominator: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.divide(pc.cast(numerator, _F64), pc.cast(_at_least_one(denominator), _F64))


def tenure(raw: pa.Table) -> pa.ChunkedArray:
    return raw["YearsAtCompany"]


def salary_band(raw: pa.Table) -> pa.Array:
    incomes = raw["MonthlyIncome"]
    bands = np.searchsorted(np.asarray(SALARY_BAND_EDGES), incomes.to_numpy(zero_copy_only=False), side="right") + 1
    # A missing income stays missing (NaN would sort into the top band): the features suite rejects it.
    return pa.array(bands, pa.int64(), mask=pc.is_null(incomes).to_numpy(zero_copy_only=False))


def overtime(raw: pa.Table) -> pa.ChunkedArray:
    return pc.cast(pc.equal(raw["OverTime"], "Yes"), pa.int64())


def promotion_stagnation(raw: pa.Table) -> pa.ChunkedArray:
    return _ratio(raw["YearsSinceLastPromotion"], raw["YearsAtCompany"])


def career_velocity(raw: pa.Table) -> pa.ChunkedArray:
    return _ratio(raw["JobLevel"], raw["TotalWorkingYears"])


def overall_satisfaction(raw: pa.Table) -> pa.ChunkedArray:
    total = pc.add(pc.add(raw["EnvironmentSatisfaction"], raw["JobSatisfaction"]),
                   pc.add(raw["RelationshipSatisfaction"], raw["WorkLifeBalance"]))
    return pc.divide(pc.cast(total, _F64), 4.0)


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # "int64" or "float64"; maps to Feast Int64 / Float64
    unit: str
    definition: str
    transform: Callable[[pa.Table], pa.Array | pa.ChunkedArray]  # raw export rows -> this feature's column

    @property
    def fingerprint(self) -> str:
        """Changes when what computes the values changes (the transform, its helpers and constants,
        the dtype); not when prose, comments or formatting do."""
        return code_fingerprint(self.transform, self.name, self.dtype)


FEATURES: tuple[Feature, ...] = (
    Feature("tenure", "int64", "years", "YearsAtCompany", tenure),
    Feature("salary_band", "int64", "band 1-5", "MonthlyIncome banded at SALARY_BAND_EDGES (USD/month)", salary_band),
    Feature("overtime", "int64", "0/1", '1 if OverTime is "Yes"', overtime),
    Feature("promotion_stagnation", "float64", "ratio", "YearsSinceLastPromotion / max(YearsAtCompany, 1)",
            promotion_stagnation),
    Feature("career_velocity", "float64", "levels/year", "JobLevel / max(TotalWorkingYears, 1)", career_velocity),
    Feature("overall_satisfaction", "float64", "score 1-4",
            "mean of Environment, Job, Relationship satisfaction and WorkLifeBalance", overall_satisfaction),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Parquet schema metadata key of a partition's fingerprints: {feature: fingerprint} of the code that computed it.
FINGERPRINTS_KEY = b"feature_fingerprints"


@functools.cache
def _fingerprints() -> tuple[tuple[str, str], ...]:
    return tuple((f.name, f.fingerprint) for f in FEATURES)


def fingerprints() -> dict[str, str]:
    """{feature: fingerprint} of the code in this checkout (hashed once per process: the code of a
    running process does not change, and every computed partition records them)."""
    return dict(_fingerprints())


ENTITY_KEY = "employee_id"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"
ACTIVE = "is_active"
LABEL = "attrition"  # 1 when the export marks the employee as having left (Attrition "Yes")

_TS = pa.timestamp("us", tz="UTC")
OUTPUT_SCHEMA = pa.schema(
    [pa.field(ENTITY_KEY, pa.int64(), nullable=False), pa.field(TIMESTAMP, _TS, nullable=False)]
    + [pa.field(f.name, pa.int64() if f.dtype == "int64" else pa.float64()) for f in FEATURES]
    + [pa.field(ACTIVE, pa.bool_()), pa.field(LABEL, pa.int64()), pa.field(CREATED, _TS)]
)


def extraction_timestamp(as_of: date) -> datetime:
    """Features of an extraction are stamped at midnight UTC of its date."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=timezone.utc)


def compute(raw: pa.Table, as_of: date, created: datetime | None = None) -> pa.Table:
    """Raw export rows (see etl.schema.USED_COLUMNS) -> feature rows in OUTPUT_SCHEMA."""
    n = raw.num_rows
    created = created or datetime.now(timezone.utc)
    left = pc.equal(raw["Attrition"], "Yes")
    columns = {
        ENTITY_KEY: raw["EmployeeNumber"],
        TIMESTAMP: pa.array(np.full(n, np.datetime64(extraction_timestamp(as_of).replace(tzinfo=None), "us")), _TS),
        **{f.name: f.transform(raw) for f in FEATURES},
        ACTIVE: pc.invert(left),
        LABEL: pc.cast(left, pa.int64()),
        CREATED: pa.array(np.full(n, np.datetime64(created.astimezone(timezone.utc).replace(tzinfo=None), "us")), _TS),
    }
    schema = OUTPUT_SCHEMA.with_metadata({FINGERPRINTS_KEY: json.dumps(fingerprints(), sort_keys=True).encode()})
    return pa.table(columns, schema=schema)


def markdown_table() -> str:
    rows = ["| feature | type | unit | definition |", "| --- | --- | --- | --- |"]
    rows += [f"| {f.name} | {f.dtype} | {f.unit} | {f.definition} |" for f in FEATURES]
    return "\n".join(rows)
