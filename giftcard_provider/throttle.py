"""Throttling of failed redemption-code look-ups in POST /giftcards/_search.

A search with a code that names no usable card is a failure; failures are
counted per client identity (``client.id`` and ``client.email``, each one) and
per source address, with the `limits` library's moving window on the app's own
Redis (same connection pool, so the same timeouts; keys under
``<REDIS_KEY_PREFIX>:limits:``, identities stored as keyed hashes).

Once a limit is spent, code searches from that client or address answer ``[]``
*without looking the code up*, exactly like a wrong code: a guesser cannot tell
that it is throttled, and even a right guess finds nothing until the window has
moved on. Each throttled search logs a warning and counts in
``giftcard_code_lookups_throttled_total``. (Why not 429: the caller is VTEX's
Hub, not the guesser; [] is the protocol's answer for "no usable card" and
keeps checkout's flow intact, while a 429 would hand the Hub an error it has no
documented handling for, and tell a guesser what is happening.)

If Redis fails, the limiter does not fail open: the search answers 503 like
any other request whose store is unavailable (the ledger lives on the same
Redis, so nothing that could have succeeded is lost).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass

import redis
from flask import current_app, g, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from . import observability
from .config import ConfigError, Settings
from .errors import StoreUnavailable
from .keys import Keys
from .store import LedgerStore

log = logging.getLogger(__name__)

ANONYMOUS = "-"  # the one bucket shared by code searches that name no client


def parse_limits(name: str, text: str) -> list[RateLimitItem]:
    """ "10/minute;50/day" -> limit items; "" -> no limit of that kind."""
    if not text.strip():
        return []
    try:
        return parse_many(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def source_address(trusted_hops: int) -> str:
    """The caller's address: REMOTE_ADDR, or the entry `trusted_hops` from the end of X-Forwarded-For
    when that many proxies (e.g. Heroku's router: 1) append to it."""
    if trusted_hops > 0:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if len(forwarded) >= trusted_hops:
            return forwarded[-trusted_hops]
    return request.remote_addr or ANONYMOUS


@contextlib.contextmanager
def _unavailable_as_503():
    """Fail closed: a limiter that cannot count answers 503, like the ledger."""
    try:
        yield
    except (StorageError, redis.RedisError) as exc:
        cause = exc.storage_error if isinstance(exc, StorageError) else exc
        observability.redis_error("limiter", cause)
        log.warning("rate limiter store unavailable: %s", type(cause).__name__)
        raise StoreUnavailable(f"the rate limiter store is unavailable ({type(cause).__name__})") from exc


@dataclass
class CodeLookup:
    """One code search: the subjects it is counted against, and what it found."""

    throttle: CodeLookupThrottle
    identities: set[str]
    address: str
    subjects: list[tuple[str, str]]  # (scope, hashed identity)
    throttled: bool = False

    @property
    def flag_keys(self) -> list[str]:
        """Keys that exist while a subject's limit is spent; read with the code index, one round trip."""
        return [self.throttle.flag_key(scope, key) for scope, key in self.subjects]

    def refuse(self, flags: list[str | None]) -> None:
        """The look-up was not made: log and count which limit is spent."""
        self.throttled = True
        (scope, _), spent = next((s, f) for s, f in zip(self.subjects, flags, strict=True) if f)
        observability.CODE_LOOKUPS.labels("throttled").inc()
        observability.CODE_LOOKUPS_THROTTLED.labels(scope).inc()
        g.code_lookup = "throttled"
        log.warning(
            "code look-up throttled",
            extra={
                "fields": {
                    "scope": scope,
                    "limit": spent,
                    "clients": sorted(self.identities),
                    "address": self.address,
                    "request_id": g.get("request_id"),
                }
            },
        )

    def finish(self, found: bool) -> None:
        """Record the look-up's result; a failure spends one unit of every limit."""
        if self.throttled:
            return
        if found:
            observability.CODE_LOOKUPS.labels("found").inc()
            g.code_lookup = "found"
            return
        observability.CODE_LOOKUPS.labels("not_found").inc()
        g.code_lookup = "not_found"
        self.throttle.spend(self.subjects)


class CodeLookupThrottle:
    """Counts failed look-ups with `limits`; a spent limit raises a flag key for its window.

    Why the flag: checking every moving window before each look-up costs one
    round trip per limit and identity (five by default), on every checkout's
    code search. The flag makes the check one MGET that rides with the code
    index read, so a look-up costs two round trips; only failures pay for the
    counters. A flag lasts one whole window, so a throttled subject waits at
    most one window longer than the moving window alone would make it.
    """

    def __init__(self, store: LedgerStore, settings: Settings):
        self.store = store
        self.limits = {
            "client": parse_limits("CODE_LOOKUP_LIMIT", settings.code_lookup_limit),
            "address": parse_limits("CODE_LOOKUP_ADDRESS_LIMIT", settings.code_lookup_address_limit),
        }
        self.trusted_hops = settings.trusted_proxy_hops
        self._secret = settings.code_hash_secret.encode()
        self._keys = Keys(settings.key_prefix)
        self._limiter: MovingWindowRateLimiter | None = None
        for scope, items in self.limits.items():
            if not items:
                log.warning("failed code look-ups are not limited per %s (its limit setting is empty)", scope)

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        """`limits` on the ledger's own client, made on first use (the client may not exist before)."""
        if self._limiter is None:
            client = self.store.redis
            storage = RedisStorage(
                "redis://", key_prefix=f"{self.store.keys.prefix}:limits", wrap_exceptions=True
            )  # the URL is never used: the client is replaced just below
            # limits would open a client of its own from a URL; the ledger's has the timeouts,
            # the retry budget and, on a cluster, the slot map. Its scripts are single-key.
            storage.storage = client
            storage.initialize_storage("")
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    def _hashed(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def flag_key(self, scope: str, hashed: str) -> str:
        return self._keys.throttled(scope, hashed)

    def begin(self, identities: set[str]) -> CodeLookup:
        """The subjects of one code search (no Redis call: see CodeLookup.flag_keys)."""
        address = source_address(self.trusted_hops)
        subjects = [("client", self._hashed(i)) for i in sorted(identities) or [ANONYMOUS]]
        subjects.append(("address", self._hashed(address)))
        return CodeLookup(self, identities, address, subjects)

    def spend(self, subjects: list[tuple[str, str]]) -> None:
        with _unavailable_as_503():
            for scope, key in subjects:
                for item in self.limits[scope]:
                    if not self.limiter.hit(item, scope, key) or not self.limiter.test(item, scope, key):
                        self.store.redis.set(self.flag_key(scope, key), str(item), ex=item.get_expiry())


def code_lookups() -> CodeLookupThrottle:
    return current_app.extensions["giftcard_provider"]["throttle"]
