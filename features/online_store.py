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

Rows are written by one rule on every path (``_write``). On a standalone or Sentinel-managed Redis
the compare-and-set runs in a Lua script, ``WRITE_NEWER``, a few hundred entities per call: the
stored event time is read, compared and the hash replaced in one step, with no second round trip
and no window in which another writer could slip between the read and the write. A Redis Cluster
(whose scripts cannot span hash slots) takes the same rule in two pipelined passes.

Materialization hands whole Arrow batches to ``online_write_arrow`` (features/engine.py): every
key, value and timestamp is serialized by Feast's own functions, once per distinct value of a
column instead of once per row, so the bytes are Feast's and the per-row Python work is a lookup.

Every Redis call also has a deadline. redis-py's defaults wait without limit for a reply and retry a
refused connection three times with backoff (5.5 s measured): a stopped or unreachable Redis then
hangs a feature-server request or a materialization. Here the feature server's reads (the async
client) fail within ``serving_timeout_seconds`` (one quick retry), and writes and CLI reads (the
sync client) within ``timeout_seconds``, so the inference API answers 503 instead of timing out.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import redis
import redis.asyncio as aioredis
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.utils import _coerce_datetime, make_tzaware
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis.backoff import ExponentialBackoff

from core import redis_client

log = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]

# Entities per script call: each call holds Redis for well under a millisecond (about 0.9 ms per
# 250 entities measured on 2 cores), so feature-server reads interleave with a materialization.
SCRIPT_BATCH = 250

# KEYS: the entities' Redis keys. ARGV: ts field, TTL seconds (0: none), feature count n, the n
# field names, then per entity: event time seconds, nanos, serialized Timestamp, n values.
# A row is written when its event time is at or after the stored one (see the module docstring).
WRITE_NEWER = """
local ts_field, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- The stored google.protobuf.Timestamp: field 1 seconds, field 2 nanos, both varints.
local function stored_time(raw)
  local seconds, nanos, i = 0, 0, 1
  while i <= #raw do
    local tag = string.byte(raw, i)
    i = i + 1
    local value, scale, width = 0, 1, 0
    repeat
      local byte = string.byte(raw, i)
      i = i + 1
      width = width + 1
      value = value + (byte % 128) * scale
      scale = scale * 128
    until byte < 128
    if width == 10 then value = value - 18446744073709551616 end  -- a negative int64
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds, nanos
end
local written, per = 0, 3 + n
for k = 1, #KEYS do
  local at = 3 + n + (k - 1) * per
  local seconds, nanos = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local write = true
  local raw = redis.call('HGET', KEYS[k], ts_field)
  if raw then
    local s, ns = stored_time(raw)
    write = seconds > s or (seconds == s and nanos >= ns)
  end
  if write then
    local args = {ts_field, ARGV[at + 3]}
    for f = 1, n do
      args[#args + 1] = ARGV[3 + f]
      args[#args + 1] = ARGV[at + 3 + f]
    end
    redis.call('HSET', KEYS[k], unpack(args))
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
end
return written
"""


@dataclass
class Writes:
    """Rows ready for Redis: per row its key, event time and serialized values (one list per field)."""

    keys: list[bytes]
    seconds: list[int]
    nanos: list[int]
    stamps: list[bytes]
    fields: list[bytes]
    values: list[list[bytes]]

    def __len__(self) -> int:
        return len(self.keys)


def _stamp(event_time: datetime) -> tuple[int, int, bytes]:
    """An event time as Feast's Redis store writes it: (seconds, nanos, serialized Timestamp)."""
    stamp = Timestamp()
    stamp.FromDatetime(make_tzaware(event_time))
    return stamp.seconds, stamp.nanos, stamp.SerializeToString()


def _writes(keys: list[bytes], stamps: list[tuple[int, int, bytes]], view, config: RepoConfig,
            features: list[str], values: list[list[bytes]]) -> Writes:
    name = _versioned_fv_name(view, config)
    seconds, nanos, serialized = (list(column) for column in zip(*stamps)) if stamps else ([], [], [])
    return Writes(keys=keys, seconds=seconds, nanos=nanos, stamps=serialized,
                  fields=[_mmh3(f"{name}:{feature}") for feature in features], values=values)


