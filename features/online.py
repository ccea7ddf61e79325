"""The one owner of online reads: who is served, where their values are, and how a vector is built.

Everything that reads served features goes through here: ``python -m features online``,
prediction (CLI and the inference API), the skew check, the demo, the online store check and the
feature server's reads of a feature service (``ServiceRead``: Feast's answer, read directly).

* **Redis layout**: Feast's own (one hash per employee, a field per feature, ``_ts:<view>``);
  ``redis_key`` and ``feature_fields`` spell it out for the few places that touch Redis directly.
* **Who is served**: a ``Roster`` is the active and departed employees of one extraction.
  ``served_roster`` is the extraction materialization last completed (it writes a small state
  object after Redis holds every active employee), so a reader never judges Redis against a
  partition that is published but not yet loaded.
* **One strict assembler**: ``assemble`` builds each vector by feature *name* in the order it is
  given (the model's), never by the position in Feast's response, which varies between
  processes. An unknown employee, a leaver, a missing feature or a value older than the served
  extraction (or than the TTL) is a ``ServingError`` naming the employee and the reason.
  The same function reads the SDK's response and the feature server's JSON.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow.compute as pc
from botocore.exceptions import ClientError

from core import s3
from core.settings import Settings
from etl import spec
from etl import layout

if TYPE_CHECKING:
    from features.resources import Resources

log = logging.getLogger(__name__)

FEATURE_VIEW = "employee_features"
FEATURE_SERVICE = "attrition_model_v1"
ENTITY_KEY_SERIALIZATION_VERSION = 3  # features/feature_store.yaml


class ServingError(RuntimeError):
    """Online features cannot be served as asked; ``reason`` says which rule refused them.

    Reasons: ``unknown`` and ``left`` (not served: 404 over HTTP), ``missing`` and ``stale``
    (an incomplete or outdated vector: 503), ``mismatch`` (the registry's feature service no
    longer matches the model), ``no_model``, ``unavailable`` (the feature server or Redis).
    """

    NOT_SERVED = frozenset({"unknown", "left"})

    def __init__(self, message: str, reason: str, problems: dict[int, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.problems = problems or {}


# --- Redis layout --------------------------------------------------------------------------------

def redis_key(project: str, employee_id: int) -> bytes:
    """An employee's Redis key, exactly as Feast's Redis online store builds it."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=[spec.ENTITY_KEY], entity_values=[Value(int64_val=int(employee_id))])
    return _redis_key(project, key, ENTITY_KEY_SERIALIZATION_VERSION)


def entity_key_prefix() -> bytes:
    """The bytes every employee key starts with (before the id and the project)."""
    from feast.infra.key_encoding_utils import serialize_entity_key_prefix

    return serialize_entity_key_prefix([spec.ENTITY_KEY], ENTITY_KEY_SERIALIZATION_VERSION)


def timestamp_field(view: str = FEATURE_VIEW) -> bytes:
    return f"_ts:{view}".encode()


def feature_fields(view: str = FEATURE_VIEW, names: Iterable[str] = spec.FEATURE_NAMES) -> list[bytes]:
    """The hash fields a view's values occupy, its timestamp field last."""
    from feast.infra.online_stores.helpers import _mmh3

    return [_mmh3(f"{view}:{name}") for name in names] + [timestamp_field(view)]


# --- Who is served -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Roster:
    """The employees of one extraction: served (active) and no longer served (left)."""

    extraction: date
    active: np.ndarray  # sorted int64 ids
    left: np.ndarray  # sorted int64 ids, also everyone absent from this extraction but seen before
    # {feature: fingerprint} of the code that computed the served values (etl.spec.fingerprints)
    fingerprints: dict = field(default_factory=dict)

    @property
    def event_time(self) -> datetime:
        return spec.extraction_timestamp(self.extraction)

    def status(self, employee_id: int) -> str:
        for name, ids in (("active", self.active), ("left", self.left)):
            at = np.searchsorted(ids, employee_id)
            if at < len(ids) and ids[at] == employee_id:
                return name
        return "unknown"

    def active_ids(self) -> list[int]:
        return self.active.tolist()


