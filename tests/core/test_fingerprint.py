"""Transformation fingerprints: recorded with every partition, feature view and model; a changed
formula is a breaking change, training never mixes two definitions, serving refuses a model
trained on other code than the served values'."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from datetime import datetime, timezone

import pytest

from helpers import cli_env, isolated, run_cli, served_history
from core import s3
from core.fingerprint import code_fingerprint
from etl import spec
from pipeline import ingest as ing
from etl import layout
from features import compatibility, online
from features import store as fs
from features.definitions import build, fingerprint_tags, tagged_fingerprints
from training import dataset, model

BASE = '''
LIMIT = 3


def _clip(column):
    return min(column, LIMIT)


def first(raw):
    """Docstring."""
    return _clip(raw["a"]) * 2


def second(raw):
    return raw["b"] + 1
'''


def _load(tmp_path, name: str, source: str):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    loaded = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loaded)
    sys.modules[name] = module
    loaded.loader.exec_module(module)
    return module


def test_a_fingerprint_follows_the_computation_not_the_prose(tmp_path):
    def prints(name, source):
        module = _load(tmp_path, name, source)
        return code_fingerprint(module.first, "first"), code_fingerprint(module.second, "second")

    base = prints("fp_base", BASE)
    assert base[0] != base[1]
    assert prints("fp_prose", BASE.replace('"""Docstring."""', '"""Another text."""  # a comment')
                  .replace("* 2", "*   2")) == base, "docstrings, comments and spacing are not computation"
    formula = prints("fp_formula", BASE.replace("* 2", "* 3"))
    assert formula[0] != base[0] and formula[1] == base[1], "a formula change moves its own feature only"
    constant = prints("fp_constant", BASE.replace("LIMIT = 3", "LIMIT = 4"))
    assert constant[0] != base[0] and constant[1] == base[1], "a constant the formula reads counts"
    helper = prints("fp_helper", BASE.replace("min(column, LIMIT)", "max(column, LIMIT)"))
    assert helper[0] != base[0] and helper[1] == base[1], "a helper the formula calls counts"
    assert code_fingerprint(sys.modules["fp_base"].first, "first", "float64") != base[0], "the dtype counts"


def test_every_feature_has_its_own_fingerprint():
    prints = spec.fingerprints()
    assert list(prints) == list(spec.FEATURE_NAMES) and len(set(prints.values())) == len(prints)
    assert all(len(value) == 16 for value in prints.values())


@pytest.fixture(scope="module")
def history(stack, exports, tmp_path_factory):
    """Six monthly extractions ingested with this code, applied, materialized, a model promoted."""
    settings = isolated(stack, tmp_path_factory.mktemp("fingerprints"), "fpr")
    resources, result = served_history(settings, exports)
    return settings, resources, result


def test_partitions_the_registry_and_the_model_record_the_fingerprints(history):
    settings, resources, result = history
    current = spec.fingerprints()
    recorded = layout.partition_fingerprints(settings)
    assert len(recorded) == 6 and all(found == current for found in recorded.values()), recorded
    assert tagged_fingerprints(resources.store.get_feature_view("employee_features")) == current
    refs = {f"employee_features:{name}": value for name, value in current.items()}
    _, prefix = s3.parse_uri(result.uri)
    assert json.loads(s3.get_bytes(settings, prefix + "metadata.json"))["feature_fingerprints"] == refs
    assert json.loads(s3.get_bytes(settings, prefix + "features.json"))["feature_fingerprints"] == refs
    card = s3.get_bytes(settings, prefix + "model_card.md").decode()
    assert f"| 6 | `employee_features:overall_satisfaction` | `{current['overall_satisfaction']}` |" in card
    assert model.load_latest(settings).fingerprints == refs


def _checkout_with(tmp_path, old: str, new: str):
    """A copy of the etl package with one edit, first on the path of a CLI run from ``tmp_path``."""
    shutil.copytree(layout.__file__.rsplit("/", 1)[0], tmp_path / "etl", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "etl" / "spec.py"
    source = path.read_text()
    assert source.count(old) == 1
    path.write_text(source.replace(old, new))
    return tmp_path


def test_a_changed_formula_is_a_breaking_change_naming_the_feature(history, tmp_path):
    settings, _, _ = history
    changed = _checkout_with(tmp_path / "formula", "return pc.divide(pc.cast(total, _F64), 4.0)",
                             "return pc.divide(pc.cast(total, _F64), 3.0)")
    proc = run_cli("features", "breaking-changes", env=cli_env(settings), cwd=changed)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    breaking = [line for line in proc.stdout.splitlines() if line.startswith("BREAKING")]
    assert len(breaking) == 1 and "feature employee_features:overall_satisfaction: its transformation changed" \
        in breaking[0] and "in the current model and the registry" in breaking[0], proc.stdout

    commented = _checkout_with(tmp_path / "comment", "return pc.divide(pc.cast(total, _F64), 4.0)",
                               "return pc.divide(pc.cast(total, _F64), 4.0)  # the mean of four ratings")
    proc = run_cli("features", "breaking-changes", env=cli_env(settings), cwd=commented)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_a_changed_transformation_is_accepted_with_a_new_service_version(history):
    settings, resources, _ = history
    entity, source, view, service = build(settings)
    view.tags = {**view.tags, **fingerprint_tags({**spec.fingerprints(), "tenure": "0123456789abcdef"})}
    current_model = compatibility.load_model_features(settings, compatibility.latest_model_location(settings))
    breaks = compatibility.compare(resources.store, [entity, source, view, service], current_model)
    assert [b.what for b in breaks] == ["feature employee_features:tenure"]
    from feast import FeatureService

    v2 = FeatureService(name="attrition_model_v2", features=[view[list(spec.FEATURE_NAMES)]])
    assert compatibility.compare(resources.store, [entity, source, view, service, v2], current_model) == []
    # Without the model (a pull-request check has no S3): the registry's services are the consumers.
    assert [b.what for b in compatibility.compare(resources.store, [entity, source, view, service])] == ["feature employee_features:tenure"]


def _republish_as_other_code(settings, day, fingerprints: dict) -> None:
    """The partition of ``day`` as other code would have written it: same rows, other fingerprints,
    the same record of its raw export."""
    client = s3.client(settings)
    key = layout.partition_key(settings, day)
    metadata = client.head_object(Bucket=settings.s3_bucket, Key=key)["Metadata"]
    table = layout.read_partition(settings, day)
    table = table.replace_schema_metadata({spec.FINGERPRINTS_KEY: json.dumps(fingerprints).encode()})
    s3.put_bytes(settings, key, ing.to_parquet(table), metadata=metadata)


def test_training_refuses_a_mixed_history_and_recomputes_it_when_told(history):
    settings, resources, _ = history
    oldest = layout.list_partitions(settings)[0]
    _republish_as_other_code(settings, oldest, {**spec.fingerprints(), "salary_band": "5a1a5a1a5a1a5a1a"})
    assert ing.stale_partitions(settings) == [oldest]

    proc = run_cli("training", "train", "--horizon-extractions", "2", env=cli_env(settings))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "salary_band: 5a1a5a1a5a1a5a1a in 1 extraction(s)" in proc.stderr and "--recompute-history" in proc.stderr
    assert "tenure" not in proc.stderr.split("the code here computes")[0], "only the mixed feature is named"
    with pytest.raises(dataset.MixedHistory):
        model.train(resources, horizon=2)

    before = layout.read_partition(settings, oldest)
    result = model.train(resources, horizon=2, recompute=True)
    assert ing.stale_partitions(settings) == []
    after = layout.read_partition(settings, oldest)
    assert after.drop(["created_timestamp"]).equals(before.drop(["created_timestamp"])), "same rows, current code"
    assert result.metrics["test_rows"] > 0


def test_serving_refuses_a_model_trained_on_other_code(history):
    settings, resources, _ = history
    loaded = model.load_latest(settings)
    newest = layout.list_partitions(settings)[-1]
    active = online.served_roster(settings).active_ids()[:2]
    assert model.predict(resources, active), "the promoted model serves the values it was trained on"

    other = {**spec.fingerprints(), "overall_satisfaction": "0a0a0a0a0a0a0a0a"}
    _republish_as_other_code(settings, newest, other)
    fs.materialize(resources, datetime.now(timezone.utc), refresh=newest)
    assert online.served_roster(settings).fingerprints == other
    with pytest.raises(online.ServingError) as refused:
        model.predict(resources, active)
    assert refused.value.reason == "mismatch" and "overall_satisfaction (model " in str(refused.value)
    assert loaded.version in str(refused.value)
    proc = run_cli("training", "predict", "--employee-id", str(active[0]), env=cli_env(settings))
    assert proc.returncode == 1 and "trained on features computed by other code" in proc.stderr, proc.stderr[-2000:]

    # What Redis holds decides, not what the partition says now: recomputing the partition without
    # materializing it again does not make the model servable.
    _republish_as_other_code(settings, newest, spec.fingerprints())
    with pytest.raises(online.ServingError):
        model.predict(resources, active)
    fs.materialize(resources, datetime.now(timezone.utc), refresh=newest)
    assert model.predict(resources, active)
