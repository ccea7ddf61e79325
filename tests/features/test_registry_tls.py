"""The Feast registry on PostgreSQL over TLS, as deployed: the registry database of
deploy/k8s/registry-db.yaml (its server options, pg_hba.conf and first-start script, conftest's
``registry_database``), reached as user feast with `sslmode=verify-full` and the platform's CA."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import sqlalchemy

from helpers import cli_env, isolated, make_pki, run_cli
from features import store as fs
from features.resources import Resources

pytestmark = pytest.mark.integration


def test_the_registry_works_over_verified_tls(stack, tmp_path, registry_database):
    database = registry_database
    other = make_pki(tmp_path / "other", [database.host]) / "ca.crt"
    settings = replace(isolated(stack, tmp_path, "pgtls"),
                       registry_url=database.url(sslmode="verify-full", sslrootcert=str(database.ca)))
    with sqlalchemy.create_engine(settings.registry_url).connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
        # The first-start script made feast an ordinary user owning only its database.
        assert connection.execute(sqlalchemy.text(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one() == (
            False, False, False)
        assert connection.execute(sqlalchemy.text(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")).scalar() == "feast"
    resources = Resources(settings)
    assert "FeatureView employee_features" in fs.apply(resources)
    assert [v.name for v in Resources(settings).store.list_feature_views()] == ["employee_features"]
    proc = run_cli("features", "breaking-changes", "--without-model", env=cli_env(settings))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    # The URL's TLS parameters are what the registry client uses: the same URL with another CA fails.
    wrong = replace(settings, registry_url=database.url(sslmode="verify-full", sslrootcert=str(other)))
    proc = run_cli("features", "apply", env=cli_env(wrong))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: the feature registry at postgresql+psycopg://***@localhost:{database.port}"
                                  "/feast_registry?***")
    assert "SSL error" in proc.stderr and str(other) not in proc.stderr and database.password not in proc.stderr


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
