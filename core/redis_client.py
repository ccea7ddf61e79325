"""Clients of the online store's Redis: the server itself, or its master behind Sentinel.

With Sentinel (FP_REDIS_SENTINEL_MASTER, deploy/k8s/online-store.yaml), a client asks a Sentinel
where the master is and asks again after a failover, so writes and reads follow the master without
reconfiguration. The Sentinels are reached with exactly the password and TLS options the servers
are: the deployed Sentinels require both, and redis-py gives Sentinels
only the socket options unless told otherwise (as Feast's own Sentinel client leaves them).
"""

from __future__ import annotations

import redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from core.settings import Settings

SENTINEL_PORT = 26379


def sentinel_master(sentinels: list[tuple[str, int]], master: str, connection: dict, asynchronous: bool = False,
                    **client):
    """The client of ``master`` as ``sentinels`` report it. ``connection``: the servers' connection
    options (password, TLS, timeouts, db), also used for the Sentinels, which have no database."""
    sentinel_kwargs = {key: value for key, value in connection.items() if key != "db"}
    cls = AsyncSentinel if asynchronous else Sentinel
    return cls(sentinels, sentinel_kwargs=sentinel_kwargs, **connection).master_for(master, **client)


def connect(settings: Settings, **options) -> redis.Redis:
    """A redis-py client of the online store from FP_REDIS_URL (and FP_REDIS_SENTINEL_MASTER).
    ``options``: socket timeouts and the like, for the servers and the Sentinels alike."""
    if not settings.redis_sentinel_master:
        return redis.Redis.from_url(settings.redis_url, **options)
    connection = redis.connection.parse_url(settings.redis_url)
    host, port = connection.pop("host", "127.0.0.1"), int(connection.pop("port", SENTINEL_PORT))
    if connection.pop("connection_class", None) is redis.SSLConnection:  # rediss://
        connection["ssl"] = True
    return sentinel_master([(host, port)], settings.redis_sentinel_master, {**connection, **options})
