"""How the service reaches Redis: one server, or a Redis Cluster (REDIS_CLUSTER=1).

Both clients get short timeouts and a small retry budget, so an outage is a
quick 503 rather than a hung worker. Nothing else in the app needs to know
which one it has: every ledger call touches the keys of one card, which share
a hash tag and so a slot (keys.py).
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .config import ConfigError, Settings

# Redis errors that mean "the store cannot answer now": the caller gets a fast
# 503 and may retry (every write is idempotent by requestId). The cluster ones
# are what a client sees while a failover is in progress.
UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,  # includes MasterDownError
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


def connect(settings: Settings) -> redis.Redis | RedisCluster:
    """A client for REDIS_URL. A cluster client contacts its startup node here, so it can raise
    RedisClusterException; a single-server client connects on first use."""
    options = {}
    if settings.redis_url.startswith("rediss://"):
        # Heroku Redis presents a self-signed certificate: operators set REDIS_SSL_CERT_REQS=none.
        cert_reqs = settings.redis_ssl_cert_reqs.lower()
        if cert_reqs not in ("none", "optional", "required"):
            raise ConfigError(f"REDIS_SSL_CERT_REQS must be none, optional or required, not {cert_reqs!r}")
        options["ssl_cert_reqs"] = cert_reqs
    options.update(
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), settings.redis_retries),
        max_connections=settings.redis_max_connections,
    )
    if not settings.redis_cluster:
        return redis.Redis.from_url(settings.redis_url, health_check_interval=30, **options)
    return use_local_fcall_keys(RedisCluster.from_url(settings.redis_url, **options))


def use_local_fcall_keys(client: RedisCluster) -> RedisCluster:
    """Route FCALLs of `client` without asking the server for their keys (see LocalFcallKeys)."""
    if not isinstance(client.commands_parser, LocalFcallKeys):
        client.commands_parser = LocalFcallKeys(client.commands_parser)
    return client


class LocalFcallKeys:
    """redis-py's cluster command parser, except that FCALL/FCALL_RO keys are read from the call.

    redis-py finds the slot of a command with "movable keys" (FCALL is one) by
    sending COMMAND GETKEYS to a node first: a second round trip on every ledger
    call. FCALL's keys are plainly the `numkeys` arguments after the function
    name, as for EVAL, which redis-py already reads locally.
    """

    def __init__(self, parser):
        self._parser = parser

    def get_keys(self, redis_conn, *args):
        if args and str(args[0]).upper() in ("FCALL", "FCALL_RO") and len(args) >= 3:
            return list(args[3 : 3 + int(args[2])]) or None
        return self._parser.get_keys(redis_conn, *args)

    def __getattr__(self, name):
        return getattr(self._parser, name)
