"""The walking skeleton end to end: HR export -> S3 Parquet -> Feast registry -> Redis -> online vector.

Runs once with a SQLite registry and once with a PostgreSQL registry, against the real S3 API
server and the machine's Redis.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from datetime import date, datetime, timezone

import pytest

from helpers import run_cli
from etl import spec
from pipeline import ingest as ing
from etl import layout
from features import online
from features import store as fs
from features.resources import Resources

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def slice_settings(request, stack, tmp_path):
    """Settings with a fresh registry and Feast project of the given kind."""
    project = f"{stack.feast_project}_{request.param[:2]}{secrets.token_hex(3)}"
    settings = replace(stack, registry_url=f"sqlite:///{tmp_path / 'registry.db'}", feast_project=project)
    if request.param == "postgresql":
        settings = request.getfixturevalue("postgres_registry")(settings)
    return settings


def test_online_vector_equals_the_row_written(slice_settings, exports):
    settings = slice_settings
    as_of = date(2026, 10, 31)
    for path in exports[-2:]:
        ing.ingest(settings, str(path), date.fromisoformat(path.stem.removeprefix("hr_export_")))
    resources = Resources(settings)
    applied = fs.apply(resources)
    assert applied == ["Entity employee_id", "FileSource employee_features_source",
                       "FeatureView employee_features", "FeatureService attrition_model_v1"]
    assert settings.registry_url.split(":")[0] in str(resources.store.config.registry.path)

    result = fs.materialize(resources, datetime.now(timezone.utc))
    written = layout.read_partition(settings, as_of).to_pylist()
    active = [r for r in written if r["is_active"]]
    leavers = [r for r in written if not r["is_active"]]
    assert result.active == len(active) and leavers

    sample = active[:25]
    vectors = online.online_vectors(resources, [r["employee_id"] for r in sample])
    for row in sample:
        assert vectors[row["employee_id"]] == [row[name] for name in spec.FEATURE_NAMES], row["employee_id"]

    assert online.service_feature_refs(resources.store) == [f"employee_features:{name}" for name in spec.FEATURE_NAMES]

    with pytest.raises(online.ServingError, match=f"employee {leavers[0]['employee_id']}: left") as refused:
        online.online_vectors(resources, [leavers[0]["employee_id"]])
    assert refused.value.reason == "left"
    response = resources.store.get_online_features(features=["employee_features:tenure"],
                                         entity_rows=[{"employee_id": r["employee_id"]} for r in leavers]).to_dict()
    assert response["tenure"] == [None] * len(leavers), "leavers are not served"


def test_cli_apply_materialize_online_through_subprocesses(stack, exports):
    """The operator's commands, as separate processes sharing only configuration and services."""
    as_of = date(2026, 10, 31)
    assert run_cli("pipeline", "ingest", str(exports[-1]), "--as-of", as_of.isoformat()).returncode == 0
    applied = run_cli("features", "apply")
    assert applied.returncode == 0, applied.stderr
    materialized = run_cli("features", "materialize-incremental")
    assert materialized.returncode == 0, materialized.stderr
    assert f"serving the extraction of {as_of}" in materialized.stdout
    row = next(r for r in layout.read_partition(stack, as_of).to_pylist() if r["is_active"])
    online = run_cli("features", "online", "--employee-id", str(row["employee_id"]))
    assert online.returncode == 0, online.stderr
    payload = json.loads(online.stdout)
    assert payload["features"] == list(spec.FEATURE_NAMES)
    assert payload["vectors"][str(row["employee_id"])] == [row[n] for n in spec.FEATURE_NAMES]
    missing = run_cli("features", "online", "--employee-id", "999999999")
    assert missing.returncode == 1 and "employee 999999999: unknown employee" in missing.stderr
