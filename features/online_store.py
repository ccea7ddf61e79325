"""Feast's Redis online store, with corrections written in place.

Named in features/feature_store.yaml (``type: features.online_store.PlatformRedisOnlineStore``), so
every writer takes this path: ``python -m features materialize...``, the stock
``feast materialize-incremental`` CLI and Feast's own engine alike. Reads are Feast's, unchanged,
and the Redis layout is Feast's: one hash per entity, one field per feature, ``_ts:<view>``.

The one difference is the rule for an existing value. Feast skips a row whose event time equals
the stored one, so a corrected extraction (same extraction date, same event time) could only reach
Redis if the served value were deleted first, leaving the employee unserved until the rewrite.
Here a row is written when its event time is at or after the stored one: a correction replaces
the served hash in one HSET (readers see the old or the new vector, never a gap), while a row
older than what Redis holds is still skipped, so a backfill never puts older values over newer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import make_tzaware
from google.protobuf.timestamp_pb2 import Timestamp

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


class PlatformRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["features.online_store.PlatformRedisOnlineStore"] = "features.online_store.PlatformRedisOnlineStore"


def _nanos(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000_000 + stamp.nanos


class PlatformRedisOnlineStore(RedisOnlineStore):
    def online_write_batch(self, config: RepoConfig, table, data: list[Row],
                           progress: Callable[[int], Any] | None) -> None:
        store_config = config.online_store
        client = self._get_client(store_config)
        view = _versioned_fv_name(table, config)
        ts_field = f"_ts:{view}"
        keys = [_redis_key(config.project, entity_key,
                           entity_key_serialization_version=config.entity_key_serialization_version)
                for entity_key, _, _, _ in data]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, ts_field)
            stored = pipe.execute()

        # Within a batch the newest row of an entity wins; ties keep the later row (rows come
        # ordered by created timestamp, so that is the corrected one).
        newest: dict[bytes, tuple[int, int]] = {}
        for index, (key, raw, (_, _, event_time, _)) in enumerate(zip(keys, stored, data)):
            stamp = Timestamp()
            stamp.FromDatetime(make_tzaware(event_time))
            nanos = _nanos(stamp)
            if raw and nanos < _nanos(Timestamp.FromString(raw)):
                continue  # older than what is served: a backfill never overwrites newer values
            if key not in newest or nanos >= newest[key][0]:
                newest[key] = (nanos, index)

        with client.pipeline(transaction=False) as pipe:
            for key, (_, index) in newest.items():
                _, values, event_time, _ = data[index]
                stamp = Timestamp()
                stamp.FromDatetime(make_tzaware(event_time))
                mapping: dict[Any, bytes] = {ts_field: stamp.SerializeToString()}
                for name, value in values.items():
                    mapping[_mmh3(f"{view}:{name}")] = value.SerializeToString()
                pipe.hset(key, mapping=mapping)
                if store_config.key_ttl_seconds:
                    pipe.expire(name=key, time=store_config.key_ttl_seconds)
            pipe.execute()
        if progress:
            progress(len(data))
