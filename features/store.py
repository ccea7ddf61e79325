"""The Feast feature store as the pipeline uses it: apply, materialize, serve only active employees.

Feast reads its configuration from features/feature_store.yaml, whose values come from the
environment; ``open_store`` exports them from core.settings first, so a laptop and a pod load the
same repository the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlparse
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.errors import FeastObjectNotFoundException
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from core.settings import Settings
from etl import features as spec
from etl.layout import features_dataset

log = logging.getLogger(__name__)

REPO_PATH = Path(__file__).resolve().parent
FEATURE_VIEW = "employee_features"
FEATURE_SERVICE = "attrition_model_v1"


def open_store(settings: Settings) -> FeatureStore:
    settings.export_to_environ()
    configure_offline_engine(settings)
    return FeatureStore(repo_path=str(REPO_PATH))


def configure_offline_engine(settings: Settings) -> None:
    """Let the DuckDB offline store read our S3: httpfs from its PyPI package, our credentials.

    Feast's duckdb store reads through ibis's default DuckDB connection. The httpfs extension is
    loaded from the `duckdb-ext-httpfs` package (never downloaded: autoinstall is off), and an S3
    secret carries the endpoint, region and keys of core.settings. With no keys configured (an IAM
    role), DuckDB's credential chain is used.
    """
    import duckdb
    import ibis

    connection = ibis.duckdb.connect()
    raw = connection.con
    extensions = Path(duckdb.__file__).resolve().parent.parent / "duckdb_ext" / "extensions"
    raw.execute("SET autoinstall_known_extensions = false")
    raw.execute(f"SET extension_directory = '{extensions}'")
    raw.execute("LOAD httpfs")
    options = [f"REGION '{settings.s3_region}'"]
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        options += [f"KEY_ID '{settings.aws_access_key_id}'", f"SECRET '{settings.aws_secret_access_key}'"]
    if settings.s3_endpoint_url:
        endpoint = urlparse(settings.s3_endpoint_url)
        options += [f"ENDPOINT '{endpoint.netloc}'", "URL_STYLE 'path'",
                    f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}"]
    raw.execute(f"CREATE OR REPLACE SECRET feature_platform_s3 (TYPE s3, {', '.join(options)})")
    ibis.set_backend(connection)


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


def changed_definitions(store: FeatureStore, settings: Settings) -> list[str]:
    """Repository objects that differ from (or are missing in) the registry."""
    from features.definitions import build  # Feast object construction is only needed here

    return [_label(o) for o in build(settings) if _is_changed(store, o)]


def apply(store: FeatureStore, settings: Settings, only_if_changed: bool = False) -> list[str]:
    """Register the definitions; return what was applied. Materialization watermarks survive.

    An apply that replaces a feature view must not reset its materialization intervals, or the
    next incremental run would re-read the whole TTL window (or, worse, skip nothing it should).
    The intervals are read before and restored after if the registry lost them.
    """
    from features.definitions import build

    objects = list(build(settings))
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


def entities_to_retire(settings: Settings, up_to: datetime) -> tuple[set[int], set[int]]:
    """(active ids, ids not to be served) as of the latest extraction at or before ``up_to``.

    An employee stops being served once their latest row says they left, or once they are absent
    from the latest extraction (they left in a batch that was never ingested).
    """
    dataset = features_dataset(settings)
    table = dataset.to_table(columns=[spec.ENTITY_KEY, spec.TIMESTAMP, spec.ACTIVE],
                             filter=pc.field(spec.TIMESTAMP) <= up_to)
    if table.num_rows == 0:
        return set(), set()
    latest_extraction = pc.max(table[spec.TIMESTAMP])
    in_latest = table.filter(pc.equal(table[spec.TIMESTAMP], latest_extraction))
    active = set(in_latest.filter(in_latest[spec.ACTIVE])[spec.ENTITY_KEY].to_pylist())
    everyone = set(pc.unique(table[spec.ENTITY_KEY]).to_pylist())
    return active, everyone - active


def _online_client(store: FeatureStore):
    return store._get_provider().online_store._get_client(store.config.online_store)


def _online_key(store: FeatureStore, employee_id: int) -> bytes:
    """An employee's Redis key, exactly as Feast's redis online store builds it."""
    key = EntityKeyProto(join_keys=[spec.ENTITY_KEY], entity_values=[ValueProto(int64_val=employee_id)])
    return _redis_key(store.config.project, key, store.config.entity_key_serialization_version)


def retire(store: FeatureStore, employee_ids: set[int]) -> int:
    """Remove these employees' `employee_features` values from Redis, in Feast's own key layout."""
    if not employee_ids:
        return 0
    view = store.get_feature_view(FEATURE_VIEW)
    fields = [_mmh3(f"{view.name}:{f.name}") for f in view.features] + [f"_ts:{view.name}".encode()]
    client = _online_client(store)
    removed = 0
    ids = sorted(employee_ids)
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for employee_id in ids[start:start + 5000]:
                pipe.hdel(_online_key(store, employee_id), *fields)
            removed += sum(1 for n in pipe.execute() if n)
    return removed


def clear_same_timestamp(store: FeatureStore, settings: Settings, start: datetime, end: datetime) -> int:
    """Make room for corrected rows of an already-materialized window.

    Feast writes a row to Redis only if its event time is newer than the stored one, so a corrected
    export (same extraction date, same event time) would never replace the served values. For each
    entity in the window whose online value carries exactly the window row's event time, the online
    value is removed so that the materialization that follows writes the corrected one; values from
    a newer extraction are left alone, so a backfill never puts older data over newer.
    """
    dataset = features_dataset(settings)
    rows = dataset.to_table(columns=[spec.ENTITY_KEY, spec.TIMESTAMP],
                            filter=(pc.field(spec.TIMESTAMP) >= start) & (pc.field(spec.TIMESTAMP) < end))
    if rows.num_rows == 0:
        return 0
    view_ts_field = f"_ts:{FEATURE_VIEW}".encode()
    client = _online_client(store)
    ids = rows[spec.ENTITY_KEY].to_pylist()
    stamps = [Timestamp(seconds=int(t.timestamp())) for t in rows[spec.TIMESTAMP].to_pylist()]
    keys = [_online_key(store, i) for i in ids]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, view_ts_field)
        stored = pipe.execute()
    same = [i for i, (raw, stamp) in enumerate(zip(stored, stamps)) if raw and Timestamp.FromString(raw) == stamp]
    if same:
        retire(store, {ids[i] for i in same})
    return len(same)


@dataclass(frozen=True)
class MaterializeResult:
    mode: str
    end: str
    seconds: float
    active: int
    retired: int

    def summary(self) -> str:
        return (f"materialized {FEATURE_VIEW} ({self.mode}) up to {self.end} in {self.seconds:.1f}s; "
                f"{self.active} active employees served, {self.retired} leavers removed from the online store")


def materialize(store: FeatureStore, settings: Settings, end: datetime, start: datetime | None = None,
                refresh: date | None = None) -> MaterializeResult:
    """Incremental (from the last watermark) when ``start`` is None, else the explicit window.

    ``refresh`` names an extraction date just (re)published: incremental windows are on event
    time, so a re-run or a correction of a date already behind the watermark would never reach
    Redis; its one-day window is loaded explicitly too (correction-safe, see clear_same_timestamp).
    Leavers are removed from Redis right after, in the same step, so they are never served
    beyond the run that saw them leave.
    """
    started = time.perf_counter()
    if start is None:
        store.materialize_incremental(end_date=end, feature_views=[FEATURE_VIEW])
        mode = "incremental"
        if refresh is not None:
            day = spec.extraction_timestamp(refresh)
            cleared = clear_same_timestamp(store, settings, day, day + timedelta(days=1))
            store.materialize(start_date=day, end_date=day + timedelta(days=1), feature_views=[FEATURE_VIEW])
            mode += f", extraction {refresh} refreshed ({cleared} rows replaced)"
    else:
        cleared = clear_same_timestamp(store, settings, start, end)
        store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])
        mode = f"window from {start.isoformat()}, {cleared} corrected rows refreshed"
    # Who is active is decided by the newest published extraction, whatever window was loaded.
    active, leavers = entities_to_retire(settings, datetime.now(timezone.utc))
    retired = retire(store, leavers)
    result = MaterializeResult(mode, end.isoformat(), time.perf_counter() - started, len(active), retired)
    log.info(result.summary())
    return result


class ServingError(RuntimeError):
    """Online features are missing or do not match what the model expects."""


def feature_refs(store: FeatureStore, service_name: str = FEATURE_SERVICE) -> list[str]:
    """The service's features as `view:feature`, in the order the service declares them."""
    service = store.get_feature_service(service_name)
    return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def online_vectors(store: FeatureStore, employee_ids: list[int], service_name: str = FEATURE_SERVICE) -> dict[int, list]:
    """Each employee's online feature vector in the service's declared order, assembled by name.

    Never relies on the order of Feast's response; an employee with no online values is an error.
    """
    refs = feature_refs(store, service_name)
    names = [r.split(":", 1)[1] for r in refs]
    response = store.get_online_features(
        features=store.get_feature_service(service_name),
        entity_rows=[{spec.ENTITY_KEY: int(i)} for i in employee_ids],
    ).to_dict()
    vectors: dict[int, list] = {}
    missing = []
    for row, employee_id in enumerate(response[spec.ENTITY_KEY]):
        vector = [response[name][row] for name in names]
        if all(v is None for v in vector):
            missing.append(employee_id)
        vectors[employee_id] = vector
    if missing:
        raise ServingError(f"no online features for employee(s) {missing[:10]} "
                           f"({len(missing)} of {len(employee_ids)}): not active, or not materialized yet")
    return vectors


