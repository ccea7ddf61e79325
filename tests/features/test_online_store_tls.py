"""The online store over TLS (rediss://) with the certificate and host name verified, for every
Redis client of the platform: materialization (Feast's sync client), the feature server's reads
(Feast's async client) and the online store check (redis-py from the URL).

valkey-server from PyPI is built without TLS, so the TLS endpoint is Python's own `ssl` server in
front of a dedicated valkey: what is tested is the clients' TLS configuration, end to end."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace

import pytest

from helpers import Proxy, cli_env, dedicated_valkey, ingest_exports, isolated, make_pki, run_cli
from features import online
from features.resources import Resources
from monitoring import health

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, and two server certificates it signed: for localhost, and for another host name."""
    return make_pki(tmp_path_factory.mktemp("pki"), ["localhost", "redis.elsewhere.example"])


def _tls_endpoint(port: int, cert, key) -> Proxy:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return Proxy(port, tls=context)


def test_every_redis_client_speaks_verified_tls(stack, exports, tmp_path, pki):
    with dedicated_valkey(tmp_path) as (port, _):
        good = _tls_endpoint(port, pki / "localhost.crt", pki / "localhost.key")
        wrong = _tls_endpoint(port, pki / "redis.elsewhere.example.crt", pki / "redis.elsewhere.example.key")
        try:
            settings = replace(isolated(stack, tmp_path, "tls"),
                               redis_url=f"rediss://localhost:{good.port}/0?ssl_ca_certs={pki / 'ca.crt'}")
            ingest_exports(settings, exports[-2:])
            assert run_cli("features", "apply", env=cli_env(settings)).returncode == 0
            loaded = run_cli("features", "materialize-incremental", env=cli_env(settings))
            assert loaded.returncode == 0, loaded.stderr[-2000:]

            resources = Resources(settings)
            active = online.served_roster(settings).active_ids()[:5]
            assert len(online.online_vectors(resources, active)) == 5  # sync client
            service = resources.store.get_feature_service(online.FEATURE_SERVICE)

            async def read():  # the feature server's client
                response = await resources.store.get_online_features_async(features=service,
                                                                 entity_rows={"employee_id": active})
                return response.to_dict()["tenure"]
            assert None not in asyncio.run(read())
            assert health.check(settings).healthy  # redis-py from the URL

            # A certificate for another host name, or no CA to check it against: refused.
            for url in (f"rediss://localhost:{wrong.port}/0?ssl_ca_certs={pki / 'ca.crt'}",
                        f"rediss://localhost:{good.port}/0"):
                refused = run_cli("features", "online", "--employee-id", str(active[0]),
                                  env={**cli_env(settings), "FP_REDIS_URL": url})
                assert refused.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr[-2000:]
        finally:
            good.close()
            wrong.close()
