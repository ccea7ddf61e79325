"""Breaking-change check for feature definitions: run before `feast apply` in CI.

Compares the repository's definitions with what the registry holds, and with the feature list
stored with the current model. Removing or renaming a feature or a view, changing a feature's
dtype, changing an entity (join key or type), a feature service losing a feature or changing the
order of its features (a model receives them by position), or shrinking a TTL breaks consumers that
exist today: each is reported by name. Additive changes pass.

A changed transformation is a break too: each feature view records the fingerprint of the code
that computes each feature (etl.spec), and so does each model. A feature whose fingerprint
differs from the registry's or the current model's, and that an existing feature service or the
current model uses, is reported, unless the change comes with a new feature service version (say
``attrition_model_v2``) that declares the feature and that the current model does not use: then the
old model will be refused by serving once the new values are served, until a model trained on the
new version is promoted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from feast import Entity, FeatureService, FeatureStore, FeatureView

from core import s3
from core.settings import Settings
from etl.layout import LATEST_MODEL_POINTER
from features.definitions import tagged_fingerprints
from features.online import FEATURE_SERVICE


@dataclass(frozen=True)
class Break:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def _features(view: FeatureView) -> dict[str, str]:
    return {f.name: str(f.dtype) for f in view.features}


def _service_refs(service: FeatureService) -> list[str]:
    return [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]


def compare(store: FeatureStore, candidates: list, model_features: "ModelFeatures | None" = None) -> list[Break]:
    """Breaking differences between the registry's objects and ``candidates``."""
    breaks: list[Break] = []
    project = store.project
    new_entities = {o.name: o for o in candidates if isinstance(o, Entity)}
    new_views = {o.name: o for o in candidates if isinstance(o, FeatureView)}
    new_services = {o.name: o for o in candidates if isinstance(o, FeatureService)}

    for old in store.registry.list_entities(project):
        if old.name.startswith("__"):
            continue  # Feast's own placeholder for entityless views
        new = new_entities.get(old.name)
        if new is None:
            breaks.append(Break(f"entity {old.name}", "removed"))
            continue
        if old.join_key != new.join_key:
            breaks.append(Break(f"entity {old.name}", f"join key {old.join_key} -> {new.join_key}"))
        if old.value_type != new.value_type:
            breaks.append(Break(f"entity {old.name}", f"type {old.value_type.name} -> {new.value_type.name}"))

    for old in store.registry.list_feature_views(project):
        new = new_views.get(old.name)
        if new is None:
            breaks.append(Break(f"feature view {old.name}", "removed (or renamed)"))
            continue
        old_features, new_features = _features(old), _features(new)
        for name, dtype in old_features.items():
            if name not in new_features:
                breaks.append(Break(f"feature {old.name}:{name}", "removed (or renamed)"))
            elif new_features[name] != dtype:
                breaks.append(Break(f"feature {old.name}:{name}", f"dtype {dtype} -> {new_features[name]}"))
        if sorted(old.entities) != sorted(new.entities):
            breaks.append(Break(f"feature view {old.name}", f"entities {sorted(old.entities)} -> {sorted(new.entities)}"))
        if old.ttl and new.ttl and new.ttl < old.ttl:
            breaks.append(Break(f"feature view {old.name}", f"TTL shrinks {old.ttl} -> {new.ttl}"))

    old_services = {s.name: s for s in store.registry.list_feature_services(project)}
    breaks += _changed_transformations(store.registry.list_feature_views(project), new_views, old_services,
                                       new_services, model_features)

    for old in old_services.values():
        new = new_services.get(old.name)
        if new is None:
            breaks.append(Break(f"feature service {old.name}", "removed"))
            continue
        lost = [r for r in _service_refs(old) if r not in _service_refs(new)]
        if lost:
            breaks.append(Break(f"feature service {old.name}", f"loses {', '.join(lost)}"))
        kept_old = [r for r in _service_refs(old) if r in _service_refs(new)]
        kept_new = [r for r in _service_refs(new) if r in _service_refs(old)]
        if kept_old != kept_new:
            breaks.append(Break(f"feature service {old.name}", f"reorders its features: {kept_old} -> {kept_new}"))

    if model_features:
        provided = {f"{v.name}:{f}": t for v in new_views.values() for f, t in _features(v).items()}
        missing = [r for r in model_features.refs if r not in provided]
        if missing:
            breaks.append(Break("current model", f"needs {', '.join(missing)}, no longer defined"))
        service = new_services.get(model_features.service)
        if service is None:
            breaks.append(Break(f"feature service {model_features.service}", "removed, but the current model is served through it"))
        elif _service_refs(service) != list(model_features.refs):
            breaks.append(Break(f"feature service {model_features.service}",
                                f"declares {_service_refs(service)}, but the current model takes {list(model_features.refs)} "
                                "in that order"))
    return breaks


def _changed_transformations(old_views, new_views: dict, old_services: dict, new_services: dict,
                             model: "ModelFeatures | None") -> list[Break]:
    """Features computed by other code than the registry's or the current model's, that a consumer uses."""
    recorded: dict[str, dict[str, str]] = {}  # ref -> {where: fingerprint}
    for view in old_views:
        for name, value in tagged_fingerprints(view).items():
            recorded.setdefault(f"{view.name}:{name}", {})["the registry"] = value
    if model:
        for ref, value in model.fingerprints.items():
            recorded.setdefault(ref, {})["the current model"] = value
    used = {ref for service in old_services.values() for ref in _service_refs(service)}
    if model:
        used |= set(model.refs)
    new_versions = {name: service for name, service in new_services.items()
                    if name not in old_services and (model is None or name != model.service)}
    breaks = []
    for view in new_views.values():
        for name, value in tagged_fingerprints(view).items():
            ref = f"{view.name}:{name}"
            differ = sorted(where for where, old in recorded.get(ref, {}).items() if old != value)
            if not differ or ref not in used:
                continue
            if any(ref in _service_refs(service) for service in new_versions.values()):
                continue  # a new service version carries it; the old model stays on what it was trained with
            breaks.append(Break(f"feature {ref}", f"its transformation changed (fingerprint "
                                f"{recorded[ref][differ[0]]} in {' and '.join(differ)} -> {value}): values computed "
                                "now would not mean what the model learned; add a new feature service version "
                                "(e.g. attrition_model_v2) for it, recompute history and retrain"))
    return breaks


@dataclass(frozen=True)
class ModelFeatures:
    """What a model was trained on: its feature service, the ordered feature references and the
    fingerprints of the code that computed them ({ref: fingerprint}; empty for older models)."""

    service: str
    refs: tuple[str, ...]
    fingerprints: dict = field(default_factory=dict)


def load_model_features(settings: Settings, location: str) -> ModelFeatures:
    """The ordered feature references stored with a model (local JSON file or s3:// URI)."""
    if location.startswith("s3://"):
        bucket, key = s3.parse_uri(location)
        data = s3.client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        with open(location, "rb") as handle:
            data = handle.read()
    payload = json.loads(data)
    if isinstance(payload, dict):
        return ModelFeatures(payload.get("feature_service", FEATURE_SERVICE), tuple(payload["feature_refs"]),
                             dict(payload.get("feature_fingerprints", {})))
    return ModelFeatures(FEATURE_SERVICE, tuple(payload))


def latest_model_location(settings: Settings) -> str | None:
    """Where the current model's feature list is, from the "latest" pointer training maintains."""
    if not s3.exists(settings, LATEST_MODEL_POINTER):
        return None
    pointer = json.loads(s3.get_bytes(settings, LATEST_MODEL_POINTER))
    return pointer.get("features_uri")
