"""The Feast feature store as the pipeline uses it: apply, materialize, serve only active employees.

Each function takes the process's ``Resources`` (features/resources.py): its settings, the store
built from them and the online store's Redis client.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import duckdb
from botocore.exceptions import BotoCoreError, ClientError
from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.errors import FeastObjectNotFoundException

from core.s3 import StorageError
from etl import spec
from features import online
from features.online import FEATURE_SERVICE, FEATURE_VIEW
from features.resources import Resources

log = logging.getLogger(__name__)

def _label(obj) -> str:
    return f"{type(obj).__name__} {obj.name}"


def _registered(store: FeatureStore, obj):
    getters = {Entity: store.get_entity, FeatureView: store.get_feature_view,
               FeatureService: store.get_feature_service, FileSource: store.get_data_source}
    try:
        return getters[type(obj)](obj.name)
    except FeastObjectNotFoundException:
        return None


# Filled in or stamped by the registry, not defined by the user (entity_columns is inferred at apply).
_REGISTRY_FIELDS = {"meta", "entity_columns", "created_timestamp", "last_updated_timestamp"}


def _strip_registry_fields(message) -> None:
    for field_desc, value in list(message.ListFields()):
        if field_desc.name in _REGISTRY_FIELDS:
            message.ClearField(field_desc.name)
        elif field_desc.message_type is not None and not field_desc.message_type.GetOptions().map_entry:
            for item in ([value] if hasattr(value, "ListFields") else value):
                _strip_registry_fields(item)


def _definition(obj):
    """What a user defines of an object: its spec, without what the registry fills in or stamps."""
    proto = obj.to_proto()
    spec_ = proto.spec if hasattr(proto, "spec") else proto
    spec_ = type(spec_).FromString(spec_.SerializeToString())
    _strip_registry_fields(spec_)
    return spec_


def _is_changed(store: FeatureStore, obj) -> bool:
    registered = _registered(store, obj)
    return registered is None or _definition(registered) != _definition(obj)


def changed_definitions(resources: Resources) -> list[str]:
    """Repository objects that differ from (or are missing in) the registry."""
    from features.definitions import build  # Feast object construction is only needed here

    return [_label(o) for o in build(resources.settings) if _is_changed(resources.store, o)]


def apply(resources: Resources, only_if_changed: bool = False) -> list[str]:
    """Register the definitions; return what was applied. Materialization watermarks survive.

    An apply that replaces a feature view must not reset its materialization intervals, or the
    next incremental run would re-read the whole TTL window (or, worse, skip nothing it should).
    The intervals are read before and restored after if the registry lost them.
    """
    from features.definitions import build

    store = resources.store
    objects = list(build(resources.settings))
    changed = [o for o in objects if _is_changed(store, o)]
    if only_if_changed and not changed:
        log.info("feature definitions unchanged; nothing to apply")
        return []
    existing = _registered(store, next(o for o in objects if isinstance(o, FeatureView)))
    intervals = list(existing.materialization_intervals) if existing else []
    store.apply(objects)
    if intervals:
        view = store.get_feature_view(FEATURE_VIEW)
        if list(view.materialization_intervals) != intervals:
            log.warning("apply reset the materialization intervals of %s; restoring %d", FEATURE_VIEW, len(intervals))
            for start, end in intervals:
                store.registry.apply_materialization(view, store.project, start, end, commit=False)
            store.registry.commit()
    names = [_label(o) for o in (changed if only_if_changed else objects)]
    log.info("applied %s", ", ".join(names))
    return names


def registry_error(exc: Exception) -> str:
    """The database's own first line for a failed registry call (the driver's, not SQLAlchemy's wrapper)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return reason[0][:300] if reason else type(exc).__name__


def retire(resources: Resources, employee_ids) -> int:
    """Remove these employees' `employee_features` values from Redis, in Feast's own key layout."""
    ids = sorted(int(i) for i in employee_ids)
    if not ids:
        return 0
    store = resources.store
    view = store.get_feature_view(FEATURE_VIEW)
    fields = online.feature_fields(view.name, [f.name for f in view.features])
    client = resources.redis
    removed = 0
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for employee_id in ids[start:start + 5000]:
                pipe.hdel(online.redis_key(store.project, employee_id), *fields)
            removed += sum(1 for n in pipe.execute() if n)
    return removed


