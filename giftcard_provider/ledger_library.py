"""The ledger's Redis Functions library (lua/ledger.lua): its version, loading it, calling it.

Redis keeps a loaded library across restarts, and function names are global on
a server. So that two releases can share one Redis during a rolling deploy, each
release's library carries the digest of its own text in its name and in every
function's name (``giftcard_ledger_<digest>``, ``gc_authorize_<digest>``): a
process only ever calls the functions of its own release, loads them when they
are missing (a new release, a restarted or flushed Redis, a primary that lost
them), and never replaces another release's. Older releases' libraries stay
until an operator prunes them (``flask cards libraries --prune``); a process
whose library was pruned while it still runs loads it again on its next call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from .connection import is_cluster

PLACEHOLDER = "__LIBRARY_DIGEST__"
LIBRARY_PREFIX = "giftcard_ledger_"
_SOURCE = (Path(__file__).parent / "lua" / "ledger.lua").read_text()


def library_missing(exc: redis.ResponseError) -> bool:
    """A function of ours is not loaded (on one primary, at least)."""
    return "function not found" in str(exc).lower()


@dataclass(frozen=True)
class Library:
    """One release's ledger.lua, named by the digest of its text."""

    source: str = _SOURCE
    digest: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "digest", hashlib.sha256(self.source.encode()).hexdigest()[:16])

    @property
    def name(self) -> str:
        return f"{LIBRARY_PREFIX}{self.digest}"

    @property
    def code(self) -> str:
        """The text Redis loads: the source with its digest written in."""
        return self.source.replace(PLACEHOLDER, self.digest)

    def function(self, base: str) -> str:
        """This release's name of a ledger function: gc_authorize -> gc_authorize_<digest>."""
        return f"{base}_{self.digest}"

    def load(self, client: redis.Redis | RedisCluster) -> None:
        """Load (or reload) this release's library; on a cluster on every primary (redis-py sends
        FUNCTION LOAD to all of them). Other releases' libraries are left alone."""
        client.function_load(self.code, replace=True)

    def call(self, client, base: str, keys: list[str], args: list[str], *, readonly: bool = False):
        """FCALL (or FCALL_RO) one of this release's functions, loading the library if it is missing."""
        call = client.fcall_ro if readonly else client.fcall
        return self.run(client, lambda: call(self.function(base), len(keys), *keys, *args))

    def run(self, client, work):
        """work() calls this release's functions: if Redis lacks them, load the library and run it again."""
        try:
            return work()
        except redis.ResponseError as exc:
            if not library_missing(exc):
                raise
            self.load(client)
            return work()

    def ping(self, client) -> set[str]:
        """The digests our gc_ping answers: on every primary of a cluster. {digest} when all is well."""
        name = self.function("gc_ping")
        if not is_cluster(client):
            return {self.run(client, lambda: client.fcall_ro(name, 0))}
        replies = self.run(
            client, lambda: client.execute_command("FCALL_RO", name, 0, target_nodes=RedisCluster.PRIMARIES)
        )
        return set(replies.values())


def _libraries_by_node(client) -> list[tuple[object, set[str]]]:
    """(node, the ledger libraries loaded there) for each primary (one server: node None)."""
    nodes = client.get_primaries() if is_cluster(client) else [None]
    found = []
    for node in nodes:
        listing = client.execute_command("FUNCTION LIST", target_nodes=node) if node else client.function_list()
        names = {_library_name(entry) for entry in listing}
        found.append((node, {n for n in names if n and n.startswith(LIBRARY_PREFIX)}))
    return found


def installed_libraries(client) -> list[str]:
    """Names of the ledger libraries loaded in Redis, every release's (on a cluster: on any primary)."""
    return sorted(set().union(*(names for _, names in _libraries_by_node(client))))


def prune_libraries(client, keep: Library) -> list[str]:
    """Delete every other release's ledger library, on each primary that has it. Returns their names.

    Safe while an older release still runs: its next call finds its functions
    missing and loads them again."""
    pruned: set[str] = set()
    for node, names in _libraries_by_node(client):
        for name in sorted(names - {keep.name}):
            if node is None:
                client.function_delete(name)
            else:
                client.execute_command("FUNCTION DELETE", name, target_nodes=node)
            pruned.add(name)
    return sorted(pruned)


def _library_name(entry) -> str | None:
    """FUNCTION LIST's entry is a flat [key, value, ...] list in RESP2, a dict in RESP3."""
    if isinstance(entry, dict):
        return entry.get("library_name")
    items = dict(zip(entry[::2], entry[1::2], strict=False))
    return items.get("library_name")


RELEASE = Library()  # the library of the code this process runs
