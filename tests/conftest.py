"""Shared fixtures. Tests talk to real services: the local stack's S3 API server (SeaweedFS),
the machine's Redis (or valkey-server started by the stack), SQLite and PostgreSQL registries.

Each test session works in its own bucket and Feast project, so it never touches demo data, and
removes its Redis keys at the end.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import redis

import devstack
from core import settings as settings_mod
from core.settings import Settings
from etl import generate as gen

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("FP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def run_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run one of our CLIs as an operator would, with this process's environment."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
