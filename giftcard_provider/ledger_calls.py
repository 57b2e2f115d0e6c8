"""How the ledger's domain API reaches Redis: the client, this release's function library, durability
waits and the translation of outages into StoreUnavailable (a 503).

store.py says *what* to read and write; this module says *how* a call gets there. Nothing here knows
a card, a transaction or a key name.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import redis
from redis.cluster import RedisCluster

from . import observability
from .config import Settings
from .connection import UNAVAILABLE, connect, is_cluster, use_local_fcall_keys
from .errors import StoreUnavailable
from .ledger_library import Library

log = logging.getLogger(__name__)

# The layout of keys this release reads and writes (keys.py), as recorded in the store's layout key.
# An empty Redis is marked with it on first use. Any other store without the marker (one of the
# previous layout, v1, which had none) is refused until `flask cards migrate` has moved or marked it
# (the Procfile's release phase runs it before a new release serves); so is one that is
# half-migrated ("migrating:...") or that a later release has migrated further.
LAYOUT = "v2"


def layout_refusal(layout: str | None) -> StoreUnavailable | None:
    """The error to answer for a store marked with `layout`, or None if this release may serve it."""
    if layout == LAYOUT:
        return None
    if layout is None:
        return StoreUnavailable(
            "Redis holds keys but no ledger layout (a ledger of layout v1?): run `flask cards migrate` "
            "(the release phase does) to move it to v2",
            code="layout_unmigrated",
        )
    if layout.startswith("migrating"):
        return StoreUnavailable(
            f"the ledger is being migrated to layout {LAYOUT} ({layout}): wait for `flask cards migrate` to finish",
            code="layout_migrating",
        )
    return StoreUnavailable(
        f"Redis holds a ledger of layout {layout!r}, which this release cannot serve (it serves {LAYOUT}): "
        "deploy the release that migrated it",
        code="layout_unknown",
    )


def _key_count(client) -> int:
    """DBSIZE; on a cluster summed over every primary (redis-py asks one node unless told)."""
    return client.dbsize(target_nodes=RedisCluster.PRIMARIES) if is_cluster(client) else client.dbsize()


@contextlib.contextmanager
def translated_errors():
    """Redis unreachable, loading, read-only, out of memory, failing over: a StoreUnavailable (503)."""
    try:
        yield
    except UNAVAILABLE as exc:
        observability.redis_error("ledger", exc)
        raise StoreUnavailable(f"the ledger store is unavailable ({type(exc).__name__})") from exc


class LedgerCalls:
    """One Redis server or a Redis Cluster (is_cluster), and this release's ledger library on it.

    Pass a client, or none to connect from settings on first use: a cluster
    client contacts Redis when it is made, and an app must start (and answer
    503 on /ready) while Redis is down.
    """

    def __init__(
        self, client: redis.Redis | RedisCluster | None, settings: Settings, library: Library, layout_key: str
    ):
        self._client = use_local_fcall_keys(client) if is_cluster(client) else client
        self._connecting = threading.Lock()
        self.layout_key = layout_key
        self._layout_checked = False
        self._layout_logged = False
        self.settings = settings
        self.library = library

    @property
    def redis(self) -> redis.Redis | RedisCluster:
        """The client, once the store's layout is one this release serves (else a 503)."""
        client = self.raw
        if not self._layout_checked:
            self._check_layout(client)
        return client

    @property
    def raw(self) -> redis.Redis | RedisCluster:
        """The client without the layout check: for `flask cards migrate` (migration.py) only, which
        reads and writes a store this release does not serve yet (v1, or half-migrated). Every other
        caller goes through `redis`."""
        if self._client is None:
            with self._connecting, translated_errors():
                if self._client is None:
                    try:
                        self._client = connect(self.settings)
                    except redis.exceptions.RedisClusterException as exc:
                        # No node answered, or the node is not in cluster mode: say which, once per try.
                        log.error("cannot reach a Redis Cluster at REDIS_URL (REDIS_CLUSTER=1): %s", exc)
                        raise redis.ConnectionError(str(exc)) from exc
        return self._client

    def _check_layout(self, client) -> None:
        """Until it passes once in a process: the store must hold a layout this release serves. An empty
        store is new: it is marked v2 here (see `refusal`). (A later migration that finishes after this
        check is met by card creation, which reads the marker again, and by ledger.lua's refusal of
        marked cards.)"""
        with translated_errors():
            layout = client.get(self.layout_key)
            refusal = self.refusal(client, layout)
        if refusal is not None:
            if not self._layout_logged:  # every request is refused alike: say it once per process
                log.error("refusing to serve this store (%s): %s", refusal.code, refusal.message)
                self._layout_logged = True
            raise refusal
        self._layout_checked = True

    def refusal(self, client, layout: str | None) -> StoreUnavailable | None:
        """layout_refusal, except that an empty Redis (DBSIZE 0, O(1)) is new: it is marked v2 first
        (SET NX: a migration that marked it first wins). Telling a v1 store from one that only holds
        other keys would take a walk of the keyspace: that is `flask cards migrate`'s."""
        if layout is None and _key_count(client) == 0:
            layout = self.mark_new_store(client)
        return layout_refusal(layout)

    def mark_new_store(self, client) -> str | None:
        """Mark the store v2 unless a marker is there already; returns the marker now."""
        client.set(self.layout_key, LAYOUT, nx=True)
        return client.get(self.layout_key)

    @property
    def cluster(self) -> bool:
        return is_cluster(self.redis)

    def call(self, name: str, keys: list[str], args: list[str], *, readonly: bool = False):
        """FCALL (FCALL_RO) this release's ledger function `name` (gc_authorize, ...), in one round trip,
        loading the library if Redis lacks it; a write waits for durability when configured."""
        function = self.library.function(name)
        if readonly:
            return self.run(lambda: self.redis.fcall_ro(function, len(keys), *keys, *args))
        return self.run(lambda: self._write(name, function, keys, args))

    def run(self, work):
        """work() calls this release's ledger functions: load the library if Redis lacks them."""
        with translated_errors():
            return self.library.run(self.redis, work)

    def pipeline(self, build) -> list:
        """One round trip: build(pipe) queues the commands, their replies come back in order."""
        with translated_errors():
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()

    def _write(self, name: str, function: str, keys: list[str], args: list[str]):
        s = self.settings
        if not (s.redis_wait_local_aof or s.redis_wait_replicas):
            return self.redis.fcall(function, len(keys), *keys, *args)
        # Opt-in durability: WAIT / WAITAOF (Redis >= 7.2) ride in the same round trip as the write.
        pipe = self.redis.pipeline(transaction=False)
        pipe.fcall(function, len(keys), *keys, *args)
        if s.redis_wait_local_aof:
            pipe.execute_command("WAITAOF", s.redis_wait_local_aof, s.redis_wait_replicas, s.redis_wait_timeout_ms)
        else:
            pipe.execute_command("WAIT", s.redis_wait_replicas, s.redis_wait_timeout_ms)
        reply, acked = pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        wanted = [s.redis_wait_local_aof, s.redis_wait_replicas] if s.redis_wait_local_aof else [s.redis_wait_replicas]
        got = acked if isinstance(acked, list) else [acked]
        if isinstance(acked, Exception) or any(g < w for g, w in zip(got, wanted, strict=True)):
            # The change is committed and is answered as such; the log says it is not yet durable.
            log.warning("write %s not confirmed durable within %d ms: %r", name, s.redis_wait_timeout_ms, acked)
        return reply