def newest_extraction(settings: Settings, up_to: datetime | None = None) -> date | None:
    dates = [d for d in layout.list_partitions(settings)
             if up_to is None or spec.extraction_timestamp(d) <= up_to]
    return dates[-1] if dates else None


def _active(settings: Settings, extraction: date) -> tuple[np.ndarray, dict]:
    """The sorted ids of the employees active in one extraction and its fingerprints (one partition read)."""
    table = layout.read_partition(settings, extraction, columns=[spec.ENTITY_KEY, spec.ACTIVE])
    active = np.unique(table.filter(table[spec.ACTIVE])[spec.ENTITY_KEY].to_numpy())
    return active, layout.recorded_fingerprints(table.schema)


def active_ids(settings: Settings, extraction: date) -> np.ndarray:
    """The sorted ids of the employees active in one extraction (one partition read)."""
    return _active(settings, extraction)[0]


def read_roster(settings: Settings, extraction: date | None = None) -> Roster | None:
    """Active and departed employees as of ``extraction`` (default: the newest published one).

    An employee stops being served once their row says they left, or once they are absent from
    the extraction (they left in a batch that was never ingested).
    """
    extraction = extraction or newest_extraction(settings)
    if extraction is None:
        return None
    active, fingerprints = _active(settings, extraction)
    seen = layout.features_dataset(settings).to_table(
        columns=[spec.ENTITY_KEY], filter=pc.field(spec.TIMESTAMP) <= spec.extraction_timestamp(extraction))
    everyone = np.unique(seen[spec.ENTITY_KEY].to_numpy())
    return Roster(extraction, active, np.setdiff1d(everyone, active, assume_unique=True), fingerprints)


@dataclass(frozen=True)
class ServedState:
    extraction: date
    active: int
    left_removed: int
    committed_at: str


def commit_served(settings: Settings, roster: Roster, removed: int) -> ServedState:
    """Record that Redis now serves ``roster`` completely (called last by materialization), with
    the fingerprints of the code that computed what it now holds."""
    state = ServedState(roster.extraction, len(roster.active), removed, datetime.now(timezone.utc).isoformat())
    payload = {**state.__dict__, "extraction": roster.extraction.isoformat(), "fingerprints": roster.fingerprints}
    s3.put_bytes(settings, layout.served_state_key(settings), json.dumps(payload).encode(),
                 content_type="application/json")
    return state


def _served_state(settings: Settings) -> dict | None:
    try:
        return json.loads(s3.get_bytes(settings, layout.served_state_key(settings)))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
            raise
    return None


def served_extraction(settings: Settings) -> date | None:
    """The extraction the online store serves; before any commit, the newest published one."""
    return _served_extraction(settings, _served_state(settings))


def _served_extraction(settings: Settings, state: dict | None) -> date | None:
    return date.fromisoformat(state["extraction"]) if state else newest_extraction(settings)


def _served(settings: Settings, state: dict | None, extraction: date | None) -> Roster | None:
    roster = read_roster(settings, extraction) if extraction else None
    if roster is not None and state and "fingerprints" in state:
        # What Redis holds was computed by the code recorded at materialization, even if the
        # partition has been recomputed since.
        roster = replace(roster, fingerprints=state["fingerprints"])
    return roster


def served_roster(settings: Settings) -> Roster | None:
    state = _served_state(settings)
    return _served(settings, state, _served_extraction(settings, state))


def check_fingerprints(model_version: str, model_fingerprints: dict, roster: Roster) -> None:
    """Refuse a model trained on values computed by other code than the values served now.

    ``model_fingerprints`` is {ref: fingerprint} as training recorded it; the roster's are by name."""
    served = {ref: roster.fingerprints.get(names_of([ref])[0], "unrecorded") for ref in sorted(model_fingerprints)}
    differ = [ref for ref, value in served.items() if value != model_fingerprints[ref]]
    if differ:
        detail = ", ".join(f"{ref} (model {model_fingerprints[ref]}, served {served[ref]})" for ref in differ)
        raise ServingError(f"model {model_version} was trained on features computed by other code than the served "
                           f"extraction of {roster.extraction}: {detail}; train and promote a model on the current "
                           "features (python -m training train)", "mismatch")


