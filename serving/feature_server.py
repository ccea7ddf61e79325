"""The Feast feature server, read-only: Feast's own app, with every route that writes closed.

Stock ``feast serve`` also answers ``/push``, ``/write-to-online-store`` and ``/materialize*``
without authentication unless OIDC or Kubernetes auth is set up: anyone who can reach it can
rewrite served features. Online values are written only by the pipeline's materialization, which
talks to Redis itself, so this server needs none of those routes. It runs Feast's app (same
``/get-online-features`` contract, same Prometheus metrics) behind ``ReadOnly``, which lets
through exactly the reads and refuses everything else with 403.

Reads of a feature service take ``FeatureServiceReads``: Feast's answer, the same bytes and the
same Prometheus metrics, read on the event loop by ``features.online.ServiceRead`` (Feast's keys,
hash fields, parse and JSON form, without its intermediate protobuf response), without FastAPI's
dependency machinery, the two thread-pool hops and the feature service rebuilt from protobuf on
every request. Measured on 2 cores: 1.5 ms of in-process work per request through Feast's route,
0.35 ms through this one (README, Benchmarks). Anything else (a feature list, an invalid body, an
unknown service, ids that are not int64) is answered by Feast's own route.

``FLAGS`` are the serving flags, in one place for the local stack and the Kubernetes Deployment
(deploy/k8s/serving.yaml runs ``python -m serving feature-server``, and a test keeps them equal).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import pydantic

from core.settings import Settings
from features import online

log = logging.getLogger(__name__)

# Exactly what a reader needs; every other route of Feast's app answers 403.
READ_ROUTES = frozenset({("POST", "/get-online-features"), ("GET", "/health"), ("HEAD", "/health")})


@dataclass(frozen=True)
class Flags:
    """Measured: with `feast serve` defaults a worker is recycled every ~1000 requests and p99
    reached 1.5 s under load; with access logs off and recycling disabled p99 stays in the
    millisecond range. Two workers keep one busy core's GIL from queueing requests."""

    workers: int = 2
    keep_alive_timeout: int = 30
    registry_ttl_sec: int = 60
    max_requests: int = 0
    access_log: bool = False
    metrics: bool = True

    def argv(self) -> list[str]:
        """The same flags as command-line arguments of `python -m serving feature-server`."""
        return ["--workers", str(self.workers), "--keep-alive-timeout", str(self.keep_alive_timeout),
                "--registry-ttl-sec", str(self.registry_ttl_sec)]


FLAGS = Flags()


ONLINE_FEATURES = ("POST", "/get-online-features")


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes):
    """An ASGI ``receive`` that hands the already-read body to the next app."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return pending.pop() if pending else {"type": "http.disconnect"}

    return receive


class FeatureServiceReads:
    """``POST /get-online-features`` for a feature service, on the event loop.

    Returns the response body, or None when Feast's own route should answer (then it does, with the
    same body): only the plain, valid case is taken here, read by ``features.online.ServiceRead``."""

    def __init__(self, store, ttl_seconds: float):
        from feast import feature_server as feast_server
        from feast import metrics as feast_metrics
        from feast.errors import FeastError
        from feast.infra.feature_servers.base_config import MetricsConfig

        self.store = store
        self._feast_error = FeastError
        self._request = feast_server.GetOnlineFeaturesRequest
        self._metrics = feast_metrics
        metrics_config = getattr(getattr(store.config, "feature_server", None), "metrics", None)
        self._bins = getattr(metrics_config, "feature_count_bins", None) or MetricsConfig().feature_count_bins
        self._counts = feast_server._resolve_feature_counts
        self._bin = feast_server.bin_feature_count
        self._ttl = ttl_seconds
        self._plans: dict[tuple[str, bool], tuple[float, _Series | None, online.ServiceRead | None]] = {}

    def _plan(self, name: str, full_feature_names: bool) -> tuple["_Series | None", online.ServiceRead | None]:
        """The service's read plan and its metric series, rebuilt from the registry cache at most
        once per registry TTL. Feast rebuilds the service from its protobuf (with runtime type
        checks) on every lookup: measured, that was 70% of a request through Feast's route."""
        now = time.monotonic()
        cached = self._plans.get((name, full_feature_names))
        if cached is None or now - cached[0] >= self._ttl:
            service = self.store.get_feature_service(name, allow_cache=True)
            feature_count, view_count = self._counts(service)
            plan = online.ServiceRead.plan(self.store, service, full_feature_names)
            # Only a service read here gets its series: Feast's route records the others.
            series = _Series(self._metrics, self._bin(int(feature_count), self._bins), view_count,
                             plan.view_name) if plan else None
            cached = (now, series, plan)
            self._plans[(name, full_feature_names)] = cached
        return cached[1], cached[2]

    async def answer(self, body: bytes) -> tuple[int, bytes] | None:
        try:
            request = self._request.model_validate_json(body)
        except pydantic.ValidationError:
            return None
        if not request.feature_service or request.features or request.include_feature_view_version_metadata:
            return None
        try:
            series, plan = self._plan(request.feature_service, request.full_feature_names)
        except Exception:  # unknown service, registry unreachable: Feast's route says which
            return None
        if plan is None or not plan.accepts(request.entities):
            return None
        ids = request.entities[plan.join_key]
        started = time.monotonic()
        series.entities(len(ids))
        try:
            payload = await plan.read(ids)
        except Exception as exc:
            # Answered here, as Feast's exception handler would: a second try through Feast's
            # route would double the wait on an unreachable Redis.
            series.request(started, failed=True)
            log.exception("online read of %s failed", request.feature_service)
            if isinstance(exc, self._feast_error):
                return exc.http_status_code(), _json(exc.to_error_detail())
            return 500, _json(str(exc))
        series.read(started, present=len(ids) * (len(plan.feature_names) - 1))
        series.request(started, failed=False)
        return 200, _json(payload)


