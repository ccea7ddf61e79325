"""Train, evaluate, store and serve the attrition model.

The model artifact carries everything needed to reproduce and serve it: the feature service name
and the exact ordered feature references, the entity dataframe and dataset fingerprints, library
versions, metrics and a model card with a ROC curve. Versions live under
``models/attrition/<version>/``; ``models/attrition/latest.json`` moves only when a model passes the
quality gate. Serving assembles the vector by feature name in the stored order, never by the order
of Feast's response, and refuses missing, stale or mismatched features.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from core import s3
from core.settings import Settings
from etl import spec
from pipeline import ingest
from etl.layout import LATEST_MODEL_POINTER, MODEL_PREFIX
from features import online
from features.definitions import FEATURE_TTL
from features.online import ServingError
from features.resources import Resources
from training import dataset

log = logging.getLogger(__name__)

MIN_ROC_AUC = 0.60
THRESHOLD = 0.5
TEST_SHARE = 0.25  # the latest quarter of label times is held out


@dataclass
class TrainResult:
    version: str
    uri: str
    metrics: dict
    promoted: bool

    def summary(self) -> str:
        m = self.metrics
        verdict = "promoted to latest" if self.promoted else f"NOT promoted (ROC AUC below {MIN_ROC_AUC})"
        return (f"model {self.version}: ROC AUC {m['roc_auc']:.3f}, precision {m['precision']:.3f} and recall "
                f"{m['recall']:.3f} at {THRESHOLD}, Brier {m['brier']:.4f} on {m['test_rows']} held-out rows; "
                f"{verdict}\n  artifact: {self.uri}")


def pipeline() -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("classify", LogisticRegression(class_weight="balanced", max_iter=1000))])


def time_split(frame: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Train on earlier label times, test on later ones, with an embargo of ``horizon`` extractions.

    A training label at time t looks ``horizon`` extractions ahead; the first test label time lies
    at least that far after the last training one, so no training label sees a departure that a
    test label is about (an honest forward test)."""
    times = np.sort(frame[spec.TIMESTAMP].unique())
    test_count = max(1, int(round(len(times) * TEST_SHARE)))
    first_test = len(times) - test_count
    last_train = first_test - horizon  # label times are consecutive extractions
    if last_train < 0:
        raise dataset.DatasetError(f"need more history: {len(times)} label times cannot hold a test period and "
                                   f"an embargo of {horizon} extractions before it")
    cutoff = times[first_test]
    return (frame[frame[spec.TIMESTAMP] <= times[last_train]], frame[frame[spec.TIMESTAMP] >= cutoff],
            pd.Timestamp(cutoff))


def evaluate(model: Pipeline, test: pd.DataFrame, names: list[str]) -> tuple[dict, tuple]:
    scores = model.predict_proba(test[names].to_numpy())[:, 1]
    labels = test[dataset.LABEL].to_numpy()
    predicted = scores >= THRESHOLD
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=10, strategy="quantile")
    metrics = {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "brier": float(brier_score_loss(labels, scores)),
        "calibration": [{"predicted": float(p), "observed": float(o)} for p, o in zip(prob_pred, prob_true)],
        "test_rows": int(len(test)),
        "test_positive_rate": float(labels.mean()),
    }
    return metrics, roc_curve(labels, scores)


def _roc_png(curve: tuple, auc: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = curve
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, label=f"attrition_model_v1 (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve, held-out later extractions")
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _versions() -> dict:
    names = ["feast", "scikit-learn", "pandas", "numpy", "pyarrow"]
    return {"python": platform.python_version(), **{n: importlib_metadata.version(n) for n in names}}


