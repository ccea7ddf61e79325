"""The registry database as deploy/k8s/registry-db.yaml runs it (conftest's ``registry_database``:
its server options, pg_hba.conf, first-start script and Secrets, on a real PostgreSQL): what it
refuses, and its probes. The Feast registry on it: tests/features/test_registry_tls.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy import validate
from helpers import make_pki, run_as_postgres

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case, url, error", [
    ("plaintext", dict(sslmode="disable"), 'no pg_hba.conf entry for host "127.0.0.1", user "feast", database '
                                          '"feast_registry", no encryption'),
    ("a certificate no trusted CA signed", dict(sslmode="verify-full", sslrootcert="{other}"), "SSL error"),
    ("a host name the certificate does not name", dict(host="127.0.0.1", sslmode="verify-full", sslrootcert="{ca}"),
     "does not match"),
    ("a wrong password", dict(password="guess", sslmode="verify-full", sslrootcert="{ca}"),
     'password authentication failed for user "feast"'),
    ("the superuser over the network", dict(user="postgres", password="{superuser}", sslmode="verify-full",
                                            sslrootcert="{ca}"), 'no pg_hba.conf entry for host "127.0.0.1", user "postgres"'),
    ("another database", dict(database="postgres", sslmode="verify-full", sslrootcert="{ca}"),
     'no pg_hba.conf entry for host "127.0.0.1", user "feast", database "postgres", SSL encryption'),
])
def test_the_registry_database_refuses_anything_less(registry_database, tmp_path, case, url, error):
    database = registry_database
    other = make_pki(tmp_path / "other", [database.host]) / "ca.crt"
    superuser = (database.folder / "mounts" / "credentials" / "postgres-password").read_text()
    values = {k: v.format(ca=database.ca, other=other, superuser=superuser) for k, v in url.items()}
    host = values.pop("host", None)
    target = database.url(**values)
    if host:  # the address itself as the host name: libpq checks the certificate against it
        target = target.replace(f"@{database.host}:", f"@{host}:")
    probe = ("import sqlalchemy, sys\n"
             "try:\n    sqlalchemy.create_engine(sys.argv[1]).connect()\n"
             "except Exception as exc:\n    print(exc)\n    sys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", probe, target], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and error in proc.stdout, (case, proc.stdout, proc.stderr[-1000:])


def _pod() -> dict:
    return validate.statefulset(validate.manifests(), validate.REGISTRY_DB)["spec"]["template"]["spec"]


def test_the_probes_report_the_running_database_ready(registry_database):
    container = _pod()["containers"][0]
    probes = {k: container[k]["exec"]["command"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(command[0] == "pg_isready" for command in probes.values()), probes
    for kind, command in probes.items():
        # As the pod runs it, but on this server's port (PGPORT; the pod's server uses the default 5432).
        ran = run_as_postgres(command, {"PGPORT": str(registry_database.port)})
        assert ran.returncode == 0 and "accepting connections" in ran.stdout, (kind, ran.stdout, ran.stderr)


def _psql(database, conninfo: str, sql: str) -> subprocess.CompletedProcess:
    # As the pod's user (postgres there and here), through the socket folder as this server lays it out.
    return run_as_postgres(["psql", "--no-psqlrc", "-Atc", sql, f"{database.local_path(conninfo)} port={database.port}"])


def test_the_metrics_exporter_reads_statistics_and_nothing_else(registry_database):
    exporter = next(c for c in _pod()["containers"] if c["name"] == "metrics")
    conninfo = next(e["value"] for e in exporter["env"] if e["name"] == "DATA_SOURCE_NAME")
    assert "password" not in conninfo  # the socket and the pod's user identify it
    read = _psql(registry_database, conninfo, "SELECT current_user, pg_has_role('pg_monitor', 'MEMBER'), "
                                              "count(*) > 0 FROM pg_stat_database")
    assert read.returncode == 0 and read.stdout.strip() == "metrics|t|t", read.stdout + read.stderr
    write = _psql(registry_database, conninfo, "CREATE TABLE taken (id int)")
    assert write.returncode != 0 and "permission denied" in write.stderr, write.stdout + write.stderr
    registry = _psql(registry_database, conninfo.replace("dbname=postgres", "dbname=feast_registry"), "SELECT 1")
    assert registry.returncode != 0 and "no pg_hba.conf entry" in registry.stderr, registry.stderr