class RosterCache:
    """The served roster for a long-lived reader: one small GET per refresh, a full read only when
    materialization has committed another extraction."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.roster: Roster | None = None
        self._version = None  # the served state the roster was read for

    def refresh(self) -> Roster | None:
        state = _served_state(self.settings)
        extraction = _served_extraction(self.settings, state)
        version = state["committed_at"] if state else extraction  # a new commit, or before any: a newer partition
        if version is None:
            self.roster = None
        elif self.roster is None or self._version != version:
            self.roster, self._version = _served(self.settings, state, extraction), version
            log.info("serving the extraction of %s: %d active employees", self.roster.extraction,
                     len(self.roster.active))
        return self.roster


# --- Assembly --------------------------------------------------------------------------------------

@dataclass
class OnlineColumns:
    """An online response by feature name: per employee, each feature's value and event time."""

    employee_ids: list[int]
    values: dict[str, list] = field(default_factory=dict)
    event_times: dict[str, list[datetime | None]] = field(default_factory=dict)


class ServiceRead:
    """Feast's ``/get-online-features`` answer for one feature service, read straight from Redis.

    The feature server's hot path. Feast's own read (``get_online_features_async``) builds entity
    protos, a protobuf response and then its JSON form for every request: measured on 2 cores,
    0.75 ms of a request's 0.85 ms in process. This takes the same steps with Feast's own pieces
    and skips the intermediate protobuf: the request context Feast resolves and caches for the
    service, the Redis client, keys and hash fields of Feast's Redis store, its parse of a hash
    (``_get_features_for_entity``) and its JSON form of values and timestamps. The answer is the
    same bytes as Feast's route (tests/serving/test_http.py compares them on present, unknown,
    repeated, departed and incomplete employees).

    ``plan`` returns None for anything but the plain case (one feature view of Feast's Redis store,
    one integer join key, no on-demand or request features): Feast's own route answers those.
    """

    def __init__(self, store, table, join_key: str, requested: list[str], full_feature_names: bool):
        from feast.infra.online_stores.redis import _versioned_fv_name

        self._store = store
        self._online = store._get_provider().online_store
        self._view = _versioned_fv_name(table, store.config)
        self._requested, self._fields = self._online._generate_hset_keys_for_features(
            table, list(requested), fv_name_override=self._view)
        self.view_name = table.name
        self.join_key = join_key
        names = [n for n in self._requested if not n.startswith("_ts:")]
        self._names = names
        prefix = f"{table.projection.name_to_use()}__" if full_feature_names else ""
        self.feature_names = [join_key, *(prefix + n for n in names)]
        # Keys and parsed hashes are pure functions of the id and of the hash's bytes: cached per
        # plan (a plan lives one registry TTL), a repeated read skips the protobuf work.
        self._keys = functools.lru_cache(maxsize=65536)(self._key)
        self._rows = functools.lru_cache(maxsize=8192)(self._row)

    @classmethod
    def plan(cls, store, service, full_feature_names: bool) -> "ServiceRead | None":
        from feast import utils as feast_utils
        from feast.infra.online_stores.redis import RedisOnlineStore
        from feast.value_type import ValueType

        if not isinstance(store._get_provider().online_store, RedisOnlineStore):
            return None
        (_, on_demand, _, entity_types, join_keys, grouped_refs, _, request_data,
         entityless) = feast_utils._get_cached_request_context(store.registry, store.project, service, full_feature_names)
        join_keys = set(join_keys) - {"__dummy_id"}
        if on_demand or request_data or entityless or len(grouped_refs) != 1 or len(join_keys) != 1:
            return None
        (join_key,) = join_keys
        table, requested = grouped_refs[0]
        if entity_types.get(join_key) != ValueType.INT64 or [e.name for e in table.entity_columns] != [join_key]:
            return None
        return cls(store, table, join_key, requested, full_feature_names)

    def accepts(self, entities: dict) -> bool:
        """Only what Feast would read as-is: the join key alone, with int64 ids."""
        ids = entities.get(self.join_key)
        return (len(entities) == 1 and bool(ids)
                and all(type(i) is int and -2**63 <= i < 2**63 for i in ids))

    def _key(self, employee_id: int) -> bytes:
        """Feast's Redis key of an employee (the serialized entity key and the project)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        (key,) = self._online._generate_redis_keys_for_entities(
            self._store.config, [EntityKey(join_keys=[self.join_key], entity_values=[Value(int64_val=employee_id)])])
        return key

    def _row(self, hash_values: tuple) -> tuple[str, list]:
        """One hash as Feast's answer carries it: its event time and values, parsed by Feast."""
        from feast.feature_server_utils import _value_to_native

        stamp, values = self._online._get_features_for_entity(hash_values, self._view, self._requested)
        return _feast_time(stamp), [_value_to_native(values[name]) for name in self._names]

    async def read(self, ids: list[int]) -> dict:
        """Feast's answer in its JSON form (``convert_response_to_dict``), for ``ids`` in order."""
        client = await self._online._get_client_async(self._store.config.online_store)
        async with client.pipeline(transaction=False) as pipe:
            for employee_id in ids:
                pipe.hmget(self._keys(employee_id), self._fields)
            rows = await pipe.execute()
        parsed = [self._rows(tuple(row)) for row in rows]
        count = len(ids)
        present = ["PRESENT"] * count
        stamps = [stamp for stamp, _ in parsed]
        results = [{"values": list(ids), "statuses": present, "event_timestamps": [_EPOCH] * count}]
        results += [{"values": [values[i] for _, values in parsed], "statuses": present, "event_timestamps": stamps}
                    for i in range(len(self._names))]
        return {"results": results, "metadata": {"feature_names": self.feature_names}}


