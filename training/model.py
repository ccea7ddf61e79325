"""Train, evaluate, store and serve the attrition model.

The model artifact carries everything needed to reproduce and serve it: the feature service name
and the exact ordered feature references, the entity dataframe and dataset fingerprints, library
versions, metrics and a model card with a ROC curve. Versions live under
``models/attrition/<version>/``; ``models/attrition/latest.json`` moves only when a model passes the
quality gate. Serving assembles the vector by feature name in the stored order, never by the order
of Feast's response, and refuses missing, stale or mismatched features.
"""

from __future__ import annotations

import io
import json
import logging
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata

import joblib
import numpy as np
import pandas as pd
from feast import FeatureStore
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from core import s3
from core.settings import Settings
from etl import features as spec
from features import store as fs
from features.check import LATEST_MODEL_POINTER
from features.definitions import FEATURE_TTL
from training import dataset

log = logging.getLogger(__name__)

MODEL_PREFIX = "models/attrition"
MIN_ROC_AUC = 0.60
THRESHOLD = 0.5
TEST_SHARE = 0.25  # the latest quarter of label times is held out


class ServingError(RuntimeError):
    """The model cannot be served these features; the message says what is wrong."""


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


def time_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Train on earlier label times, test on later ones (no shuffling across time)."""
    times = np.sort(frame[spec.TIMESTAMP].unique())
    if len(times) < 2:
        raise dataset.DatasetError("need label rows at two or more extraction dates for a time-based split")
    cutoff = times[min(len(times) - 1, max(1, int(len(times) * (1 - TEST_SHARE))))]
    return frame[frame[spec.TIMESTAMP] < cutoff], frame[frame[spec.TIMESTAMP] >= cutoff], pd.Timestamp(cutoff)


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
    rows = "\n".join(f"| {i + 1} | `{ref}` |" for i, ref in enumerate(meta["feature_refs"]))
    calibration = "\n".join(f"| {c['predicted']:.3f} | {c['observed']:.3f} |" for c in m["calibration"])
    return f"""# Attrition model {meta['version']}

Predicts whether an active employee leaves within {meta['horizon_days']} days of an HR extraction.

* Trained {meta['trained_at']} on {meta['train_rows']} label rows before {meta['split_at']};
  evaluated on {m['test_rows']} rows at or after it (positive rate {m['test_positive_rate']:.3f}).
* Features: feature service `{meta['feature_service']}`, point-in-time correct (Feast
  `get_historical_features`), in this order:

| position | feature |
| --- | --- |
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


def train(store: FeatureStore, settings: Settings, horizon=dataset.HORIZON) -> TrainResult:
    labels = dataset.build_labels(settings, horizon)
    refs = fs.feature_refs(store)
    names = [r.split(":", 1)[1] for r in refs]
    frame = dataset.point_in_time(store, settings, labels)
    complete = frame.dropna(subset=names)
    dropped = len(frame) - len(complete)
    train_rows, test_rows, cutoff = time_split(complete)
    if train_rows[dataset.LABEL].nunique() < 2 or test_rows[dataset.LABEL].nunique() < 2:
        raise dataset.DatasetError("both classes are needed on each side of the time split")
    model = pipeline().fit(train_rows[names].to_numpy(), train_rows[dataset.LABEL].to_numpy())
    metrics, curve = evaluate(model, test_rows, names)
    version = datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%SZ")
    prefix = f"{MODEL_PREFIX}/{version}"
    meta = {
        "version": version, "trained_at": datetime.now(timezone.utc).isoformat(),
        "feature_service": fs.FEATURE_SERVICE, "feature_refs": refs, "feature_view_ttl_seconds": FEATURE_TTL.total_seconds(),
        "horizon_days": horizon.days, "split_at": cutoff.isoformat(), "train_rows": int(len(train_rows)),
        "dropped_rows_missing_features": int(dropped), "label_rows": int(len(labels)),
        "entity_df_sha256": dataset.fingerprint(labels), "dataset_sha256": dataset.fingerprint(complete),
        "metrics": metrics, "libraries": _versions(), "min_roc_auc": MIN_ROC_AUC,
    }
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    client = s3.client(settings)
    s3.put_bytes(settings, f"{prefix}/model.joblib", buffer.getvalue(), s3=client)
    s3.put_bytes(settings, f"{prefix}/metadata.json", json.dumps(meta, indent=2).encode(), content_type="application/json", s3=client)
    s3.put_bytes(settings, f"{prefix}/features.json", json.dumps({"feature_service": fs.FEATURE_SERVICE, "feature_refs": refs}).encode(),
                 content_type="application/json", s3=client)
    s3.put_bytes(settings, f"{prefix}/entity_df.parquet", labels.to_parquet(index=False), s3=client)
    s3.put_bytes(settings, f"{prefix}/roc_curve.png", _roc_png(curve, metrics["roc_auc"]), content_type="image/png", s3=client)
    s3.put_bytes(settings, f"{prefix}/model_card.md", _model_card(meta).encode(), content_type="text/markdown", s3=client)
    uri = f"s3://{settings.s3_bucket}/{prefix}/"
    promoted = metrics["roc_auc"] >= MIN_ROC_AUC
    if promoted:
        pointer = {"version": version, "uri": uri, "features_uri": f"{uri}features.json", "roc_auc": metrics["roc_auc"]}
        s3.put_bytes(settings, LATEST_MODEL_POINTER, json.dumps(pointer).encode(), content_type="application/json", s3=client)
    result = TrainResult(version, uri, metrics, promoted)
    log.info(result.summary())
    return result


