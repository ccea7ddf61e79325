"""Feast objects: entity `employee_id`, feature view `employee_features`, service `attrition_model_v1`.

The schema is built from etl.spec.FEATURES, so the features Feast serves are, by construction,
the ones the ETL computes, in the order the model receives them. ``build`` makes them for a given
configuration; the module-level objects (what `feast plan/apply` discovers) use the environment's.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from core import settings as settings_mod
from core.settings import Settings
from etl import spec

# Monthly extractions: a value older than 45 days means an extraction was missed.
FEATURE_TTL = timedelta(days=45)

_FEAST_TYPES = {"int64": Int64, "float64": Float64}
FINGERPRINT_TAG = "fingerprint."


def fingerprint_tags(fingerprints: dict[str, str]) -> dict[str, str]:
    return {FINGERPRINT_TAG + name: value for name, value in fingerprints.items()}


def tagged_fingerprints(view: FeatureView) -> dict[str, str]:
    """{feature: fingerprint} recorded in a feature view's tags ({} for a view applied before they were)."""
    return {key[len(FINGERPRINT_TAG):]: value for key, value in (view.tags or {}).items()
            if key.startswith(FINGERPRINT_TAG)}


def source_path(settings: Settings) -> str:
    """Every partition's file (extraction_date=YYYY-MM-DD/part-0.parquet under the features prefix),
    as the engine's reader names them: a glob for DuckDB, the folder for Ray Data (which reads every
    Parquet file under a folder and takes no globs)."""
    if settings.compute_engine == "ray":
        return f"{settings.features_uri}/"
    return f"{settings.features_uri}/*/*.parquet"


def build(settings: Settings) -> tuple[Entity, FileSource, FeatureView, FeatureService]:
    employee = Entity(
        name="employee_id",
        join_keys=[spec.ENTITY_KEY],
        value_type=ValueType.INT64,
        description="An employee, keyed by the HR system's EmployeeNumber.",
    )
    source = FileSource(
        name="employee_features_source",
        path=source_path(settings),
        file_format=ParquetFormat(),
        timestamp_field=spec.TIMESTAMP,
        created_timestamp_column=spec.CREATED,
        s3_endpoint_override=settings.s3_endpoint_url,
        description="Features dataset written by `python -m pipeline ingest`, one partition per extraction date.",
    )
    view = FeatureView(
        name="employee_features",
        entities=[employee],
        ttl=FEATURE_TTL,
        schema=[Field(name=f.name, dtype=_FEAST_TYPES[f.dtype], description=f"{f.definition} ({f.unit})")
                for f in spec.FEATURES],
        source=source,
        online=True,
        # Which code computed each feature (etl.spec): `python -m features breaking-changes` compares them.
        tags={"team": "people-analytics", "pii": "none", **fingerprint_tags(spec.fingerprints())},
    )
    service = FeatureService(
        name="attrition_model_v1",
        features=[view[list(spec.FEATURE_NAMES)]],
        description="Inputs of the attrition model v1, in the model's column order.",
    )
    return employee, source, view, service


employee, employee_features_source, employee_features, attrition_model_v1 = build(settings_mod.load())
