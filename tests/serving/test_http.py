"""Online serving over HTTP against live processes: the read-only feature server and the inference API,
each started as `python -m serving ...` on a free port over the real Redis, S3 and registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from helpers import ROOT, Loop, cli_env, corrected_export, dedicated_valkey, free_port, ingest_exports, isolated, run_cli, served_history
from etl import spec
from etl import layout
from features import online
from features import store as fs
from features.resources import Resources
from training import model

pytestmark = pytest.mark.integration

TOKEN = "test-token-" + os.urandom(6).hex()


class Server:
    """A `python -m serving ...` process on a free port (this environment plus ``env``), stopped at the end."""

    def __init__(self, args: list[str], env: dict, health: str, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving", *args, "--port", str(self.port)], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{args[0]} did not start: {_start_failure(log_path, env)}")
            time.sleep(0.3)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(20)
        self.log.close()


def _start_failure(log_path, env: dict) -> str:
    """The head and tail of a server's log, and the first bytes of a SQLite registry it could not read."""
    text = open(log_path).read()
    shown = text if len(text) <= 6000 else text[:2500] + "\n[...]\n" + text[-3500:]
    registry = env.get("FP_REGISTRY_URL", "")
    if registry.startswith("sqlite:///"):
        path = registry.removeprefix("sqlite:///")
        header = open(path, "rb").read(32) if os.path.exists(path) else b"(no file)"
        shown += f"\nregistry {path}: first bytes {header!r}"
    return shown


@pytest.fixture(scope="module")
def served(stack, exports, tmp_path_factory):
    """Six months for 300 employees, materialized; a model trained and promoted; both servers up."""
    folder = tmp_path_factory.mktemp("http")
    settings = isolated(stack, folder, "http")
    resources, _ = served_history(settings, exports)
    metrics_port = free_port()
    feature_server = Server(["feature-server", "--registry-ttl-sec", "1", "--workers", "1"],
                            cli_env(settings, FP_FEATURE_SERVER_METRICS_PORT=str(metrics_port)), "/health",
                            folder / "feature-server.log")
    feature_server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    api = Server(["api"], cli_env(settings, FP_FEATURE_SERVER_URL=feature_server.url, FP_API_TOKEN=TOKEN,
                               FP_API_REFRESH_SECONDS="1"), "/healthz", folder / "api.log")
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    yield settings, resources, feature_server, api, client
    client.close()
    api.stop()
    feature_server.stop()


def _rows(settings):
    return {r["employee_id"]: r for r in layout.read_partition(settings, max(layout.list_partitions(settings))).to_pylist()}


def test_api_prediction_equals_the_cli_and_is_assembled_in_the_models_order(served):
    settings, resources, _, _, client = served
    rows = _rows(settings)
    employee = next(i for i, r in rows.items() if r["is_active"])
    body = client.get(f"/v1/employees/{employee}/attrition").json()
    loaded = model.load_latest(settings)
    names = online.names_of(loaded.feature_refs)
    assert list(body["features"]) == names, "keys in the model's stored order"
    assert body["features"] == {n: rows[employee][n] for n in names}
    assert body["model_version"] == loaded.version
    assert body["features_as_of"] == spec.extraction_timestamp(max(layout.list_partitions(settings))).isoformat()
    assert body["probability"] == model.predict(resources, [employee])[employee]
    cli = run_cli("training", "predict", "--employee-id", str(employee), env=cli_env(settings))
    assert cli.returncode == 0, cli.stderr
    assert f'"{employee}": {round(body["probability"], 4)}' in cli.stdout

    active = [i for i, r in rows.items() if r["is_active"]][:20]
    batch = client.post("/v1/attrition", json={"employee_ids": active}).json()["results"]
    assert [r["employee_id"] for r in batch] == active
    assert {r["employee_id"]: r["probability"] for r in batch} == model.predict(resources, active)


