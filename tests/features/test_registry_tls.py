"""The Feast registry on PostgreSQL over TLS, as deployed: `sslmode=verify-full` with the platform's
CA (helm-values/postgresql.yaml, deploy/k8s/secrets.example.yaml). A dedicated PostgreSQL with TLS
on and plaintext refused runs on a free port for these tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy

from helpers import cli_env, free_port, isolated, make_pki, run_cli
from features import store as fs
from features.resources import Resources

pytestmark = pytest.mark.integration


def _as_postgres(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tls_postgres():
    """(port, its CA, another CA) of a PostgreSQL that accepts only TLS connections, with a certificate for localhost."""
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        account = None
    if os.geteuid() != 0 or account is None or not shutil.which("initdb") or not shutil.which("runuser"):
        pytest.skip("a dedicated PostgreSQL is started as user postgres with initdb and runuser: this needs root, "
                    "the postgres account and the server binaries (the CI machine has them)")
    # Outside pytest's temporary root, which only root may enter: the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="fp-pg-tls-"))
    os.chmod(folder, 0o755)
    pki = make_pki(folder / "pki", ["localhost"])
    data, sockets = folder / "data", folder / "sockets"
    for path in (folder, data, sockets):
        path.mkdir(exist_ok=True)
        os.chown(path, account.pw_uid, account.pw_gid)
    init = _as_postgres("initdb", "-D", str(data), "-U", "postgres", "-A", "trust")
    assert init.returncode == 0, init.stderr[-2000:]
    for name in ("localhost.crt", "localhost.key"):
        shutil.copy(pki / name, data / name)
        os.chown(data / name, account.pw_uid, account.pw_gid)
        os.chmod(data / name, 0o600)
    (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
                                      "local all all trust\n")
    port = free_port()
    options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=localhost.crt "
               "-c ssl_key_file=localhost.key -c fsync=off")
    started = _as_postgres("pg_ctl", "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options, "-w", "start")
    assert started.returncode == 0, started.stderr[-2000:] + (folder / "postgres.log").read_text()[-2000:]
    yield port, pki / "ca.crt", make_pki(folder / "other", ["localhost"]) / "ca.crt"
    _as_postgres("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(folder, ignore_errors=True)


def _url(port: int, host: str = "localhost", **query: str) -> str:
    return f"postgresql+psycopg://postgres@{host}:{port}/postgres?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_the_registry_works_over_verified_tls(stack, tmp_path, tls_postgres):
    port, ca, other = tls_postgres
    settings = replace(isolated(stack, tmp_path, "pgtls"),
                       registry_url=_url(port, sslmode="verify-full", sslrootcert=str(ca)))
    with sqlalchemy.create_engine(settings.registry_url).connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    resources = Resources(settings)
    assert "FeatureView employee_features" in fs.apply(resources)
    assert [v.name for v in Resources(settings).store.list_feature_views()] == ["employee_features"]
    proc = run_cli("features", "breaking-changes", "--without-model", env=cli_env(settings))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    # The URL's TLS parameters are what the registry client uses: the same URL with another CA fails.
    wrong = replace(settings, registry_url=_url(port, sslmode="verify-full", sslrootcert=str(other)))
    proc = run_cli("features", "apply", env=cli_env(wrong))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: the feature registry at postgresql+psycopg://***@localhost:{port}/postgres?***")
    assert "SSL error" in proc.stderr and str(other) not in proc.stderr


@pytest.mark.parametrize("case, query, host, error", [
    ("plaintext", {"sslmode": "disable"}, "localhost", "pg_hba.conf rejects connection"),
    ("a certificate no trusted CA signed", {"sslmode": "verify-full", "sslrootcert": "{other}"}, "localhost",
     "SSL error"),
    ("a host name the certificate does not name", {"sslmode": "verify-full", "sslrootcert": "{ca}"}, "127.0.0.1",
     "does not match"),
])
def test_the_registry_refuses_anything_less(tls_postgres, tmp_path, case, query, host, error):
    port, ca, other = tls_postgres
    url = _url(port, host, **{k: v.format(ca=ca, other=other) for k, v in query.items()})
    probe = ("import sqlalchemy, sys\n"
             "try:\n    sqlalchemy.create_engine(sys.argv[1]).connect()\n"
             "except Exception as exc:\n    print(exc)\n    sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and error in proc.stdout, (case, proc.stdout, proc.stderr[-1000:])