_EPOCH = "1970-01-01T00:00:00Z"  # Feast's event time of an entity column


@functools.lru_cache(maxsize=4096)
def _feast_time(stamp: datetime | None) -> str:
    """An event time as Feast's response carries it (through a protobuf Timestamp); few distinct ones."""
    from feast.feature_server_utils import _timestamp_to_str
    from google.protobuf.timestamp_pb2 import Timestamp

    proto = Timestamp()
    if stamp is not None:
        proto.FromDatetime(stamp)
    return _timestamp_to_str(proto)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    stamp = datetime.fromisoformat(text)
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return None if stamp.timestamp() <= 0 else stamp  # Feast answers 1970-01-01 for "no value"


def parse_response(payload: dict) -> OnlineColumns:
    """Feast's online response in its JSON form (the feature server's body), keyed by name."""
    names = payload["metadata"]["feature_names"]
    results = payload["results"]
    by_name = dict(zip(names, results))
    if spec.ENTITY_KEY not in by_name:
        raise ServingError(f"the online response has no {spec.ENTITY_KEY} column", "unavailable")
    columns = OnlineColumns([int(v) for v in by_name[spec.ENTITY_KEY]["values"]])
    for name, result in by_name.items():
        if name == spec.ENTITY_KEY:
            continue
        columns.values[name] = list(result["values"])
        stamps = result.get("event_timestamps") or [None] * len(result["values"])
        columns.event_times[name] = [_parse_time(s) for s in stamps]
    return columns


def fetch_sdk(store, employee_ids: list[int], service: str = FEATURE_SERVICE) -> OnlineColumns:
    """Online values through the Feast SDK, in the same form as the feature server's."""
    from feast.feature_server_utils import convert_response_to_dict

    response = store.get_online_features(features=store.get_feature_service(service),
                                         entity_rows=[{spec.ENTITY_KEY: int(i)} for i in employee_ids])
    return parse_response(convert_response_to_dict(response.proto))


