"""A real Airflow: api-server, scheduler, dag-processor and triggerer as separate processes on a
PostgreSQL metadata DB, with the LocalExecutor. The nightly DAG is triggered through the REST API
with conf as the UI form sends it, and must succeed; its deadline is set short enough that the run
overruns it, and the Deadline Alert must arrive at a webhook listener on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from helpers import POSTGRES_ADMIN_URL, ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DEADLINE_HOURS = 0.003  # 10.8 s: the run (raw and features validation alone) takes longer


@pytest.fixture(scope="module")
def metadata_db():
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"airflow_e2e_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield sqlalchemy.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def alert_listener():
    from helpers import WebhookListener

    listener = WebhookListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def airflow(stack, metadata_db, alert_listener, tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-e2e")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        # psycopg 3 serves the async engine too (Airflow would otherwise look for asyncpg).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_db,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Only the run this test triggers: no schedule-driven run of the nightly DAG.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "FP_PIPELINE_DEADLINE_HOURS": str(DEADLINE_HOURS),
        "FP_ALERT_WEBHOOK_URL": alert_listener.url,
        "FP_S3_BUCKET": stack.s3_bucket,
        "FP_FEAST_PROJECT": stack.feast_project,
        "FP_REGISTRY_URL": stack.registry_url,
    })
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    procs = {}
    for component in COMPONENTS:
        log = open(home / f"{component}.log", "wb")
        procs[component] = subprocess.Popen([sys.executable, "-m", "airflow", component], env=env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=base, timeout=30)
    try:
        _wait(lambda: client.get("/api/v2/monitor/health").status_code == 200, 120, "the API server", home, procs)
        _wait(lambda: client.get("/api/v2/dags/hr_feature_pipeline").status_code == 200, 180,
              "the DAG to be parsed", home, procs)
        yield client, home
    finally:
        client.close()
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait(predicate, timeout: float, what: str, home: Path, procs: dict) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            break
        time.sleep(1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(home.glob("*.log")))
    pytest.fail(f"timed out waiting for {what} (exited: {dead or 'none'})\n{logs}")


def test_ui_style_trigger_succeeds_and_the_deadline_alert_arrives(airflow, exports, alert_listener, tmp_path):
    client, home = airflow
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in exports[-2:]:
        (inbox / path.name).write_bytes(path.read_bytes())
    form = {"extraction_date": None, "inbox": str(inbox), "apply_definitions": "auto",
            "row_count_tolerance_pct": 25, "run_health_checks": True}
    response = client.post("/api/v2/dags/hr_feature_pipeline/dagRuns", json={"logical_date": None, "conf": form})
    assert response.status_code in (200, 201), response.text
    run_id = response.json()["dag_run_id"]

    state = None
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        state = client.get(f"/api/v2/dags/hr_feature_pipeline/dagRuns/{run_id}").json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)
    tasks = client.get(f"/api/v2/dags/hr_feature_pipeline/dagRuns/{run_id}/taskInstances").json()
    states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(home.glob("*.log")))
    assert state == "success", f"run ended {state}: {states}\n{logs}"
    assert set(states.values()) == {"success"}

    alerts = alert_listener.wait_for(lambda a: a.get("kind") == "deadline_missed", timeout=90)
    assert alerts, f"no deadline alert reached the webhook; received {alert_listener.received}\n{logs}"
    assert alerts[0]["dag_id"] == "hr_feature_pipeline"
    assert alerts[0]["deadline"] == f"{DEADLINE_HOURS:g}h after queued"
    assert alerts[0]["run_id"] == run_id
    assert alerts[0]["log_url"].startswith(f"{client.base_url}/dags/hr_feature_pipeline/runs/")

    # Task logs tell the story at INFO: a worker step's own output is in its log.
    log = client.get(f"/api/v2/dags/hr_feature_pipeline/dagRuns/{run_id}/taskInstances/materialize_incremental/logs/1",
                     headers={"Accept": "application/json"})
    assert log.status_code == 200, log.text[:500]
    assert "features materialize-incremental" in log.text and "serving the extraction of" in log.text, log.text[-3000:]


def test_make_airflow_starts_from_a_plain_shell_on_any_port(stack, tmp_path):
    """`make airflow` runs `python -m orchestration.local_airflow`; from a shell where the virtual
    environment is not active (no `airflow` on PATH) and on a port that is not 8080."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FP_LOCAL_DIR": str(tmp_path / "local"),
           "AIRFLOW__API__PORT": str(port), "FP_S3_BUCKET": stack.s3_bucket,
           "AWS_ACCESS_KEY_ID": stack.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": stack.aws_secret_access_key}
    log = open(tmp_path / "standalone.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.local_airflow"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).json()
                if health.get("scheduler", {}).get("status") == "healthy":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        output = (tmp_path / "standalone.log").read_text(errors="replace")
        assert "No such file or directory: 'airflow'" not in output, output[-2000:]
        assert health and health["metadatabase"]["status"] == "healthy", output[-2000:]
        assert health["scheduler"]["status"] == "healthy", health
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
