"""Online store health: what is actually in Redis, checked after every materialization.

Feast only records when materialization last ran; it cannot tell that Redis evicted keys, that a
run loaded nothing, or that an employee is missing. Online reads even ignore the TTL and return an
absent employee as present with timestamp 0. So this module reads Redis itself, in Feast's layout
(one hash per entity, a ``_ts:<feature view>`` field holding the event timestamp):

* **freshness**: the stored event timestamps (every entity, or a sample) against the newest
  published extraction and the allowed staleness; oldest, median and newest age are reported;
  the registry's materialization intervals are compared with the newest extraction too;
* **coverage**: active employees of the newest extraction missing online (fails above a
  tolerance), and entities online that should no longer be served;
* **eviction and memory**: ``evicted_keys`` / ``expired_keys`` deltas since the previous check
  (kept on S3, so they survive the process and Redis restarts are detected), used vs max memory,
  and whether the eviction policy could evict Feast's keys, which have no TTL.

Keys are listed with SCAN, never KEYS. Results come as text for logs, JSON, and Prometheus metrics.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import redis
from botocore.exceptions import ClientError

from core import redis_client, s3
from core.settings import Settings
from etl import spec
from etl.layout import list_partitions
from features import online

log = logging.getLogger(__name__)

FEATURE_VIEW = online.FEATURE_VIEW
SCAN_COUNT = 5_000
EVICTING_ALL_KEYS = {"allkeys-lru", "allkeys-lfu", "allkeys-random"}


class RedisUnavailable(RuntimeError):
    """Redis could not be reached; the message says where and why."""


@dataclass
class HealthReport:
    checked_at: str
    redis: str
    entities_online: int
    sampled: int
    latest_extraction: str | None
    age_seconds: dict[str, float] = field(default_factory=dict)  # oldest, median, newest
    stale_active: int = 0
    allowed_staleness_seconds: float = 0.0
    active_expected: int = 0
    active_missing: int = 0
    inactive_served: int = 0
    materialized_until: str | None = None
    evicted_since_last: int = 0
    expired_since_last: int = 0
    used_memory: int = 0
    maxmemory: int = 0
    maxmemory_policy: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def memory_ratio(self) -> float:
        return self.used_memory / self.maxmemory if self.maxmemory else 0.0

    def summary(self) -> dict:
        return {**asdict(self), "healthy": self.healthy, "memory_ratio": round(self.memory_ratio, 4)}

    def text(self) -> str:
        ages = self.age_seconds
        fmt = lambda s: f"{s / 3600:.1f}h" if s is not None else "n/a"  # noqa: E731
        lines = [
            f"online store {self.redis}: {'HEALTHY' if self.healthy else 'UNHEALTHY'} (checked in {self.seconds:.2f}s)",
            f"  entities online: {self.entities_online} (timestamps read: {self.sampled})",
            f"  newest extraction: {self.latest_extraction}; materialized until: {self.materialized_until}",
            f"  age of served values: oldest {fmt(ages.get('oldest'))}, median {fmt(ages.get('median'))}, "
            f"newest {fmt(ages.get('newest'))}; allowed {fmt(self.allowed_staleness_seconds)}; stale active: {self.stale_active}",
            f"  coverage: {self.active_expected - self.active_missing}/{self.active_expected} active employees online, "
            f"{self.inactive_served} no longer active still served",
            f"  evicted since last check: {self.evicted_since_last}, expired: {self.expired_since_last}; "
            f"memory {self.used_memory / 1e6:.1f} MB of "
            f"{f'{self.maxmemory / 1e6:.1f} MB' if self.maxmemory else 'no maxmemory'} (policy {self.maxmemory_policy})",
        ]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _connect(settings: Settings) -> redis.Redis:
    client = redis_client.connect(settings, socket_connect_timeout=3, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {settings.redis_location}: {str(exc).rstrip('.')}. "
                               "Check FP_REDIS_URL (and FP_REDIS_SENTINEL_MASTER) and that Redis is up.") from exc
    return client


def scan_entities(client: redis.Redis, project: str) -> dict[int, bytes]:
    """Every online entity of ``project`` (employee id -> Redis key), found with SCAN."""
    prefix, suffix = online.entity_key_prefix(), project.encode()
    pattern = redis_glob_escape(prefix) + b"*" + redis_glob_escape(suffix)
    found: dict[int, bytes] = {}
    for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
        # <prefix><value type:4><value length:4><int64 little endian:8><project>
        if key.endswith(suffix) and len(key) == len(prefix) + 16 + len(suffix):
            found[int.from_bytes(key[len(prefix) + 8:len(prefix) + 16], "little", signed=True)] = key
    return found


def redis_glob_escape(raw: bytes) -> bytes:
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def read_timestamps(client: redis.Redis, keys: list[bytes]) -> list[datetime | None]:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts_field = online.timestamp_field()
    out: list[datetime | None] = []
    for start in range(0, len(keys), 10_000):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[start:start + 10_000]:
                pipe.hget(key, ts_field)
            for raw in pipe.execute():
                if raw:
                    stamp = Timestamp.FromString(raw)
                    out.append(datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, timezone.utc))
                else:
                    out.append(None)
    return out


def state_key(settings: Settings) -> str:
    """Counters are per Redis server (host, port, db) and Feast project."""
    url = urlparse(settings.redis_url)
    server = f"{url.hostname}_{url.port or 6379}_{(url.path or '/0').lstrip('/') or '0'}"
    return f"monitoring/{settings.feast_project}/{server}.json"


def load_state(settings: Settings) -> dict | None:
    try:
        return json.loads(s3.get_bytes(settings, state_key(settings)))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise


def save_state(settings: Settings, state: dict) -> None:
    s3.put_bytes(settings, state_key(settings), json.dumps(state).encode(), content_type="application/json")


def _materialized_until(settings: Settings) -> datetime | None:
    from features.resources import Resources  # Feast is only needed for this one read

    try:
        view = Resources.for_process(settings).store.get_feature_view(FEATURE_VIEW)
    except Exception as exc:  # noqa: BLE001 - a registry problem is reported, not fatal to the other checks
        log.warning("could not read the registry's materialization intervals: %s", exc)
        return None
    ends = [end for _, end in view.materialization_intervals]
    return max(ends) if ends else None


def check(settings: Settings, *, now: datetime | None = None, sample: int | None = None,
          max_staleness: timedelta | None = None, coverage_tolerance: float = 0.0,
          memory_warn_ratio: float = 0.8, use_registry: bool = True, save: bool = True) -> HealthReport:
    """Check the online store; ``now`` can be moved forward to test staleness.

    This function reads (Redis, S3, the registry); the ``judge_*`` functions decide."""
    from features.definitions import FEATURE_TTL

    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    allowed = max_staleness or FEATURE_TTL
    client = _connect(settings)
    shown = settings.redis_url.split("@")[-1]
    report = HealthReport(checked_at=now.isoformat(), redis=shown, entities_online=0, sampled=0,
                          latest_extraction=None, allowed_staleness_seconds=allowed.total_seconds())

    # Coverage and freshness against the newest published extraction.
    served = scan_entities(client, settings.feast_project)
    report.entities_online = len(served)
    dates = list_partitions(settings)
    active: set[int] = set()
    if dates:
        report.latest_extraction = dates[-1].isoformat()
        active = set(online.active_ids(settings, dates[-1]).tolist())
        judge_coverage(report, active, set(served), coverage_tolerance)
    else:
        report.problems.append(f"no published features partition under s3://{settings.s3_bucket}/{settings.s3_features_prefix}")

    ids = sampled_ids(sorted(served), sample)
    stamps = read_timestamps(client, [served[i] for i in ids])
    latest_ts = spec.extraction_timestamp(dates[-1]) if dates else None
    judge_freshness(report, ids, stamps, active, now, allowed, latest_ts)
    if use_registry:
        until = _materialized_until(settings)
        report.materialized_until = until.isoformat() if until else None
        if latest_ts and (until is None or until < latest_ts):
            report.problems.append(f"the registry says {FEATURE_VIEW} is materialized until {report.materialized_until}, "
                                   f"before the newest extraction {report.latest_extraction}")

    # Eviction and memory.
    stats, memory, server = client.info("stats"), client.info("memory"), client.info("server")
    report.used_memory = int(memory.get("used_memory", 0))
    report.maxmemory = int(memory.get("maxmemory", 0))
    report.maxmemory_policy = str(memory.get("maxmemory_policy", ""))
    current = {"run_id": server.get("run_id"), "evicted_keys": int(stats.get("evicted_keys", 0)),
               "expired_keys": int(stats.get("expired_keys", 0)), "at": now.isoformat()}
    judge_counters(report, load_state(settings) if save else None, current)
    judge_memory(report, memory_warn_ratio)
    if save:
        save_state(settings, current)
    client.close()
    report.seconds = time.perf_counter() - started
    return report


def sampled_ids(ids: list[int], sample: int | None) -> list[int]:
    """``sample`` ids spread evenly over the sorted ``ids`` (all of them without a sample)."""
    if sample is None or sample >= len(ids):
        return ids
    step = len(ids) / sample
    return [ids[int(i * step)] for i in range(sample)]


def judge_coverage(report: HealthReport, active: set[int], served: set[int], tolerance: float) -> None:
    """Active employees missing online fail above ``tolerance`` (a share of the active ones);
    entities served that are no longer active are a warning."""
    missing = active - served
    report.active_expected = len(active)
    report.active_missing = len(missing)
    report.inactive_served = len(served - active)
    if active and len(missing) > tolerance * len(active):
        report.problems.append(f"{len(missing)} of {len(active)} active employees have no online features "
                               f"(e.g. {sorted(missing)[:5]}); tolerance {tolerance:.1%}")
    if report.inactive_served:
        report.warnings.append(f"{report.inactive_served} entities online are not active in the newest extraction")


def judge_freshness(report: HealthReport, ids: list[int], stamps: list[datetime | None], active: set[int],
                    now: datetime, allowed: timedelta, latest: datetime | None) -> None:
    """Ages of the served values; an active employee whose value is absent, older than ``allowed``
    or older than the newest extraction is stale."""
    report.sampled = len(stamps)
    ages = [(now - s).total_seconds() for s in stamps if s is not None]
    if ages:
        report.age_seconds = {"oldest": max(ages), "median": statistics.median(ages), "newest": min(ages)}
    stale = [i for i, s in zip(ids, stamps)
             if i in active and (s is None or now - s > allowed or (latest is not None and s < latest))]
    report.stale_active = len(stale)
    if stale:
        report.problems.append(f"{len(stale)} active employees are served values older than the newest extraction "
                               f"({report.latest_extraction}) or than {allowed} (e.g. {stale[:5]})")


def judge_counters(report: HealthReport, previous: dict | None, current: dict) -> None:
    """Evictions and expirations since the previous check; counters restart with Redis (a new run_id)."""
    if previous and previous.get("run_id") == current["run_id"]:
        report.evicted_since_last = current["evicted_keys"] - previous["evicted_keys"]
        report.expired_since_last = current["expired_keys"] - previous["expired_keys"]
    else:
        # First check, or Redis restarted (its counters started again): everything counted so far is new.
        report.evicted_since_last, report.expired_since_last = current["evicted_keys"], current["expired_keys"]
        if previous:
            report.warnings.append("Redis restarted since the previous check (run_id changed)")
    if report.evicted_since_last > 0:
        report.problems.append(f"Redis evicted {report.evicted_since_last} keys since the previous check "
                               f"(policy {report.maxmemory_policy}, maxmemory {report.maxmemory})")


def judge_memory(report: HealthReport, warn_ratio: float) -> None:
    if not report.maxmemory:
        report.warnings.append("maxmemory is not set: Redis can grow until its container is killed for memory")
    elif report.memory_ratio > warn_ratio:
        report.warnings.append(f"memory at {report.memory_ratio:.0%} of maxmemory")
    if report.maxmemory_policy in EVICTING_ALL_KEYS:
        report.warnings.append(f"maxmemory-policy {report.maxmemory_policy} can evict Feast keys, which have no TTL; "
                               f"prefer noeviction (writes fail loudly) or volatile-*")


def prometheus_text(report: HealthReport, project: str) -> str:
    """The report as Prometheus metrics (text exposition format, for a node-exporter textfile)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = {"project": project, "feature_view": FEATURE_VIEW}

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)

    gauge("feature_store_online_healthy", "1 when every online store check passed", 1 if report.healthy else 0)
    gauge("feature_store_online_entities", "Entities present in Redis", report.entities_online)
    gauge("feature_store_online_freshness_oldest_seconds", "Age of the oldest served event timestamp",
          report.age_seconds.get("oldest", 0))
    gauge("feature_store_online_freshness_median_seconds", "Median age of served event timestamps",
          report.age_seconds.get("median", 0))
    gauge("feature_store_online_stale_active_entities", "Active employees served stale values", report.stale_active)
    gauge("feature_store_online_coverage_ratio", "Share of active employees present online",
          (report.active_expected - report.active_missing) / report.active_expected if report.active_expected else 0)
    gauge("feature_store_online_missing_active_entities", "Active employees absent online", report.active_missing)
    gauge("feature_store_online_evicted_keys", "Keys Redis evicted since the previous check", report.evicted_since_last)
    gauge("feature_store_online_memory_ratio", "Redis used_memory / maxmemory", report.memory_ratio)
    gauge("feature_store_online_check_timestamp_seconds", "When the check ran",
          datetime.fromisoformat(report.checked_at).timestamp())
    return generate_latest(registry).decode()