def _model_card(meta: dict) -> str:
    m = meta["metrics"]
    computed_by = meta.get("feature_fingerprints", {})
    rows = "\n".join(f"| {i + 1} | `{ref}` | `{computed_by.get(ref, 'unrecorded')}` |"
                     for i, ref in enumerate(meta["feature_refs"]))
    calibration = "\n".join(f"| {c['predicted']:.3f} | {c['observed']:.3f} |" for c in m["calibration"])
    return f"""# Attrition model {meta['version']}

Predicts whether an active employee leaves within the next {meta['horizon_extractions']} HR extractions.

* Trained {meta['trained_at']} on {meta['train_rows']} label rows up to {meta['train_until']};
  evaluated on {m['test_rows']} rows from {meta['split_at']} on (positive rate {m['test_positive_rate']:.3f}),
  after an embargo of {meta['horizon_extractions']} extractions, so no training label sees a departure
  a test label is about. {meta['test_employees_also_in_training']} of the {meta['test_employees']} test
  employees also appear (at earlier times) in training.
* Features: feature service `{meta['feature_service']}`, point-in-time correct (Feast
  `get_historical_features`), in this order, each with the fingerprint of the code that computed
  it (serving refuses this model once values computed by other code are served):

| position | feature | computed by |
| --- | --- | --- |
{rows}

* Dropped from training: {meta['dropped_rows_missing_features']} label rows with a feature missing in the TTL.
* Entity dataframe fingerprint `{meta['entity_df_sha256']}`; dataset fingerprint `{meta['dataset_sha256']}`.

## Metrics

| metric | value |
| --- | --- |
| ROC AUC | {m['roc_auc']:.3f} |
| precision at {THRESHOLD} | {m['precision']:.3f} |
| recall at {THRESHOLD} | {m['recall']:.3f} |
| Brier score | {m['brier']:.4f} |

![ROC curve](roc_curve.png)

## Calibration (deciles of predicted probability)

| mean predicted | observed rate |
| --- | --- |
{calibration}

## Intended use and limits

Decision support for retention conversations, never an automated decision about a person. The
features carry no names, salaries or demographic attributes; salary enters only as a band.
Quality gate: ROC AUC >= {MIN_ROC_AUC} before this version may become `latest`.
"""


def recompute_history(settings: Settings) -> list[str]:
    """Recompute every partition computed by other code than this checkout's, oldest first."""
    stale = ingest.stale_partitions(settings)
    for done, day in enumerate(stale, 1):
        log.info("recomputing history: %d/%d, the extraction of %s", done, len(stale), day)
        ingest.recompute(settings, day)
    return [day.isoformat() for day in stale]


def train(resources: Resources, horizon: int = dataset.HORIZON, recompute: bool = False) -> TrainResult:
    """Labels -> point-in-time training set -> model, stored with its card; promoted if it passes.

    Every partition must have been computed by the same code for the features the model takes
    (dataset.MixedHistory otherwise); ``recompute`` first recomputes the partitions this
    checkout's code would compute differently, from their kept raw exports."""
    settings = resources.settings
    if recompute:
        recomputed = recompute_history(settings)
        log.info("recomputed %d partition(s) with the current code: %s", len(recomputed), ", ".join(recomputed) or "none")
    labels = dataset.build_labels(settings, horizon)
    refs = online.service_feature_refs(resources.store)
    names = [r.split(":", 1)[1] for r in refs]
    computed_by = dataset.history_fingerprints(settings, names)
    frame = dataset.point_in_time(resources, labels)
    complete = frame.dropna(subset=names)
    dropped = len(frame) - len(complete)
    train_rows, test_rows, cutoff = time_split(complete, horizon)
    if train_rows[dataset.LABEL].nunique() < 2 or test_rows[dataset.LABEL].nunique() < 2:
        raise dataset.DatasetError("both classes are needed on each side of the time split")
    model = pipeline().fit(train_rows[names].to_numpy(), train_rows[dataset.LABEL].to_numpy())
    metrics, curve = evaluate(model, test_rows, names)
    version = datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%SZ")
    prefix = f"{MODEL_PREFIX}/{version}"
    meta = {
        "version": version, "trained_at": datetime.now(timezone.utc).isoformat(),
        "feature_service": online.FEATURE_SERVICE, "feature_refs": refs, "feature_view_ttl_seconds": FEATURE_TTL.total_seconds(),
        "feature_fingerprints": {ref: computed_by[name] for ref, name in zip(refs, names) if name in computed_by},
        "horizon_extractions": horizon, "split_at": cutoff.isoformat(), "train_rows": int(len(train_rows)),
        "train_until": pd.Timestamp(train_rows[spec.TIMESTAMP].max()).isoformat(),
        "test_employees_also_in_training": int(len(set(test_rows[spec.ENTITY_KEY]) & set(train_rows[spec.ENTITY_KEY]))),
        "test_employees": int(test_rows[spec.ENTITY_KEY].nunique()),
        "dropped_rows_missing_features": int(dropped), "label_rows": int(len(labels)),
        "entity_df_sha256": dataset.fingerprint(labels), "dataset_sha256": dataset.fingerprint(complete),
        "metrics": metrics, "libraries": _versions(), "min_roc_auc": MIN_ROC_AUC,
    }
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    artifact = buffer.getvalue()
    meta["model_sha256"] = hashlib.sha256(artifact).hexdigest()
    s3.put_bytes(settings, f"{prefix}/model.joblib", artifact)
    s3.put_bytes(settings, f"{prefix}/metadata.json", json.dumps(meta, indent=2).encode(), content_type="application/json")
    s3.put_bytes(settings, f"{prefix}/features.json", json.dumps({"feature_service": online.FEATURE_SERVICE, "feature_refs": refs,
                                                                   "feature_fingerprints": meta["feature_fingerprints"]}).encode(),
                 content_type="application/json")
    s3.put_bytes(settings, f"{prefix}/entity_df.parquet", labels.to_parquet(index=False))
    s3.put_bytes(settings, f"{prefix}/roc_curve.png", _roc_png(curve, metrics["roc_auc"]), content_type="image/png")
    s3.put_bytes(settings, f"{prefix}/model_card.md", _model_card(meta).encode(), content_type="text/markdown")
    uri = f"s3://{settings.s3_bucket}/{prefix}/"
    promoted = metrics["roc_auc"] >= MIN_ROC_AUC
    if promoted:
        promote(settings, version)
    return TrainResult(version, uri, metrics, promoted)