def test_the_feature_server_answers_the_reference_smoke_request(served):
    settings, _, feature_server, _, _ = served
    rows = _rows(settings)
    ids = [i for i, r in rows.items() if r["is_active"]][:3]
    body = httpx.post(f"{feature_server.url}/get-online-features",
                      json={"feature_service": "attrition_model_v1", "entities": {"employee_id": ids}}).json()
    columns = online.parse_response(body)
    assert columns.employee_ids == ids
    assert {n: columns.values[n] for n in spec.FEATURE_NAMES} == {n: [rows[i][n] for i in ids] for n in spec.FEATURE_NAMES}


def test_feature_service_reads_answer_byte_for_byte_as_feasts_own_route(served):
    """The direct read of feature services (features.online.ServiceRead) and Feast's route, in process
    over the same Redis: identical bodies for present, unknown, repeated, departed and incomplete
    employees; every other request (errors, other shapes) is Feast's own answer."""
    import asyncio

    from feast import feature_server as feast_server

    from serving.feature_server import FeatureServiceReads, ReadOnly

    settings, _, _, _, _ = served
    resources = Resources(settings)
    rows = _rows(settings)
    ids = [i for i, r in rows.items() if r["is_active"]][:3]
    leaver = next(i for i, r in rows.items() if not r["is_active"])
    client = redis.Redis.from_url(settings.redis_url)
    fields = online.feature_fields()
    # An employee whose hash lacks a feature and one whose hash holds nothing but an event time.
    incomplete, only_time = 10**8, 10**8 + 1
    stored = client.hmget(online.redis_key(settings.feast_project, ids[0]), fields)
    client.hset(online.redis_key(settings.feast_project, incomplete), mapping=dict(zip(fields[1:], stored[1:])))
    moment = Timestamp()
    moment.ParseFromString(stored[-1])
    moment.nanos = 123_456_789  # a time with a fraction of a second, as Feast's response shows it
    client.hset(online.redis_key(settings.feast_project, only_time), fields[-1], moment.SerializeToString())
    reads = FeatureServiceReads(resources.store, ttl_seconds=60)
    feast_app = feast_server.get_app(resources.store)
    ours = ReadOnly(feast_server.get_app(resources.store), reads)
    service = "attrition_model_v1"
    requests = {
        "present": ({"feature_service": service, "entities": {"employee_id": ids}}, True),
        "unknown": ({"feature_service": service, "entities": {"employee_id": [ids[0], 10**9]}}, True),
        "repeated": ({"feature_service": service, "entities": {"employee_id": [ids[1], ids[0], ids[1]]}}, True),
        "departed": ({"feature_service": service, "entities": {"employee_id": [leaver]}}, True),
        "incomplete": ({"feature_service": service, "entities": {"employee_id": [incomplete, only_time]}}, True),
        "full names": ({"feature_service": service, "entities": {"employee_id": ids}, "full_feature_names": True},
                       True),
        "version metadata": ({"feature_service": service, "entities": {"employee_id": ids},
                              "include_feature_view_version_metadata": True}, False),
        "id as text": ({"feature_service": service, "entities": {"employee_id": [str(ids[0])]}}, False),
        "id as float": ({"feature_service": service, "entities": {"employee_id": [float(ids[0])]}}, False),
        "id beyond int64": ({"feature_service": service, "entities": {"employee_id": [2**63]}}, False),
        "no ids": ({"feature_service": service, "entities": {"employee_id": []}}, False),
        "extra entity key": ({"feature_service": service, "entities": {"employee_id": ids, "team": [1, 2, 3]}},
                             False),
        "misspelt key": ({"feature_service": service, "entities": {"employe_id": ids}}, False),
        "feature list": ({"features": ["employee_features:tenure"], "entities": {"employee_id": ids}}, False),
        "unknown service": ({"feature_service": "no_such_service", "entities": {"employee_id": ids}}, False),
        "not json": ("{not json", False),
    }

    async def compare():
        taken = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(feast_app, raise_app_exceptions=False),
                                     base_url="http://feast") as feast_client, \
                httpx.AsyncClient(transport=httpx.ASGITransport(ours, raise_app_exceptions=False),
                                  base_url="http://ours") as our_client:
            for name, (request, _) in requests.items():
                body = request if isinstance(request, str) else json.dumps(request)
                taken[name] = await reads.answer(body.encode()) is not None
                headers = {"content-type": "application/json"}
                theirs = await feast_client.post("/get-online-features", content=body, headers=headers)
                mine = await our_client.post("/get-online-features", content=body, headers=headers)
                assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content), name
        return taken

    try:
        # The plain feature-service reads are answered by the direct read; the rest fall through to Feast's.
        assert asyncio.run(compare()) == {name: direct for name, (_, direct) in requests.items()}
    finally:
        client.delete(online.redis_key(settings.feast_project, incomplete),
                      online.redis_key(settings.feast_project, only_time))