class DefinitionsOutOfDate(RuntimeError):
    """The registry's feature source is not where, or not how, this configuration reads features."""


def check_source_matches_engine(resources: Resources) -> None:
    """The registered source names the features where this configuration keeps them and as its
    engine reads them (a glob for DuckDB, the folder for Ray): after FP_COMPUTE_ENGINE or the
    features location changes, `apply` must run first."""
    from features.definitions import source_path

    registered = resources.store.get_feature_view(FEATURE_VIEW).batch_source.path
    expected = source_path(resources.settings)
    if registered != expected:
        raise DefinitionsOutOfDate(
            f"the registry's {FEATURE_VIEW} reads {registered}, but this configuration (FP_S3_BUCKET, "
            f"FP_S3_FEATURES_PREFIX, FP_COMPUTE_ENGINE={resources.settings.compute_engine}) reads {expected}. "
            "Nothing was materialized; run `python -m features apply` first (the nightly DAG's "
            "apply_definitions task does)")


def _materialized_until(store: FeatureStore) -> datetime | None:
    view = store.get_feature_view(FEATURE_VIEW, allow_registry_cache=False)
    ends = [end for _, end in view.materialization_intervals]
    return max(ends) if ends else None


@contextlib.contextmanager
def _offline_read_errors(settings):
    """A failed read of the features on S3 (DuckDB's httpfs, or Ray Data's pyarrow and s3fs) as a
    StorageError that says where and what to check. Feast records a window only after writing it,
    so nothing is marked materialized and a re-run converges."""
    try:
        yield
    except (duckdb.IOException, BotoCoreError, ClientError, OSError) as exc:  # HTTPException is an IOException
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise StorageError(f"reading the features at {settings.features_uri} failed: {reason}. Nothing was marked "
                           "materialized; re-run once S3 answers (check FP_S3_ENDPOINT_URL and the S3 credentials)") from exc


@dataclass(frozen=True)
class MaterializeResult:
    mode: str
    end: str
    seconds: float
    active: int
    retired: int
    served_extraction: str | None

    def summary(self) -> str:
        return (f"materialized {FEATURE_VIEW} ({self.mode}) up to {self.end} in {self.seconds:.1f}s; "
                f"serving the extraction of {self.served_extraction}: {self.active} active employees, "
                f"{self.retired} leavers removed from the online store")


def materialize(resources: Resources, end: datetime, start: datetime | None = None,
                refresh: date | None = None) -> MaterializeResult:
    """Incremental (from the last watermark) when ``start`` is None, else the explicit window.

    Nothing is deleted before it is rewritten: rows are written over the served ones (a corrected
    extraction replaces its values in place, see features/online_store.py), and only once every
    active employee is written are leavers removed. The served extraction is committed last
    (features.online.commit_served), so readers judge freshness against what Redis really holds.

    ``refresh`` names an extraction date just (re)published: incremental windows are on event
    time, so a re-run or a correction of a date already behind the watermark would never reach
    Redis; its one-day window is loaded explicitly too.
    """
    started = time.perf_counter()
    store, settings = resources.store, resources.settings
    check_source_matches_engine(resources)
    with _offline_read_errors(settings):
        if start is None:
            store.materialize_incremental(end_date=end, feature_views=[FEATURE_VIEW])
            mode = "incremental"
            if refresh is not None:
                day = spec.extraction_timestamp(refresh)
                store.materialize(start_date=day, end_date=day + timedelta(days=1), feature_views=[FEATURE_VIEW])
                mode += f", extraction {refresh} refreshed in place"
        else:
            store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])
            mode = f"window from {start.isoformat()}, rows of the same event time replaced in place"
    # Who is served is decided by the newest extraction Redis now holds, whatever window was loaded.
    until = _materialized_until(store)
    extraction = online.newest_extraction(settings, up_to=min(until, datetime.now(timezone.utc)) if until else None)
    roster = online.read_roster(settings, extraction) if extraction else None
    retired = 0
    if roster is not None:
        retired = retire(resources, roster.left)
        online.commit_served(settings, roster, retired)
    result = MaterializeResult(mode, end.isoformat(), time.perf_counter() - started,
                               len(roster.active) if roster is not None else 0, retired,
                               roster.extraction.isoformat() if roster is not None else None)
    return result
