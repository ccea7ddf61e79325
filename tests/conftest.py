"""Shared fixtures. Tests talk to real services: the local stack's S3 API server (SeaweedFS),
the machine's Redis (or valkey-server started by the stack), SQLite and PostgreSQL registries.

Each test session works in its own bucket and Feast project, so it never touches demo data, and
removes its Redis keys at the end.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import redis

import devstack
from core import settings as settings_mod
from core.settings import Settings
from etl import generate as gen

from helpers import POSTGRES_ADMIN_URL, WebhookListener, deployed_registry_database


def pytest_configure(config):
    """Give the test session its own Airflow home before anything imports Airflow (it reads its
    configuration once, at import)."""
    import tempfile

    from orchestration.local_airflow import airflow_env

    home = Path(tempfile.mkdtemp(prefix="fp-test-airflow-"))
    env = airflow_env(settings_mod.load())
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                # The tests' inboxes are pytest's temporary folders.
                "FP_INBOX_ALLOWED": tempfile.gettempdir()})
    os.environ.update(env)


@pytest.fixture(scope="session")
def session_token() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def stack(session_token, tmp_path_factory) -> Settings:
    """The local stack, up, with this session's bucket, Feast project and SQLite registry."""
    registry = tmp_path_factory.mktemp("registry") / "registry.db"
    env = {
        "FP_S3_BUCKET": f"fp-test-{session_token}",
        "FP_FEAST_PROJECT": f"test_{session_token}",
        "FP_REGISTRY_URL": f"sqlite:///{registry}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings, _ = devstack.up(settings_mod.load())
        # Children (CLI subprocesses) find the generated local credentials through the same file.
        yield settings
        _drop_redis_keys(settings)


def _drop_redis_keys(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    suffix = settings.feast_project.encode()
    doomed = [k for k in client.scan_iter(match=b"*" + suffix, count=10_000) if k.endswith(suffix)]
    for start in range(0, len(doomed), 1000):
        client.delete(*doomed[start:start + 1000])
    client.close()


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> list[Path]:
    """Six monthly exports for 300 employees, ending 2026-10-31."""
    return gen.generate(tmp_path_factory.mktemp("exports"), employees=300, months=6, end=date(2026, 10, 31), seed=11)


@pytest.fixture
def webhook():
    listener = WebhookListener()
    yield listener
    listener.close()


@pytest.fixture
def postgres_registry():
    """Turns settings into ones with a fresh PostgreSQL registry database (dropped afterwards)."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created = []

    def make(settings: Settings) -> Settings:
        database = f"feast_registry_test_{secrets.token_hex(3)}"
        try:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
        except sqlalchemy.exc.OperationalError as exc:
            pytest.fail(f"PostgreSQL is required at {POSTGRES_ADMIN_URL} (set FP_TEST_POSTGRES_URL): {exc}")
        created.append(database)
        url = sqlalchemy.engine.make_url(POSTGRES_ADMIN_URL).set(database=database)
        return replace(settings, registry_url=url.render_as_string(hide_password=False))

    yield make
    with admin.connect() as conn:
        for database in created:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def registry_database():
    """The registry database as deploy/k8s/registry-db.yaml runs it (helpers.deployed_registry_database),
    with a certificate for localhost; one for the session."""
    import pwd
    import shutil

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("the registry database runs as user postgres, and this machine has no such account")
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("initdb", "pg_ctl", "psql", "runuser")):
        pytest.skip("the registry database is started as user postgres with initdb, pg_ctl, psql and runuser: "
                    "this needs root and the PostgreSQL server binaries (the CI machine has both)")
    with deployed_registry_database() as database:
        yield database
