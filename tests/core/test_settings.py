"""core.settings: configuration from the environment, secrets never printed."""

from __future__ import annotations

import subprocess
import sys

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
}


def test_printed_settings_contain_no_secret_substring():
    proc = subprocess.run([sys.executable, "-m", "core.settings"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **SECRETS, "FP_LOCAL_DIR": "/tmp/fp-none"})
    assert proc.returncode == 0, proc.stderr
    for value in ["AKIA", "wJalr", "tokenuser", "s3cr", "regpw", "querypw", "api-token", "smtp-pw"]:
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


@pytest.mark.parametrize("env, value, message", [
    ("FP_API_PORT", "http", "FP_API_PORT must be a TCP port number"),
    ("FP_API_PORT", "70000", "FP_API_PORT must be a TCP port number"),
    ("FP_API_REFRESH_SECONDS", "0", "FP_API_REFRESH_SECONDS must be a positive number"),
    ("FP_MATERIALIZE_BATCH_SIZE", "-1", "FP_MATERIALIZE_BATCH_SIZE must be a positive integer"),
])
def test_invalid_values_say_what_to_fix(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit, match=message):
        settings_mod.load()
