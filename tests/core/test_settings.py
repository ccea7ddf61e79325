"""core.settings: configuration from the environment, secrets never printed."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest

from helpers import ROOT
from core import settings as settings_mod

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY1234",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "FP_REDIS_URL": "redis://tokenuser:s3cr%40tpw@redis.internal:6380/2",
    "FP_REGISTRY_URL": "postgresql+psycopg://feast:regpw@db.internal:5432/feast?password=querypw&sslmode=verify-full",
    "FP_API_TOKEN": "api-token-value-123",
    "FP_SMTP_PASSWORD": "smtp-pw-456",
    "FP_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/webhook-secret-789",
}


def test_printed_settings_contain_no_secret_substring():
    proc = subprocess.run([sys.executable, "-m", "core.settings"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **SECRETS, "FP_LOCAL_DIR": "/tmp/fp-none"})
    assert proc.returncode == 0, proc.stderr
    for value in ["AKIA", "wJalr", "tokenuser", "s3cr", "regpw", "querypw", "api-token", "smtp-pw", "webhook-secret"]:
        assert value not in proc.stdout, f"{value!r} printed"
    assert "redis://***@redis.internal:6380/2" in proc.stdout
    assert "db.internal:5432/feast?***" in proc.stdout


def test_percent_encoded_redis_credentials_reach_feast_decoded(monkeypatch):
    monkeypatch.setenv("FP_REDIS_URL", "redis://app%2Duser:p%40ss%3Aword@redis.internal:6380/2")
    assert settings_mod.load().redis_connection_string == \
        "redis.internal:6380,db=2,password=p@ss:word,username=app-user"
    monkeypatch.setenv("FP_REDIS_URL", "rediss://:a%2Cb@redis.internal:6380/0")
    with pytest.raises(SystemExit, match="a ',' in the Redis username or password"):
        settings_mod.load().redis_connection_string


def test_a_sentinel_master_makes_every_client_ask_the_sentinels(monkeypatch):
    monkeypatch.setenv("FP_REDIS_URL", "rediss://:secret@redis.feature-platform.svc:26379/0?ssl_ca_certs=/tls/ca.crt")
    plain = settings_mod.load()
    assert (plain.feast_env()["FP_FEAST_REDIS_TYPE"], plain.worker_env()["FP_REDIS_SENTINEL_MASTER"]) == ("redis", "")
    monkeypatch.setenv("FP_REDIS_SENTINEL_MASTER", " feast ")
    sentinel = settings_mod.load()
    assert sentinel.redis_sentinel_master == "feast"
    assert {k: sentinel.feast_env()[k] for k in ("FP_FEAST_REDIS_TYPE", "FP_FEAST_SENTINEL_MASTER")} == {
        "FP_FEAST_REDIS_TYPE": "redis_sentinel", "FP_FEAST_SENTINEL_MASTER": "feast"}
    assert sentinel.worker_env()["FP_REDIS_SENTINEL_MASTER"] == "feast"  # worker pods follow the same master
    assert sentinel.redis_location == "master feast of Sentinel redis.feature-platform.svc:26379/0"
    assert "secret" not in sentinel.redis_location


@pytest.mark.parametrize("env, value, message", [
    ("FP_API_PORT", "http", "FP_API_PORT must be a TCP port number"),
    ("FP_API_PORT", "70000", "FP_API_PORT must be a TCP port number"),
    ("FP_API_REFRESH_SECONDS", "0", "FP_API_REFRESH_SECONDS must be a positive number"),
    ("FP_MATERIALIZE_BATCH_SIZE", "-1", "FP_MATERIALIZE_BATCH_SIZE must be a positive integer"),
    ("FP_COMPUTE_ENGINE", "spark", "FP_COMPUTE_ENGINE must be 'local' or 'ray', got 'spark'"),
    ("FP_RAY_OBJECT_STORE_MB", "64", "FP_RAY_OBJECT_STORE_MB must be a whole number of MB, at least 80"),
    ("FP_REDIS_SENTINEL_MASTER", "feast prod", "FP_REDIS_SENTINEL_MASTER must be a Sentinel master name"),
])
def test_invalid_values_say_what_to_fix(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit, match=message):
        settings_mod.load()


def _environment_reads(tree) -> list[tuple[int, str]]:
    """(line, variable) of each read of an FP_/AWS_ variable from os.environ or os.getenv."""
    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"

    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute) and (
                (node.func.attr in {"get", "pop", "setdefault"} and is_environ(node.func.value))
                or (node.func.attr == "getenv" and getattr(node.func.value, "id", "") == "os")):
            key = node.args[0]
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith(("FP_", "AWS_")):
            found.append((node.lineno, key.value))
    return found


def test_only_the_settings_module_reads_the_platforms_configuration():
    """One place reads FP_* and AWS_* variables (with their defaults and checks); every other module
    gets them from core.settings."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    reads = {}
    for package in [*packages, "dags"]:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "core" / "settings.py":
                continue
            found = _environment_reads(ast.parse(path.read_text(), str(path)))
            if found:
                reads[str(path.relative_to(ROOT))] = found
    assert reads == {}, f"configuration read outside core/settings.py: {reads}"


def test_alert_and_mail_settings_are_checked_and_masked(monkeypatch):
    monkeypatch.setenv("FP_ALERT_WEBHOOK_URL", "https://hooks.example.com/services/T0/B0/webhook-secret-789")
    monkeypatch.setenv("FP_ALERT_EMAIL_TO", " oncall@example.com,, data@example.com ")
    loaded = settings_mod.load()
    assert loaded.alert_email_to == ("oncall@example.com", "data@example.com")
    assert settings_mod._mask("alert_webhook_url", loaded.alert_webhook_url) == "***"
    for env, value, message in [("FP_ALERT_FORMAT", "teams", "FP_ALERT_FORMAT must be 'generic' or 'slack'"),
                                ("FP_SMTP_PORT", "smtp", "FP_SMTP_PORT must be a TCP port number"),
                                ("FP_SMTP_STARTTLS", "yes", "FP_SMTP_STARTTLS must be 'true' or 'false'")]:
        with monkeypatch.context() as m:
            m.setenv(env, value)
            with pytest.raises(SystemExit, match=message):
                settings_mod.load()