@dataclass
class LoadedModel:
    version: str
    model: Pipeline
    feature_service: str
    feature_refs: list[str]


def load_latest(settings: Settings) -> LoadedModel:
    if not s3.exists(settings, LATEST_MODEL_POINTER):
        raise ServingError("no model has passed the quality gate yet: run `python -m training train`")
    pointer = json.loads(s3.get_bytes(settings, LATEST_MODEL_POINTER))
    prefix = f"{MODEL_PREFIX}/{pointer['version']}"
    meta = json.loads(s3.get_bytes(settings, f"{prefix}/metadata.json"))
    model = joblib.load(io.BytesIO(s3.get_bytes(settings, f"{prefix}/model.joblib")))
    return LoadedModel(pointer["version"], model, meta["feature_service"], meta["feature_refs"])


def feature_vectors(store: FeatureStore, loaded: LoadedModel, employee_ids: list[int],
                    now: datetime | None = None) -> np.ndarray:
    """The model's input rows, assembled by name in the model's stored order; refuses anything off."""
    registered = fs.feature_refs(store, loaded.feature_service)
    if registered != loaded.feature_refs:
        raise ServingError(f"feature service {loaded.feature_service} no longer matches model {loaded.version}: "
                           f"registry has {registered}, the model was trained on {loaded.feature_refs}")
    names = [r.split(":", 1)[1] for r in loaded.feature_refs]
    response = store.get_online_features(features=store.get_feature_service(loaded.feature_service),
                                         entity_rows=[{spec.ENTITY_KEY: int(i)} for i in employee_ids]
                                         ).to_dict(include_event_timestamps=True)
    now = now or datetime.now(timezone.utc)
    rows, problems = [], []
    for index, employee_id in enumerate(response[spec.ENTITY_KEY]):
        row = []
        for name in names:
            value = response[name][index]
            stamp = response.get(f"{name}__ts", [None] * len(employee_ids))[index]
            if value is None:
                problems.append(f"employee {employee_id}: {name} missing online")
            elif stamp is not None and now - _aware(stamp) > FEATURE_TTL:
                problems.append(f"employee {employee_id}: {name} is stale (event time {stamp}, TTL {FEATURE_TTL})")
            row.append(value)
        rows.append(row)
    if problems:
        raise ServingError("refusing to predict: " + "; ".join(problems[:10]))
    return np.asarray(rows, dtype=float)


def _aware(stamp) -> datetime:
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(stamp), timezone.utc)


def predict(store: FeatureStore, settings: Settings, employee_ids: list[int]) -> dict[int, float]:
    """Probability of leaving within the horizon, per employee, from online features."""
    loaded = load_latest(settings)
    vectors = feature_vectors(store, loaded, employee_ids)
    return {int(i): float(p) for i, p in zip(employee_ids, loaded.model.predict_proba(vectors)[:, 1])}


def skew_check(store: FeatureStore, settings: Settings, sample: int = 200) -> list[str]:
    """Online vectors against offline point-in-time vectors, feature by feature; returns mismatches.

    For a sample of active employees of the newest extraction, the offline value is retrieved as of
    the materialization time (now), which is what Redis should hold.
    """
    from etl.ingest import read_partition
    from etl.layout import list_partitions

    latest = read_partition(settings, list_partitions(settings)[-1])
    active = latest.filter(latest[spec.ACTIVE])[spec.ENTITY_KEY].to_pylist()
    ids = active[:: max(1, len(active) // sample)][:sample]
    now = pd.Timestamp(datetime.now(timezone.utc))
    offline = dataset.point_in_time(store, settings, pd.DataFrame({spec.ENTITY_KEY: ids, spec.TIMESTAMP: [now] * len(ids)}))
    online = fs.online_vectors(store, ids)
    names = [r.split(":", 1)[1] for r in fs.feature_refs(store)]
    mismatches = []
    for _, row in offline.iterrows():
        employee = int(row[spec.ENTITY_KEY])
        for name, online_value in zip(names, online[employee]):
            offline_value = row[name]
            if pd.isna(offline_value) or online_value is None or not np.isclose(float(offline_value), float(online_value)):
                mismatches.append(f"employee {employee}: {name} online={online_value} offline={offline_value}")
    return mismatches
