"""Labels from the HR exports and point-in-time correct training sets from the offline store.

A label row is (employee_id, event_timestamp = an extraction date t, label): label is 1 when the
employee leaves within the next HORIZON extractions after t (their leaving extraction L is one of
them). The horizon counts extractions, not days, so every label time sees the same number of later
exports whatever the months' lengths. Rows whose horizon runs past the newest extraction are
dropped (the outcome is not known yet), and so are rows where the employee had already left at t. Features are joined by Feast's
``get_historical_features`` on the feature service: only values with event time <= t, within TTL.
"""

from __future__ import annotations

import hashlib
import logging
import pandas as pd

from core import s3
from core.settings import Settings
from etl import spec
from etl import layout
from etl.layout import features_dataset
from features import online, ray_engine
from features.definitions import FEATURE_TTL
from features.resources import Resources

log = logging.getLogger(__name__)

HORIZON = 6  # extractions: "leaves within the next six monthly exports"
LABEL = "label"


class DatasetError(RuntimeError):
    """The training set cannot be built as asked; the message says why."""


class MixedHistory(DatasetError):
    """Partitions of the history were computed by different code for a feature the model takes."""


def history_fingerprints(settings: Settings, names: list[str]) -> dict[str, str]:
    """{feature: fingerprint} shared by every published partition, for the features ``names``.

    One training set must not mix values of two definitions of a feature: a model would learn
    from both and be served one. Raises MixedHistory naming each mixed feature and its dates."""
    per_date = layout.partition_fingerprints(settings)
    shared, mixed = {}, []
    for name in names:
        dates_of: dict[str, list] = {}
        for day, fingerprints in per_date.items():
            dates_of.setdefault(fingerprints.get(name, "unrecorded"), []).append(day)
        if len(dates_of) > 1:
            spans = "; ".join(f"{fp} in {len(days)} extraction(s) {days[0]}..{days[-1]}"
                              for fp, days in sorted(dates_of.items(), key=lambda item: item[1][0]))
            mixed.append(f"{name}: {spans}")
        elif dates_of:
            shared[name] = next(iter(dates_of))
    if mixed:
        current = spec.fingerprints()
        raise MixedHistory("the history mixes features computed by different code: " + " | ".join(mixed)
                           + f" (the code here computes {', '.join(f'{n} {current[n]}' for n in names if n in current)})."
                           " Recompute the old partitions from their kept raw exports with the current code: "
                           "python -m training train --recompute-history")
    return shared


def features_table(settings: Settings, columns: list[str]):
    try:
        return features_dataset(settings).to_table(columns=columns)
    except FileNotFoundError:  # nothing was ever published under the prefix
        raise DatasetError(f"no features partitions under {settings.features_uri}: ingest exports first") from None
    except OSError as exc:  # pyarrow's S3 errors: unreachable, refused
        raise s3.StorageError(f"could not read {settings.features_uri}: {str(exc).splitlines()[0][:300]}") from None


def build_labels(settings: Settings, horizon: int = HORIZON) -> pd.DataFrame:
    """The entity dataframe of label rows, oldest first (see the module docstring)."""
    if horizon < 1:
        raise DatasetError(f"the horizon is a number of later extractions, at least 1 (got {horizon})")
    table = features_table(settings, [spec.ENTITY_KEY, spec.TIMESTAMP, spec.LABEL])
    if table.num_rows == 0:
        raise DatasetError(f"no features partitions under {settings.features_uri}: ingest exports first")
    rows = labels_from(table.to_pandas(), horizon)
    log.info("built %d label rows (%d positive) over %d extractions, horizon %d extractions",
             len(rows), int(rows[LABEL].sum()), rows[spec.TIMESTAMP].nunique(), horizon)
    return rows


def labels_from(frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Label rows from every extraction's (employee, event time, left) rows.

    A row is an employee still there at an extraction whose ``horizon`` later extractions are all
    known; its label is 1 when the employee is first seen as left within those extractions."""
    extractions = sorted(frame[spec.TIMESTAMP].unique())
    index = {t: i for i, t in enumerate(extractions)}
    frame = frame.assign(extraction=frame[spec.TIMESTAMP].map(index))
    left_at = frame[frame[spec.LABEL] == 1].groupby(spec.ENTITY_KEY)["extraction"].min().rename("left_at")
    frame = frame.join(left_at, on=spec.ENTITY_KEY)
    still_there = frame["left_at"].isna() | (frame["extraction"] < frame["left_at"])
    known = frame["extraction"] + horizon <= len(extractions) - 1
    rows = frame[still_there & known].copy()
    rows[LABEL] = ((rows["left_at"] > rows["extraction"]) &
                   (rows["left_at"] <= rows["extraction"] + horizon)).astype("int64")
    rows = rows[[spec.ENTITY_KEY, spec.TIMESTAMP, LABEL]].sort_values([spec.TIMESTAMP, spec.ENTITY_KEY])
    return rows.reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of a dataframe's content (row order and column order included)."""
    digest = hashlib.sha256()
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()


def point_in_time(resources: Resources, entity_df: pd.DataFrame,
                  service: str = online.FEATURE_SERVICE) -> pd.DataFrame:
    """``entity_df`` with the service's features as of each row's timestamp, in the service's order.

    Every entity row comes back, exactly once, in the input order: a row with no feature value
    inside the TTL gets nulls. The result is joined back onto the entity dataframe by key, so a
    training set can never shrink silently, whatever the offline store returns.
    """
    store = resources.store
    names = online.names_of(online.service_feature_refs(store, service))
    keys = entity_df[[spec.ENTITY_KEY, spec.TIMESTAMP]]
    if keys.duplicated().any():
        raise DatasetError("the entity dataframe has duplicate (employee_id, event_timestamp) rows")
    if resources.settings.compute_engine == "ray":
        retrieved = ray_engine.historical_features(resources, keys, names, FEATURE_TTL)
    else:
        retrieved = store.get_historical_features(entity_df=keys, features=store.get_feature_service(service)).to_df()
    return join_back(entity_df, retrieved, names)


def join_back(entity_df: pd.DataFrame, retrieved: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The offline store's rows joined back onto the entity dataframe by (employee, event time):
    every entity row once, in its order, nulls where nothing was retrieved, features in ``names`` order."""
    retrieved = retrieved.assign(**{spec.TIMESTAMP: pd.to_datetime(retrieved[spec.TIMESTAMP], utc=True)})
    left = entity_df.assign(**{spec.TIMESTAMP: pd.to_datetime(entity_df[spec.TIMESTAMP], utc=True)})
    merged = left.merge(retrieved[[spec.ENTITY_KEY, spec.TIMESTAMP, *names]], on=[spec.ENTITY_KEY, spec.TIMESTAMP],
                        how="left", validate="one_to_one")
    if len(retrieved) != len(left):
        log.warning("the offline store returned %d rows for %d label rows; missing rows kept with nulls",
                    len(retrieved), len(left))
    return merged[[*entity_df.columns, *names]]
