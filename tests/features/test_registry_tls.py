"""The Feast registry on PostgreSQL over TLS, as deployed: the registry database of
deploy/k8s/registry-db.yaml (its server options, pg_hba.conf and first-start script, conftest's
``registry_database``), reached as user feast with `sslmode=verify-full` and the platform's CA.
What the database itself refuses: tests/deploy/test_registry_db.py."""

from __future__ import annotations

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