def _by_distinct_value(values: np.ndarray, convert: Callable[[np.ndarray], list]) -> list:
    """``convert`` applied to the distinct values only, spread back to every row."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    converted = np.empty(len(distinct), dtype=object)
    converted[:] = convert(distinct)
    return converted[codes].tolist()


def _key_template(project: str, join_key: str, version: int) -> tuple[bytes, bytes] | None:
    """Feast's key of one INT64 entity as prefix + 8 little-endian bytes + suffix, read off a probe
    serialized by Feast itself; None when its layout is not that (the per-row path is taken)."""
    probe = 0x0102030405060708
    key = _redis_key(project, EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=probe)]),
                     entity_key_serialization_version=version)
    packed = struct.pack("<q", probe)
    if key.count(packed) != 1:
        return None
    prefix, _, suffix = key.partition(packed)
    return prefix, suffix


def _arrow_keys(config: RepoConfig, join_keys: dict[str, ValueType], batch: pa.RecordBatch) -> list[bytes]:
    names = list(join_keys)
    if len(names) == 1 and join_keys[names[0]] == ValueType.INT64:
        column = batch.column(names[0])
        template = _key_template(config.project, names[0], config.entity_key_serialization_version)
        if template is not None and column.null_count == 0 and pa.types.is_integer(column.type):
            prefix, suffix = template
            raw = column.to_numpy(zero_copy_only=False).astype("<i8").tobytes()
            return [prefix + raw[at:at + 8] + suffix for at in range(0, len(raw), 8)]
    values = {k: python_values_to_proto_values(batch.column(k).to_numpy(zero_copy_only=False), t)
              for k, t in join_keys.items()}
    return [_redis_key(config.project, EntityKeyProto(join_keys=names, entity_values=[values[k][i] for k in names]),
                       entity_key_serialization_version=config.entity_key_serialization_version)
            for i in range(batch.num_rows)]


def arrow_writes(config: RepoConfig, view, batch: pa.RecordBatch) -> Writes:
    """An Arrow batch as Feast's ``_convert_arrow_to_proto`` and ``online_write_batch`` would write it:
    the same keys, field names and serialized values and timestamps, computed per distinct value."""
    join_keys = {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}
    values = []
    for field in view.features:
        value_type = field.dtype.to_value_type()
        values.append(_by_distinct_value(
            batch.column(field.name).to_numpy(zero_copy_only=False),
            lambda distinct, t=value_type: [v.SerializeToString() for v in python_values_to_proto_values(distinct, t)]))
    # As Feast: pandas datetimes, coerced to Python datetimes, made timezone-aware, then Timestamp.
    times = batch.column(view.batch_source.timestamp_field).to_numpy(zero_copy_only=False)
    stamps = _by_distinct_value(times, lambda distinct: [_stamp(_coerce_datetime(t)) for t in pd.to_datetime(distinct)])
    return _writes(_arrow_keys(config, join_keys, batch), stamps, view, config,
                   [field.name for field in view.features], values)


def row_writes(config: RepoConfig, view, data: list[Row]) -> Writes:
    """Feast's rows (entity key, values, event time), serialized as Feast's own Redis store does."""
    features = list(data[0][1]) if data else []
    keys = [_redis_key(config.project, key, entity_key_serialization_version=config.entity_key_serialization_version)
            for key, _, _, _ in data]
    return _writes(keys, [_stamp(event_time) for _, _, event_time, _ in data], view, config, features,
                   [[values[f].SerializeToString() for _, values, _, _ in data] for f in features])


class PlatformRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["features.online_store.PlatformRedisOnlineStore"] = "features.online_store.PlatformRedisOnlineStore"
    serving_timeout_seconds: float = 0.5
    """Connect and reply deadline of the feature server's reads (one retry after 50 ms)."""
    timeout_seconds: float = 10.0
    """Connect and reply deadline of writes and synchronous reads (two retries)."""


