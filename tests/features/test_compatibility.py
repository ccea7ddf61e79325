"""`python -m features breaking-changes` against real SQLite and PostgreSQL registries."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from feast import Field
from feast.types import Float32, Int64

from helpers import cli_env, isolated, run_cli
from features import compatibility
from features import store as fs
from features.resources import Resources
from features.definitions import build

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, stack, tmp_path):
    settings = isolated(stack, tmp_path, "brk")
    if request.param == "postgresql":
        settings = request.getfixturevalue("postgres_registry")(settings)
    resources = Resources(settings)
    fs.apply(resources)
    return settings, resources


def _candidates(settings, change=None):
    entity, source, view, service = build(settings)
    if change:
        change(entity, view, service)
    return [entity, source, view, service]


def _drop(view, name):
    view.features = [f for f in view.features if f.name != name]


CASES = {
    "removed feature": (lambda e, v, s: _drop(v, "career_velocity"), "feature employee_features:career_velocity: removed"),
    "renamed feature": (lambda e, v, s: setattr(v, "features", [Field(name="velocity", dtype=f.dtype) if f.name == "career_velocity" else f for f in v.features]),
                        "feature employee_features:career_velocity: removed (or renamed)"),
    "dtype change": (lambda e, v, s: setattr(v, "features", [Field(name=f.name, dtype=Float32) if f.name == "tenure" else f for f in v.features]),
                     "feature employee_features:tenure: dtype Int64 -> Float32"),
    "shrinking TTL": (lambda e, v, s: setattr(v, "ttl", timedelta(days=10)), "TTL shrinks"),
    "entity join key": (lambda e, v, s: setattr(e, "join_key", "emp_no"), "entity employee_id: join key employee_id -> emp_no"),
    "service loses a feature": (lambda e, v, s: setattr(s.feature_view_projections[0], "features",
                                                         s.feature_view_projections[0].features[:-1]),
                                "feature service attrition_model_v1: loses employee_features:overall_satisfaction"),
    "service reorders its features": (lambda e, v, s: setattr(s.feature_view_projections[0], "features",
                                                               list(reversed(s.feature_view_projections[0].features))),
                                      "feature service attrition_model_v1: reorders its features"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_breaking_changes_are_named(registry, case):
    settings, resources = registry
    change, expected = CASES[case]
    breaks = [str(b) for b in compatibility.compare(resources.store, _candidates(settings, change))]
    assert any(expected in b for b in breaks), breaks


def test_additive_change_passes(registry):
    settings, resources = registry

    def add(entity, view, service):
        view.features = [*view.features, Field(name="team_size", dtype=Int64)]

    assert compatibility.compare(resources.store, _candidates(settings, add)) == []
    assert compatibility.compare(resources.store, _candidates(settings)) == []


def test_model_feature_list_is_checked(registry, tmp_path):
    settings, resources = registry
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"feature_refs": ["employee_features:tenure", "employee_features:bonus"]}))
    breaks = [str(b) for b in compatibility.compare(resources.store, _candidates(settings), compatibility.load_model_features(settings, str(model)))]
    assert "current model: needs employee_features:bonus, no longer defined" in breaks


def test_a_service_order_other_than_the_models_breaks(registry, tmp_path):
    """The registry's service may keep its order while the model was trained on another: CI must stop it."""
    settings, resources = registry
    refs = [f"employee_features:{n}" for n in ("tenure", "salary_band", "overtime", "promotion_stagnation",
                                                 "career_velocity", "overall_satisfaction")]
    model = tmp_path / "features.json"
    model.write_text(json.dumps({"feature_service": "attrition_model_v1", "feature_refs": refs}))
    assert compatibility.compare(resources.store, _candidates(settings), compatibility.load_model_features(settings, str(model))) == []
    model.write_text(json.dumps({"feature_service": "attrition_model_v1", "feature_refs": [refs[1], refs[0], *refs[2:]]}))
    breaks = [str(b) for b in compatibility.compare(resources.store, _candidates(settings), compatibility.load_model_features(settings, str(model)))]
    assert len(breaks) == 1 and breaks[0].startswith("feature service attrition_model_v1: declares"), breaks
    env = cli_env(settings)
    proc = run_cli("features", "breaking-changes", "--model-features", str(model), env=env)
    assert proc.returncode == 1 and "BREAKING feature service attrition_model_v1: declares" in proc.stdout


def test_cli_exit_status(registry, tmp_path):
    settings, _ = registry
    env = cli_env(settings)
    ok = run_cli("features", "breaking-changes", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"feature_refs": ["employee_features:gone"]}))
    bad = run_cli("features", "breaking-changes", "--model-features", str(model), env=env)
    assert bad.returncode == 1 and "BREAKING current model: needs employee_features:gone" in bad.stdout