class _Series:
    """Feast's Prometheus metrics of one service's reads, as Feast's route records them
    (``feast.metrics``: ``track_request_latency``, ``track_online_features_entities``,
    ``track_online_store_read``, ``track_feature_statuses``), with each labelled series resolved
    once per plan instead of by label lookup on every request."""

    ENDPOINT = ONLINE_FEATURES[1]

    def __init__(self, metrics, feature_count: str, view_count, view_name: str):
        self._on = metrics._config
        self._latency = metrics.request_latency.labels(endpoint=self.ENDPOINT, feature_count=feature_count,
                                                       feature_view_count=view_count)
        self._outcome = {False: metrics.request_count.labels(endpoint=self.ENDPOINT, status="success"),
                         True: metrics.request_count.labels(endpoint=self.ENDPOINT, status="error")}
        self._requests = metrics.online_features_request_count
        self._entities = metrics.online_features_entity_count
        self._store_read = metrics.online_store_read_duration_seconds
        self._present = metrics.online_features_status_total.labels(feature_view=view_name, status="present")

    def entities(self, count: int) -> None:
        if self._on.online_features:
            self._requests.inc()
            self._entities.observe(count)

    def read(self, started: float, present: int) -> None:
        if self._on.online_features:
            self._store_read.observe(time.monotonic() - started)
            if present > 0:
                self._present.inc(present)

    def request(self, started: float, failed: bool) -> None:
        if self._on.request:
            self._latency.observe(time.monotonic() - started)
            self._outcome[failed].inc()


def _json(content) -> bytes:
    """As Starlette's JSONResponse renders it, so both routes answer byte for byte alike."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


async def _send_json(send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class ReadOnly:
    """ASGI middleware: reads pass, writes (and anything unknown) get a 403 that says why.

    With ``reads``, feature-service reads are answered by it and fall back to ``app``."""

    def __init__(self, app, reads: FeatureServiceReads | None = None):
        self.app = app
        self.reads = reads

    async def __call__(self, scope, receive, send):
        if self.reads is not None and scope["type"] == "http" and (scope["method"], scope["path"]) == ONLINE_FEATURES:
            body = await _body(receive)
            answer = await self.reads.answer(body)
            if answer is None:
                await self.app(scope, _replay(body), send)
                return
            await _send_json(send, *answer)
            return
        if scope["type"] == "lifespan" or (scope["type"] == "http" and (scope["method"], scope["path"]) in READ_ROUTES):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": f"{scope['method']} {scope['path']} is not served: this feature server is "
                                    "read-only; online values are written only by the pipeline's materialization",
                           "allowed": sorted(f"{m} {p}" for m, p in READ_ROUTES)}).encode()
        await _send_json(send, 403, body)


def release_registry_connections(store) -> None:
    """Close the registry's pooled database connections before gunicorn forks the workers.

    A connection opened here would otherwise be inherited by every worker and used by several
    processes at once, which SQLAlchemy and SQLite both forbid (a SQLite file can then read as
    "file is not a database"); each worker opens its own on first use."""
    for name in ("write_engine", "read_engine"):
        engine = getattr(store.registry, name, None)
        if engine is not None:
            engine.dispose()


def serve(settings: Settings, host: str, port: int, flags: Flags = FLAGS) -> None:
    """Run Feast's feature server app, read-only, with gunicorn and uvicorn workers (as `feast serve`)."""
    from feast import feature_server as feast_server
    from feast import metrics as feast_metrics
    from feast.permissions.server.utils import (AuthManagerType, ServerType, init_auth_manager, init_security_manager,
                                                str_to_auth_manager_type)

    from features.resources import Resources

    store = Resources.for_process(settings).store
    if flags.metrics:
        feast_metrics.start_metrics_server(store, port=settings.feature_server_metrics_port,
                                           metrics_config=feast_metrics.build_metrics_flags(None),
                                           start_resource_monitoring=False, start_freshness_monitoring=False)
    # As `feast serve` does: Feast's own auth (none unless feature_store.yaml configures one).
    auth_type = str_to_auth_manager_type(store.config.auth_config.type)
    init_security_manager(auth_type=auth_type, fs=store)
    init_auth_manager(auth_type=auth_type, server_type=ServerType.REST, auth_config=store.config.auth_config)

    # With Feast's auth or audit logging configured, every read takes Feast's route (its permission
    # checks, its audit middleware).
    audit = getattr(getattr(store.config, "feature_server", None), "audit_logging", None)
    fast = auth_type == AuthManagerType.NONE and not getattr(audit, "enabled", False)

    release_registry_connections(store)

    class ReadOnlyApplication(feast_server.FeastServeApplication):
        def load(self):
            return ReadOnly(self._app, FeatureServiceReads(store, flags.registry_ttl_sec) if fast else None)

    log.info("feature server (read-only) on %s:%d, %d workers, metrics on port %s", host, port, flags.workers,
             settings.feature_server_metrics_port if flags.metrics else "off")
    ReadOnlyApplication(store=store, metrics_enabled=flags.metrics, bind=f"{host}:{port}",
                        accesslog="-" if flags.access_log else None, workers=flags.workers, worker_connections=1000,
                        max_requests=flags.max_requests, max_requests_jitter=0, keepalive=flags.keep_alive_timeout,
                        registry_ttl_sec=flags.registry_ttl_sec).run()
