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

Every Redis call also has a deadline. redis-py's defaults wait without limit for a reply and retry a
refused connection three times with backoff (5.5 s measured): a stopped or unreachable Redis then
hangs a feature-server request or a materialization. Here the feature server's reads (the async
client) fail within ``serving_timeout_seconds`` (one quick retry), and writes and CLI reads (the
sync client) within ``timeout_seconds``, so the inference API answers 503 instead of timing out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal

import redis
import redis.asyncio as aioredis
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import make_tzaware
from google.protobuf.timestamp_pb2 import Timestamp
from redis.backoff import ExponentialBackoff

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


class PlatformRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["features.online_store.PlatformRedisOnlineStore"] = "features.online_store.PlatformRedisOnlineStore"
    serving_timeout_seconds: float = 0.5
    """Connect and reply deadline of the feature server's reads (one retry after 50 ms)."""
    timeout_seconds: float = 10.0
    """Connect and reply deadline of writes and synchronous reads (two retries)."""


def _nanos(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000_000 + stamp.nanos


class PlatformRedisOnlineStore(RedisOnlineStore):
    def _standalone_kwargs(self, store_config, timeout: float) -> dict:
        nodes, kwargs = self._parse_connection_string(store_config.connection_string)
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout, **kwargs,
                "host": nodes[0]["host"], "port": nodes[0]["port"]}

    def _get_client(self, online_store_config):
        if not self._client and online_store_config.redis_type == RedisType.redis:
            self._client = redis.Redis(
                **self._standalone_kwargs(online_store_config, online_store_config.timeout_seconds),
                retry=redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.1), 2))
        return super()._get_client(online_store_config)  # cluster and sentinel: Feast's clients

    async def _get_client_async(self, online_store_config):
        if not self._client_async and online_store_config.redis_type == RedisType.redis:
            self._client_async = aioredis.Redis(
                **self._standalone_kwargs(online_store_config, online_store_config.serving_timeout_seconds),
                retry=aioredis.retry.Retry(ExponentialBackoff(cap=0.05, base=0.05), 1))
        return await super()._get_client_async(online_store_config)

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