@dataclass
class LoadedModel:
    version: str
    model: Pipeline
    feature_service: str
    feature_refs: list[str]
    roc_auc: float | None = None
    fingerprints: dict = field(default_factory=dict)  # {ref: fingerprint} of the code that computed its training data


def promote(settings: Settings, version: str) -> dict:
    """Point ``latest`` at a stored version (training does this when the gate passes; an operator
    can roll back with it). The pointer records the artifact's SHA-256, checked before loading."""
    prefix = f"{MODEL_PREFIX}/{version}"
    meta = json.loads(s3.get_bytes(settings, f"{prefix}/metadata.json"))
    uri = f"s3://{settings.s3_bucket}/{prefix}/"
    pointer = {"version": version, "uri": uri, "features_uri": f"{uri}features.json",
               "roc_auc": meta["metrics"]["roc_auc"], "model_sha256": meta["model_sha256"]}
    s3.put_bytes(settings, LATEST_MODEL_POINTER, json.dumps(pointer).encode(), content_type="application/json")
    log.info("model %s promoted to %s", version, LATEST_MODEL_POINTER)
    return pointer


def _pointer(settings: Settings) -> dict | None:
    if not s3.exists(settings, LATEST_MODEL_POINTER):
        return None
    return json.loads(s3.get_bytes(settings, LATEST_MODEL_POINTER))


def latest_version(settings: Settings) -> str | None:
    """The promoted model's version (one small read), or None before any model passed the gate."""
    pointer = _pointer(settings)
    return pointer["version"] if pointer else None


def load_latest(settings: Settings) -> LoadedModel:
    """The promoted model. Unpickling runs code, so the artifact must have the SHA-256 that training
    recorded in the pointer: a model.joblib replaced by anyone else is refused, never loaded."""
    pointer = _pointer(settings)
    if pointer is None:
        raise ServingError("no model has passed the quality gate yet: run `python -m training train`", "no_model")
    prefix = f"{MODEL_PREFIX}/{pointer['version']}"
    meta = json.loads(s3.get_bytes(settings, f"{prefix}/metadata.json"))
    artifact = s3.get_bytes(settings, f"{prefix}/model.joblib")
    digest = hashlib.sha256(artifact).hexdigest()
    if not pointer.get("model_sha256") or not hmac.compare_digest(digest, pointer["model_sha256"]):
        raise ServingError(f"refusing to load model {pointer['version']}: model.joblib has SHA-256 {digest[:12]}..., "
                           f"the promotion recorded {str(pointer.get('model_sha256'))[:12]}... (retrain to promote "
                           "a model again)", "no_model")
    model = joblib.load(io.BytesIO(artifact))
    return LoadedModel(pointer["version"], model, meta["feature_service"], meta["feature_refs"],
                       meta.get("metrics", {}).get("roc_auc"), meta.get("feature_fingerprints", {}))