@pytest.mark.parametrize("path", ["/write-to-online-store", "/push", "/materialize", "/materialize-incremental",
                                  "/docs", "/chat"])
def test_every_write_to_the_feature_server_is_refused(served, path):
    settings, _, feature_server, _, client = served
    employee = next(i for i, r in _rows(settings).items() if r["is_active"])
    before = client.get(f"/v1/employees/{employee}/attrition").json()["features"]
    write = {"feature_view_name": "employee_features", "df": {"employee_id": [employee], "tenure": [99],
             "event_timestamp": [datetime.now(timezone.utc).isoformat()]}}
    response = httpx.post(f"{feature_server.url}{path}", json=write)
    assert response.status_code == 403 and "read-only" in response.json()["error"]
    assert client.get(f"/v1/employees/{employee}/attrition").json()["features"] == before


def _error(response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["reason"] == reason, body
    return body


def test_each_error_class_has_its_status(served):
    settings, resources, _, _, client = served
    rows = _rows(settings)
    active = sorted(i for i, r in rows.items() if r["is_active"])
    leaver = next(i for i, r in rows.items() if not r["is_active"])
    assert "unknown employee" in _error(client.get("/v1/employees/987654/attrition"), 404, "unknown")["message"]
    _error(client.get(f"/v1/employees/{leaver}/attrition"), 404, "left")
    _error(client.get("/v1/employees/abc/attrition"), 422, "invalid_request")
    _error(client.get("/v1/employees/-3/attrition"), 422, "invalid_request")
    _error(client.post("/v1/attrition", json={"employee_ids": list(range(1, 1002))}), 422, "invalid_request")
    _error(client.post("/v1/attrition", json={"employee_ids": []}), 422, "invalid_request")
    _error(client.post("/v1/attrition", content=b"{not json", headers={"Content-Type": "application/json"}),
           422, "invalid_request")
    assert httpx.get(f"{client.base_url}/v1/employees/{active[0]}/attrition").status_code == 401
    assert client.get(f"/v1/employees/{active[0]}/attrition", headers={"Authorization": "Bearer wrong"}).status_code == 401

    r = redis.Redis.from_url(settings.redis_url)
    missing, stale = active[0], active[1]
    key = online.redis_key(settings.feast_project, missing)
    saved = r.hgetall(key)
    try:
        r.hdel(key, online.feature_fields()[2])
        body = _error(client.get(f"/v1/employees/{missing}/attrition"), 503, "missing")
        assert "overtime missing online" in body["employees"][str(missing)]
        # One bad employee refuses the whole batch: never a probability from an incomplete vector.
        _error(client.post("/v1/attrition", json={"employee_ids": [active[2], missing]}), 503, "missing")
    finally:
        r.hset(key, mapping=saved)
    stale_key = online.redis_key(settings.feast_project, stale)
    saved = r.hgetall(stale_key)
    try:
        earlier = Timestamp()
        earlier.FromDatetime(datetime.now(timezone.utc) - timedelta(days=40))
        r.hset(stale_key, online.timestamp_field(), earlier.SerializeToString())
        assert "older than the served extraction" in _error(client.get(f"/v1/employees/{stale}/attrition"),
                                                            503, "stale")["employees"][str(stale)]
    finally:
        r.hset(stale_key, mapping=saved)
    assert client.get(f"/v1/employees/{stale}/attrition").status_code == 200


def test_an_unreachable_feature_server_is_503_and_not_ready(served, tmp_path):
    settings, _, _, _, _ = served
    api = Server(["api"], cli_env(settings, FP_FEATURE_SERVER_URL=f"http://127.0.0.1:{free_port()}", FP_API_TOKEN=TOKEN),
                 "/healthz", tmp_path / "api.log")
    try:
        employee = next(i for i, r in _rows(settings).items() if r["is_active"])
        response = httpx.get(f"{api.url}/v1/employees/{employee}/attrition", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "unreachable" in _error(response, 503, "unavailable")["message"]
        ready = httpx.get(f"{api.url}/readyz")
        assert ready.status_code == 503 and ready.json()["feature_server"] is False
    finally:
        api.stop()


def test_redis_frozen_or_down_behind_the_feature_server_is_503_and_not_ready(served, tmp_path):
    """The feature server reads a Redis of its own. Frozen (SIGSTOP: connections accepted, never
    answered), then stopped: the API refuses with 503 instead of hanging or predicting from
    nothing, /readyz says so, and service resumes when Redis does. The client timeout of 30 s
    only detects a hang; the refusal comes from the read deadline (0.5 s, one retry)."""
    settings, _, _, _, _ = served
    employee = next(i for i, r in _rows(settings).items() if r["is_active"])
    with dedicated_valkey(tmp_path) as (port, own):
        key = online.redis_key(settings.feast_project, employee)
        own.hset(key, mapping=redis.Redis.from_url(settings.redis_url).hgetall(key))
        pid = own.info("server")["process_id"]
        env = cli_env(settings, FP_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        feature_server = Server(["feature-server", "--workers", "1"], env, "/health", tmp_path / "fs.log")
        api = Server(["api"], cli_env(settings, FP_FEATURE_SERVER_URL=feature_server.url, FP_API_TOKEN=TOKEN),
                     "/healthz", tmp_path / "api.log")
        url, headers = f"{api.url}/v1/employees/{employee}/attrition", {"Authorization": f"Bearer {TOKEN}"}
        try:
            assert httpx.get(url, headers=headers).status_code == 200
            os.kill(pid, signal.SIGSTOP)
            try:
                response = httpx.get(url, headers=headers, timeout=30)
                assert "feature server answered 500" in _error(response, 503, "unavailable")["message"]
                assert httpx.get(f"{api.url}/readyz", timeout=30).status_code == 503
            finally:
                os.kill(pid, signal.SIGCONT)
            assert httpx.get(url, headers=headers, timeout=30).status_code == 200, "serves again once Redis answers"
            own.shutdown(nosave=True)
            response = httpx.get(url, headers=headers, timeout=30)
            assert "feature server answered 500" in _error(response, 503, "unavailable")["message"]
            ready = httpx.get(f"{api.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["ready"] is False
        finally:
            api.stop()
            feature_server.stop()


def test_a_service_that_no_longer_provides_the_models_features_is_not_ready(served):
    settings, resources, _, api, client = served
    assert httpx.get(f"{api.url}/readyz").json()["ready"] is True
    from features.definitions import build

    _, _, view, service = build(settings)
    shrunk = type(service)(name=service.name, features=[view[list(spec.FEATURE_NAMES[:-1])]])
    resources.store.apply([shrunk])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(f"{api.url}/readyz").status_code == 200:
            time.sleep(0.5)
        ready = httpx.get(f"{api.url}/readyz")
        assert ready.status_code == 503 and "no longer provides ['overall_satisfaction']" in ready.json()["problem"]
        employee = next(i for i, r in _rows(settings).items() if r["is_active"])
        _error(client.get(f"/v1/employees/{employee}/attrition"), 503, "mismatch")
    finally:
        resources.store.apply([service])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and httpx.get(f"{api.url}/readyz").status_code != 200:
        time.sleep(0.5)
    assert httpx.get(f"{api.url}/readyz").status_code == 200


def _wait_ready(api, ready: bool) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (httpx.get(f"{api.url}/readyz").status_code == 200) != ready:
        time.sleep(0.5)
    return httpx.get(f"{api.url}/readyz")


def test_a_model_trained_on_other_feature_code_than_the_served_is_refused(served):
    settings, _, _, api, client = served
    roster = online.served_roster(settings)
    employee = roster.active_ids()[0]
    assert client.get(f"/v1/employees/{employee}/attrition").status_code == 200
    # Materialization commits values computed by another satisfaction formula than the model's.
    other = {**roster.fingerprints, "overall_satisfaction": "0a0a0a0a0a0a0a0a"}
    online.commit_served(settings, replace(roster, fingerprints=other), 0)
    try:
        ready = _wait_ready(api, False)
        assert ready.status_code == 503 and "trained on features computed by other code" in ready.json()["problem"]
        body = _error(client.get(f"/v1/employees/{employee}/attrition"), 503, "mismatch")
        assert "employee_features:overall_satisfaction (model " in body["message"]
    finally:
        online.commit_served(settings, roster, 0)
    assert _wait_ready(api, True).status_code == 200
    assert client.get(f"/v1/employees/{employee}/attrition").status_code == 200


def test_metrics_parse_as_prometheus_text(served):
    _, _, _, api, client = served
    client.get("/v1/employees/987654/attrition")
    text = httpx.get(f"{api.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    latency = families["attrition_api_request_duration_seconds"]
    labels = {(s.labels.get("route"), s.labels.get("status")) for s in latency.samples if s.name.endswith("_count")}
    assert ("/v1/employees/{employee_id}/attrition", "404") in labels
    assert any(s.labels.get("reason") == "unknown" and s.value >= 1 for s in families["attrition_api_errors"].samples)
    assert any(s.value == 1 for s in families["attrition_api_model_info"].samples)
    assert "attrition_api_served_features_age_seconds" in families


def _feature_server_metrics(url: str) -> dict[tuple, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(httpx.get(url, timeout=5).text) for sample in family.samples}


def test_the_feature_servers_metrics_count_its_reads_as_feasts_route_does(served):
    """Feast's own metrics, fed by the direct read: requests, entities, feature statuses, latency."""
    settings, _, feature_server, _, _ = served
    ids = [i for i, r in _rows(settings).items() if r["is_active"]][:4]
    present = ("feast_online_features_status_total", (("feature_view", "employee_features"), ("status", "present")))
    requests = ("feast_online_features_request_total", ())
    entities = ("feast_online_features_entity_count_sum", ())
    latency = ("feast_feature_server_request_latency_seconds_count",
               (("endpoint", "/get-online-features"), ("feature_count", "1-10"), ("feature_view_count", "1")))
    succeeded = ("feast_feature_server_request_total", (("endpoint", "/get-online-features"), ("status", "success")))
    before = _feature_server_metrics(feature_server.metrics_url)
    for _ in range(3):
        response = httpx.post(f"{feature_server.url}/get-online-features",
                              json={"feature_service": "attrition_model_v1", "entities": {"employee_id": ids}})
        assert response.status_code == 200
    after = _feature_server_metrics(feature_server.metrics_url)
    gained = {key: after.get(key, 0) - before.get(key, 0)
              for key in (present, requests, entities, latency, succeeded)}
    assert gained == {present: 3 * len(ids) * len(spec.FEATURE_NAMES), requests: 3, entities: 3 * len(ids),
                      latency: 3, succeeded: 3}


def test_feature_server_reads_never_fail_while_redis_is_rewritten(served, exports, tmp_path):
    """The reader loop of the serving-never-dark guarantee, through the feature server over HTTP,
    during a nightly run, a correction of the latest date, a backfill and a run that fails on S3."""
    settings, _, _, _, _ = served
    local = replace(isolated(settings, tmp_path, "httpn"), materialize_batch_size=10)
    ingest_exports(local, exports[:-1])
    resources = Resources(local)
    fs.apply(resources)
    first = spec.extraction_timestamp(layout.list_partitions(local)[0])
    night = datetime(2026, 11, 1, 2, tzinfo=timezone.utc)
    fs.materialize(resources, night - timedelta(days=1), start=first)
    ingest_exports(local, exports[-1:])
    previous, latest = layout.list_partitions(local)[-2:]
    both = sorted(set(online.read_roster(local, previous).active_ids()) & set(online.read_roster(local, latest).active_ids()))
    server = Server(["feature-server", "--registry-ttl-sec", "1", "--workers", "1"], cli_env(local), "/health",
                    tmp_path / "fs.log")
    roster = online.RosterCache(local)
    http = httpx.Client(base_url=server.url)

    def read():
        # As the API does: the served roster first, then the values, which are then at least as new
        # as the roster's extraction (materialization commits the roster after writing every value).
        current = roster.refresh()
        body = http.post("/get-online-features", json={"feature_service": "attrition_model_v1",
                                                       "entities": {"employee_id": both}})
        body.raise_for_status()
        online.assemble(online.parse_response(body.json()), list(spec.FEATURE_NAMES), current,
                        timedelta(days=45), night)

    def correction():
        ingest_exports(local, [corrected_export(exports[-1], tmp_path, "WorkLifeBalance", both[:40])])
        fs.materialize(resources, night, refresh=latest)

    def failing():
        broken_settings = replace(local, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
        broken = Resources(broken_settings)
        try:
            with pytest.raises(Exception):
                fs.materialize(broken, night + timedelta(hours=1), refresh=latest)
        finally:
            Resources(local).store  # the process-wide S3 settings back

    runs = {"nightly": lambda: fs.materialize(resources, night, refresh=latest), "correction": correction,
            "backfill": lambda: fs.materialize(resources, first + timedelta(days=1), start=first),
            "failing on S3": failing}
    try:
        read()
        for name, run in runs.items():
            with Loop(read) as reader:
                run()
            assert reader.calls >= 1 and reader.failures == [], (name, reader.calls, reader.failures[:3])
        assert roster.refresh().extraction == latest
    finally:
        http.close()
        server.stop()


def test_make_serve_starts_both_idempotently_and_down_stops_them(served, tmp_path, monkeypatch):
    """`make serve` is `python -m devstack serve`: health-checked, idempotent, stopped by `make down`."""
    import devstack
    from serving import token

    settings = served[0]
    for key, value in cli_env(settings).items():
        monkeypatch.setenv(key, value)
    local = replace(settings, local_dir=tmp_path / "local", feature_server_url=f"http://127.0.0.1:{free_port()}",
                    api_port=free_port(), api_token=None)
    monkeypatch.setenv("FP_FEATURE_SERVER_URL", local.feature_server_url)
    monkeypatch.setenv("FP_LOCAL_DIR", str(local.local_dir))
    try:
        first = devstack.up_serving(local)
        pids = {name: devstack._running_pid(local, name) for name in ("feature-server", "api")}
        assert all(s.managed for s in first) and all(pids.values())
        again = devstack.up_serving(local)
        assert {name: devstack._running_pid(local, name) for name in pids} == pids, "a second serve starts nothing"
        assert [s.healthy for s in again] == [True, True]
        secret = token.resolve(local)
        assert (token.local_token_file(local).stat().st_mode & 0o777) == 0o600
        employee = next(i for i, r in _rows(settings).items() if r["is_active"])
        url = f"http://127.0.0.1:{local.api_port}/v1/employees/{employee}/attrition"
        assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 200
    finally:
        stopped = devstack.down(local)
    assert [s.split(" ")[0] for s in stopped] == ["api", "feature-server"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{local.feature_server_url}/health", timeout=2)


def test_the_feature_server_forks_its_workers_without_a_registry_connection(stack, tmp_path):
    """gunicorn forks the workers from the process that opened the store: a pooled SQLite
    connection inherited by every worker is shared between processes, so none may be left."""
    from serving.feature_server import release_registry_connections

    settings = isolated(stack, tmp_path, "fork")
    resources = Resources(settings)
    fs.apply(resources)
    engine = resources.store.registry.write_engine
    resources.store.list_feature_views(allow_cache=False)
    assert engine.pool.checkedin() >= 1, "the registry pools a connection after a read"
    release_registry_connections(resources.store)
    assert engine.pool.checkedin() == 0
    assert [v.name for v in resources.store.list_feature_views(allow_cache=False)] == [fs.FEATURE_VIEW], "reads reconnect"