def assemble(columns: OnlineColumns, names: list[str], roster: Roster, ttl: timedelta,
             now: datetime | None = None) -> dict[int, list]:
    """Each employee's vector in ``names`` order, or a ServingError listing every refusal."""
    now = now or datetime.now(timezone.utc)
    absent = [n for n in names if n not in columns.values]
    if absent:
        raise ServingError(f"the online response lacks feature(s) {absent}", "mismatch")
    vectors: dict[int, list] = {}
    problems: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for row, employee_id in enumerate(columns.employee_ids):
        status = roster.status(employee_id)
        if status != "active":
            reasons[employee_id] = status
            problems[employee_id] = ("unknown employee" if status == "unknown" else
                                     f"left or absent in the extraction of {roster.extraction}: no longer served")
            continue
        vector, issues = [], []
        for name in names:
            value, stamp = columns.values[name][row], columns.event_times[name][row]
            if value is None or (isinstance(value, float) and np.isnan(value)) or stamp is None:
                issues.append(("missing", f"{name} missing online"))
            elif stamp < roster.event_time:
                issues.append(("stale", f"{name} from {stamp.date()}, older than the served extraction {roster.extraction}"))
            elif now - stamp > ttl:
                issues.append(("stale", f"{name} from {stamp.date()}, older than the TTL {ttl.days} days"))
            vector.append(value)
        if issues:
            reasons[employee_id] = issues[0][0]
            problems[employee_id] = "; ".join(text for _, text in issues)
        else:
            vectors[employee_id] = vector
    if problems:
        # Not served at all outranks an incomplete vector: the caller learns the most basic fact.
        order = ["unknown", "left", "missing", "stale"]
        reason = min(reasons.values(), key=order.index)
        shown = "; ".join(f"employee {i}: {text}" for i, text in list(problems.items())[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ServingError(f"refusing to serve {len(problems)} of {len(columns.employee_ids)} employee(s): {shown}{more}",
                           reason, problems)
    return vectors


def service_feature_refs(store, service: str = FEATURE_SERVICE) -> list[str]:
    """The service's features as ``view:feature``, in the order the registry declares them."""
    found = store.get_feature_service(service)
    return [f"{p.name_to_use()}:{f.name}" for p in found.feature_view_projections for f in p.features]


def names_of(refs: list[str]) -> list[str]:
    return [r.split(":", 1)[1] for r in refs]


def check_service(store, service: str, model_refs: list[str], model_version: str) -> None:
    """The registry's service must declare exactly the model's features, in the model's order."""
    registered = service_feature_refs(store, service)
    if registered != list(model_refs):
        raise ServingError(f"feature service {service} no longer matches model {model_version}: registry has "
                           f"{registered}, the model was trained on {list(model_refs)}", "mismatch")


def served_refs(resources: "Resources", service: str = FEATURE_SERVICE) -> list[str]:
    """The order vectors are served in: the current model's, checked against the registry; with no
    model trained through ``service`` yet, the service's declared order."""
    from features import compatibility

    location = compatibility.latest_model_location(resources.settings)
    model = compatibility.load_model_features(resources.settings, location) if location else None
    if model is None or model.service != service:
        return service_feature_refs(resources.store, service)
    check_service(resources.store, service, list(model.refs), location)
    return list(model.refs)


def online_vectors(resources: "Resources", employee_ids: list[int], *, refs: list[str] | None = None,
                   service: str = FEATURE_SERVICE, roster: Roster | None = None,
                   now: datetime | None = None) -> dict[int, list]:
    """Strict online vectors through the SDK, in ``refs`` order (default: the service's)."""
    from features.definitions import FEATURE_TTL

    refs = refs or service_feature_refs(resources.store, service)
    roster = roster or served_roster(resources.settings)
    if roster is None:
        raise ServingError(f"no features partition is published under {resources.settings.features_uri}", "unavailable")
    return assemble(fetch_sdk(resources.store, employee_ids, service), names_of(refs), roster, FEATURE_TTL, now)