def feature_vectors(resources: Resources, loaded: LoadedModel, employee_ids: list[int],
                    now: datetime | None = None) -> np.ndarray:
    """The model's input rows, assembled by name in the model's stored order; refuses anything off."""
    online.check_service(resources.store, loaded.feature_service, loaded.feature_refs, loaded.version)
    roster = online.served_roster(resources.settings)
    if roster is not None:
        online.check_fingerprints(loaded.version, loaded.fingerprints, roster)
    vectors = online.online_vectors(resources, employee_ids, refs=loaded.feature_refs,
                                    service=loaded.feature_service, roster=roster, now=now)
    return np.asarray([vectors[int(i)] for i in employee_ids], dtype=float)


def probabilities(loaded: LoadedModel, vectors) -> np.ndarray:
    """The model's probability of leaving for complete vectors in the model's order (every reader
    refuses missing values before this, so sklearn's finiteness and parameter checks are skipped:
    on one row they cost more than the prediction)."""
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        return loaded.model.predict_proba(np.asarray(vectors, dtype=float))[:, 1]


def predict(resources: Resources, employee_ids: list[int]) -> dict[int, float]:
    """Probability of leaving within the horizon, per employee, from online features."""
    loaded = load_latest(resources.settings)
    vectors = feature_vectors(resources, loaded, employee_ids)
    return {int(i): float(p) for i, p in zip(employee_ids, probabilities(loaded, vectors))}


EXHAUSTIVE_SKEW_CHECK = 100_000  # every active employee up to this many; a fresh random sample above


@dataclass
class SkewReport:
    extraction: str
    checked: int
    active: int
    seed: int | None
    mismatches: list[str]
    by_feature: dict[str, int]

    def summary(self) -> str:
        scope = (f"all {self.checked} active employees" if self.checked == self.active
                 else f"a random sample of {self.checked} of {self.active} active employees (seed {self.seed})")
        per_feature = ", ".join(f"{k}: {v}" for k, v in self.by_feature.items() if v) or "none"
        return (f"skew check against the extraction of {self.extraction}: {len(self.mismatches)} mismatch(es) in "
                f"{scope}; per feature: {per_feature}")


def skew_check(resources: Resources, seed: int | None = None, limit: int = EXHAUSTIVE_SKEW_CHECK) -> SkewReport:
    """Online values and event times against the offline point-in-time ones, exactly.

    Redis must hold, for each active employee of the served extraction, the offline store's
    values as of that extraction, bit for bit, stamped with the extraction's event time. A
    missing employee or feature is a reported mismatch.
    """
    store, settings = resources.store, resources.settings
    roster = online.served_roster(settings)
    if roster is None:
        raise dataset.DatasetError(f"no features partitions under {settings.features_uri}: ingest exports first")
    active = roster.active_ids()
    ids = active
    if len(active) > limit:
        seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**32)
        ids = sorted(np.random.default_rng(seed).choice(active, size=limit, replace=False).tolist())
        log.info("skew check: sampling %d of %d active employees with seed %d", limit, len(active), seed)
    refs = online.service_feature_refs(store)
    names = online.names_of(refs)
    offline = dataset.point_in_time(resources, pd.DataFrame(
        {spec.ENTITY_KEY: ids, spec.TIMESTAMP: [pd.Timestamp(roster.event_time)] * len(ids)}))
    columns = online.fetch_sdk(store, ids)
    row_of = {employee: row for row, employee in enumerate(columns.employee_ids)}
    mismatches: list[str] = []
    by_feature = {name: 0 for name in [*names, spec.TIMESTAMP]}
    for record in offline.to_dict("records"):
        employee = int(record[spec.ENTITY_KEY])
        row = row_of[employee]
        for name in names:
            online_value, stamp = columns.values[name][row], columns.event_times[name][row]
            offline_value = record[name]
            offline_value = None if pd.isna(offline_value) else offline_value.item() if hasattr(offline_value, "item") else offline_value
            if online_value is None or offline_value is None or online_value != offline_value \
                    or type(online_value) is not type(offline_value):
                by_feature[name] += 1
                mismatches.append(f"employee {employee}: {name} online={online_value!r} offline={offline_value!r}")
            elif stamp != roster.event_time:
                by_feature[spec.TIMESTAMP] += 1
                mismatches.append(f"employee {employee}: {name} stamped {stamp} online, the offline row is "
                                  f"{roster.event_time}")
    return SkewReport(roster.extraction.isoformat(), len(ids), len(active), seed if len(active) > limit else None,
                      mismatches, by_feature)
