"""The inference API: an employee id in, the probability of leaving out, from served features.

    GET  /v1/employees/{employee_id}/attrition
    POST /v1/attrition            {"employee_ids": [17, 42]}      (1 to 1,000 ids)
    GET  /healthz  /readyz  /metrics

Features come from the Feast feature server over HTTP (``FP_FEATURE_SERVER_URL``, pooled
keep-alive connections, short timeouts), are assembled by name in the model's stored order and
checked by features.online (the same rules as every other reader), and only a complete, fresh
vector reaches the model. The HTTP client is aiohttp: on loopback it spent 0.49 ms per call where
httpx spent 1.11 ms, most of what the API adds to the feature server's latency.

Predictions about employees are personal data: every /v1 route requires
``Authorization: Bearer $FP_API_TOKEN``.

Errors are JSON ``{"error": {"reason", "message", "employees"}}``: unknown employee or leaver
404; invalid id, too many ids or malformed JSON 422; missing or stale features, feature server or
Redis unreachable 503; a feature service that no longer provides the model's features 503 and
/readyz fails. The promoted model (``models/attrition/latest.json``) and the served extraction
are picked up live, checked every ``FP_API_REFRESH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated

import aiohttp
from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from core.settings import Settings
from etl import spec
from features import online
from features.definitions import FEATURE_TTL
from features.online import ServingError
from serving import token as api_token
from training import model as model_mod

log = logging.getLogger(__name__)

MAX_IDS = 1000
STATUS_OF = {"unknown": 404, "left": 404, "invalid_request": 422, "missing": 503, "stale": 503,
             "unavailable": 503, "mismatch": 503, "no_model": 503, "unauthorized": 401}


class BatchRequest(BaseModel):
    employee_ids: list[Annotated[int, Field(gt=0)]] = Field(min_length=1, max_length=MAX_IDS,
                                                            description="HR EmployeeNumbers")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram("attrition_api_request_duration_seconds", "Request latency by route and status",
                                 ["route", "status"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.predictions = Counter("attrition_api_predictions_total", "Employees scored", registry=self.registry)
        self.errors = Counter("attrition_api_errors_total", "Refused or failed requests by reason", ["reason"],
                              registry=self.registry)
        self.model = Gauge("attrition_api_model_info", "The model being served (value 1)", ["version"],
                           registry=self.registry)
        self.feature_age = Gauge("attrition_api_served_features_age_seconds",
                                 "Age of the event time of the most recently served features", registry=self.registry)


class Predictor:
    """What the API needs, built once per process: settings, the HTTP pool, the model, the roster."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.http: aiohttp.ClientSession | None = None  # made in the server's event loop (start)
        self.roster_cache = online.RosterCache(settings)
        self.loaded: model_mod.LoadedModel | None = None
        self.names: list[str] = []
        self.problem: str | None = "starting"
        self.refusal: ServingError | None = None  # the model does not fit what is served

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            self.settings.feature_server_url, timeout=aiohttp.ClientTimeout(total=2.0, connect=0.5),
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30), raise_for_status=False)
        await self.refresh()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def refresh(self) -> None:
        """Pick up a newly promoted model and a newly served extraction (blocking I/O in a thread)."""
        try:
            version = await asyncio.to_thread(model_mod.latest_version, self.settings)
            if version is None:
                raise ServingError("no model has passed the quality gate yet: run `python -m training train`", "no_model")
            if self.loaded is None or self.loaded.version != version:
                loaded = await asyncio.to_thread(model_mod.load_latest, self.settings)
                if self.loaded is not None:
                    self.metrics.model.remove(self.loaded.version)
                self.loaded, self.names = loaded, online.names_of(loaded.feature_refs)
                self.metrics.model.labels(loaded.version).set(1)
                log.info("serving model %s (%s)", loaded.version, ", ".join(self.names))
            roster = await asyncio.to_thread(self.roster_cache.refresh)
            if roster is None:
                raise ServingError("no features partition is published yet", "unavailable")
            try:
                online.check_fingerprints(self.loaded.version, self.loaded.fingerprints, roster)
                self.refusal = None
            except ServingError as exc:
                self.refusal = exc  # unlike a passing outage, this refuses every prediction until fixed
                raise
            self.problem = None
        except ServingError as exc:
            self.problem = str(exc)
            log.warning("not ready: %s", exc)

    async def fetch(self, employee_ids: list[int]) -> online.OnlineColumns:
        body = {"feature_service": self.loaded.feature_service, "entities": {spec.ENTITY_KEY: employee_ids}}
        try:
            async with self.http.post("/get-online-features", json=body) as response:
                if response.status != 200:
                    raise ServingError(f"feature server answered {response.status}: {(await response.text())[:300]}",
                                       "unavailable")
                payload = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServingError(f"feature server at {self.settings.feature_server_url} unreachable: "
                               f"{type(exc).__name__}", "unavailable") from exc
        return online.parse_response(payload)

    async def predict(self, employee_ids: list[int]) -> list[dict]:
        if self.loaded is None or self.roster_cache.roster is None:
            raise ServingError(f"not ready: {self.problem}", "no_model" if self.loaded is None else "unavailable")
        if self.refusal is not None:
            raise self.refusal
        # The roster before the values: values read after it are at least as new as its extraction
        # (materialization commits the roster last), never older, whenever a refresh lands.
        roster = self.roster_cache.roster
        columns = await self.fetch(employee_ids)
        vectors = online.assemble(columns, self.names, roster, FEATURE_TTL)
        ordered = [vectors[i] for i in employee_ids]
        probabilities = model_mod.probabilities(self.loaded, ordered)
        row_of = {employee: row for row, employee in enumerate(columns.employee_ids)}
        results = []
        for employee, vector, probability in zip(employee_ids, ordered, probabilities):
            as_of = max(columns.event_times[name][row_of[employee]] for name in self.names)
            results.append({"employee_id": employee, "probability": float(probability),
                            "model_version": self.loaded.version, "features": dict(zip(self.names, vector)),
                            "features_as_of": as_of.isoformat()})
            self.metrics.feature_age.set((datetime.now(timezone.utc) - as_of).total_seconds())
        self.metrics.predictions.inc(len(results))
        return results

    async def readiness(self) -> dict:
        checks = {"model": self.loaded.version if self.loaded else None, "problem": self.problem}
        try:
            async with self.http.get("/health") as health:
                checks["feature_server"] = health.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            checks["feature_server"] = False
            checks["problem"] = checks["problem"] or f"feature server unreachable: {type(exc).__name__}"
        if self.loaded and checks["feature_server"]:
            # The service must still provide every feature the model takes (assembly is by name).
            try:
                served = set((await self.fetch([0])).values)
                missing = [n for n in self.names if n not in served]
                if missing:
                    checks["problem"] = (f"feature service {self.loaded.feature_service} no longer provides "
                                         f"{missing}, which model {self.loaded.version} takes")
            except ServingError as exc:
                checks["problem"] = checks["problem"] or str(exc)
        checks["ready"] = bool(self.loaded and checks["feature_server"] and not checks["problem"])
        return checks