def _nanos(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000_000 + stamp.nanos


class PlatformRedisOnlineStore(RedisOnlineStore):
    _script = None

    def _connection(self, store_config, timeout: float) -> tuple[list[dict], dict]:
        """(the connection string's nodes, its options with the connect and reply deadlines)."""
        nodes, kwargs = self._parse_connection_string(store_config.connection_string)
        return nodes, {"socket_timeout": timeout, "socket_connect_timeout": timeout, **kwargs}

    def _standalone_kwargs(self, store_config, timeout: float) -> dict:
        nodes, kwargs = self._connection(store_config, timeout)
        return {**kwargs, "host": nodes[0]["host"], "port": nodes[0]["port"]}

    def _sentinel_master(self, store_config, timeout: float, asynchronous: bool, retry):
        """The master behind Sentinel, followed across failovers (core.redis_client: the Sentinels
        get the servers' password and TLS options, which Feast's own Sentinel client leaves out)."""
        nodes, kwargs = self._connection(store_config, timeout)
        return redis_client.sentinel_master([(n["host"], int(n["port"])) for n in nodes], store_config.sentinel_master,
                                            kwargs, asynchronous=asynchronous, retry=retry)

    def _new_client(self, store_config, asynchronous: bool):
        """The platform's client: the reads' short deadline and single retry for the feature server
        (async), the writes' longer ones otherwise; None for a cluster (Feast's own client)."""
        if asynchronous:
            timeout, retry = store_config.serving_timeout_seconds, aioredis.retry.Retry(
                ExponentialBackoff(cap=0.05, base=0.05), 1)
        else:
            timeout, retry = store_config.timeout_seconds, redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.1), 2)
        if store_config.redis_type == RedisType.redis:
            client_class = aioredis.Redis if asynchronous else redis.Redis
            return client_class(**self._standalone_kwargs(store_config, timeout), retry=retry)
        if store_config.redis_type == RedisType.redis_sentinel:
            return self._sentinel_master(store_config, timeout, asynchronous, retry)
        return None

    def _get_client(self, online_store_config):
        if not self._client:
            self._client = self._new_client(online_store_config, asynchronous=False)
        return super()._get_client(online_store_config)

    async def _get_client_async(self, online_store_config):
        if not self._client_async:
            self._client_async = self._new_client(online_store_config, asynchronous=True)
        return await super()._get_client_async(online_store_config)

    def online_write_batch(self, config: RepoConfig, table, data: list[Row],
                           progress: Callable[[int], Any] | None) -> None:
        self._write(config, table, row_writes(config, table, data))
        if progress:
            progress(len(data))

    def online_write_arrow(self, config: RepoConfig, table, batch: pa.RecordBatch) -> int:
        """Write an Arrow batch of ``table``'s rows; returns how many entities were written."""
        return self._write(config, table, arrow_writes(config, table, batch))

    def _write(self, config: RepoConfig, table, writes: Writes) -> int:
        store_config = config.online_store
        client = self._get_client(store_config)
        ts_field = f"_ts:{_versioned_fv_name(table, config)}".encode()
        if store_config.redis_type == RedisType.redis_cluster:
            written = self._write_in_two_passes(client, store_config, ts_field, writes)
        else:
            written = self._write_by_script(client, store_config, ts_field, writes)
        log.debug("%s: %d of %d rows written, %d older than the served values", table.name, written, len(writes),
                  len(writes) - written)
        return written

    def _write_by_script(self, client, store_config, ts_field: bytes, writes: Writes) -> int:
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(WRITE_NEWER)
        head = [ts_field, store_config.key_ttl_seconds or 0, len(writes.fields), *writes.fields]
        rows = list(zip(writes.seconds, writes.nanos, writes.stamps, *writes.values))
        with client.pipeline(transaction=False) as pipe:
            for begin in range(0, len(rows), SCRIPT_BATCH):
                argv = list(head)
                for row in rows[begin:begin + SCRIPT_BATCH]:
                    argv.extend(row)
                self._script(keys=writes.keys[begin:begin + SCRIPT_BATCH], args=argv, client=pipe)
            return sum(pipe.execute())

    @staticmethod
    def _write_in_two_passes(client, store_config, ts_field: bytes, writes: Writes) -> int:
        with client.pipeline(transaction=False) as pipe:
            for key in writes.keys:
                pipe.hget(key, ts_field)
            stored = pipe.execute()
        # The script's rule, row by row in batch order: a row is written when it is not older than
        # what its entity holds by then (stored, or an earlier row of this batch); the last one wins.
        latest: dict[bytes, int] = {}
        newest: dict[bytes, int] = {}
        written = 0
        for index, (key, raw) in enumerate(zip(writes.keys, stored)):
            nanos = writes.seconds[index] * 1_000_000_000 + writes.nanos[index]
            if key not in latest:
                latest[key] = _nanos(Timestamp.FromString(raw)) if raw else -1
            if nanos < latest[key]:
                continue
            latest[key] = nanos
            newest[key] = index
            written += 1
        with client.pipeline(transaction=False) as pipe:
            for key, index in newest.items():
                mapping = {ts_field: writes.stamps[index]}
                mapping.update(zip(writes.fields, (column[index] for column in writes.values)))
                pipe.hset(key, mapping=mapping)
                if store_config.key_ttl_seconds:
                    pipe.expire(name=key, time=store_config.key_ttl_seconds)
            pipe.execute()
        return written
