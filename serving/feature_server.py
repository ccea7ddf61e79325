"""The Feast feature server, read-only: Feast's own app, with every route that writes closed.

Stock ``feast serve`` also answers ``/push``, ``/write-to-online-store`` and ``/materialize*``
without authentication unless OIDC or Kubernetes auth is set up: anyone who can reach it can
rewrite served features. Online values are written only by the pipeline's materialization, which
talks to Redis itself, so this server needs none of those routes. It runs Feast's app (same
``/get-online-features`` contract, same Prometheus metrics) behind ``ReadOnly``, which lets
through exactly the reads and refuses everything else with 403.

``FLAGS`` are the serving flags, in one place for the local stack and the Kubernetes Deployment
(deploy/k8s/serving.yaml runs ``python -m serving feature-server``, and a test keeps them equal).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from core.settings import Settings

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


class ReadOnly:
    """ASGI middleware: reads pass, writes (and anything unknown) get a 403 that says why."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan" or (scope["type"] == "http" and (scope["method"], scope["path"]) in READ_ROUTES):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": f"{scope['method']} {scope['path']} is not served: this feature server is "
                                    "read-only; online values are written only by the pipeline's materialization",
                           "allowed": sorted(f"{m} {p}" for m, p in READ_ROUTES)}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(settings: Settings, host: str, port: int, flags: Flags = FLAGS) -> None:
    """Run Feast's feature server app, read-only, with gunicorn and uvicorn workers (as `feast serve`)."""
    from feast import feature_server as feast_server
    from feast import metrics as feast_metrics
    from feast.permissions.server.utils import (ServerType, init_auth_manager, init_security_manager,
                                                str_to_auth_manager_type)

    from features import store as fs

    store = fs.open_store(settings)
    if flags.metrics:
        feast_metrics.start_metrics_server(store, port=settings.feature_server_metrics_port,
                                           metrics_config=feast_metrics.build_metrics_flags(None),
                                           start_resource_monitoring=False, start_freshness_monitoring=False)
    # As `feast serve` does: Feast's own auth (none unless feature_store.yaml configures one).
    auth_type = str_to_auth_manager_type(store.config.auth_config.type)
    init_security_manager(auth_type=auth_type, fs=store)
    init_auth_manager(auth_type=auth_type, server_type=ServerType.REST, auth_config=store.config.auth_config)

    class ReadOnlyApplication(feast_server.FeastServeApplication):
        def load(self):
            return ReadOnly(self._app)

    log.info("feature server (read-only) on %s:%d, %d workers, metrics on port %s", host, port, flags.workers,
             settings.feature_server_metrics_port if flags.metrics else "off")
    ReadOnlyApplication(store=store, metrics_enabled=flags.metrics, bind=f"{host}:{port}",
                        accesslog="-" if flags.access_log else None, workers=flags.workers, worker_connections=1000,
                        max_requests=flags.max_requests, max_requests_jitter=0, keepalive=flags.keep_alive_timeout,
                        registry_ttl_sec=flags.registry_ttl_sec).run()