def _error(reason: str, message: str, employees: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason, "message": message,
                                   "employees": {str(k): v for k, v in (employees or {}).items()}}},
                        status_code=STATUS_OF.get(reason, 500),
                        headers={"WWW-Authenticate": "Bearer"} if reason == "unauthorized" else None)


class Observed:
    """ASGI middleware: latency by route and status (plain ASGI; Starlette's BaseHTTPMiddleware
    cost a quarter of a request's time)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def observe(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            self.metrics.latency.labels(route.path if route else "unmatched", str(status)).observe(
                time.perf_counter() - started)


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    predictor = Predictor(settings, metrics)
    token = api_token.resolve(settings)
    bearer = HTTPBearer(auto_error=False)

    async def refresher():
        while True:
            await asyncio.sleep(settings.api_refresh_seconds)
            await predictor.refresh()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await predictor.start()
        task = asyncio.create_task(refresher())
        yield
        task.cancel()
        await predictor.stop()

    app = FastAPI(title="Attrition inference API", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0], docs_url=None, redoc_url=None)
    app.state.predictor = predictor

    class Unauthorized(Exception):
        pass

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # async: FastAPI runs a plain def dependency on a worker thread, a thread hop per request
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise Unauthorized()

    app.add_middleware(Observed, metrics=metrics)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized):
        metrics.errors.labels("unauthorized").inc()
        return _error("unauthorized", "send `Authorization: Bearer <FP_API_TOKEN>`")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics.errors.labels("invalid_request").inc()
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return _error("invalid_request", f"invalid request: {details}")

    @app.exception_handler(ServingError)
    async def refused(request: Request, exc: ServingError):
        metrics.errors.labels(exc.reason).inc()
        return _error(exc.reason, str(exc), exc.problems)

    @app.get("/v1/employees/{employee_id}/attrition", dependencies=[Depends(authorized)])
    async def one(employee_id: int = Path(gt=0, description="HR EmployeeNumber")):
        # Plain JSON types already: a JSONResponse skips FastAPI's jsonable_encoder walk.
        return JSONResponse((await predictor.predict([employee_id]))[0])

    @app.post("/v1/attrition", dependencies=[Depends(authorized)])
    async def batch(request: BatchRequest = Body()):
        ids = list(dict.fromkeys(request.employee_ids))
        return JSONResponse({"results": await predictor.predict(ids)})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        checks = await predictor.readiness()
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    app = create_app(settings)
    log.info("inference API on %s:%d, features from %s", host, port, settings.feature_server_url)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning")
