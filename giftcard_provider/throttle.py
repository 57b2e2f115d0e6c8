"""Throttling of failed redemption-code look-ups in POST /giftcards/_search.

A search with a code that names no usable card is a failure. Who may be throttled for it:

* the shopper, identified by the *whole* identity the Hub sends (``client.id``,
  ``client.email`` and ``client.document`` together, normalised like owners are).
  Failures under (another id, the victim's e-mail) land in another bucket than
  (the victim's id, the victim's e-mail), so nobody can spend a shopper's limit
  without sending that shopper's whole identity. A search naming no identity is
  not limited per shopper: nothing tells anonymous shoppers apart, and one shared
  bucket would let one guesser block all of them.
* optionally the source address (CODE_LOOKUP_ADDRESS_LIMIT, off by default).
  Behind the Hub every search comes from VTEX's few addresses, so this is a
  store-wide brake: when it engages, every shopper's code search fails. It logs
  a warning (and counts an alert) once failures reach ALERT_SHARE of it, before
  it blocks anything.

The identity is the caller's word: the per-shopper limit only slows a guesser who
keeps one identity; one who invents a new identity per guess is never throttled.
The real defence is the codes themselves (about 98 bits of entropy: codes.py).

Bounded state: failures are counted in fixed windows, one Redis hash per (scope,
window length, window number), fields = a 16-hex keyed hash of the subject, values
= its failures in that window. A hash lives two windows (the current one is read
with the previous one to estimate a sliding window), and holds at most
CODE_LOOKUP_MAX_TRACKED subjects: a new subject beyond that is not tracked (its
field is removed again), so it is never throttled in that window, which gives a
flood of new identities nothing that fresh identities would not give it anyway.
docs/security.md states the bytes this keeps.

Once a limit is spent, code searches of that subject answer ``[]`` *without looking
the code up*, exactly like a wrong code: a guesser cannot tell that it is throttled.
(Why not 429: the caller is VTEX's Hub, not the guesser; [] is the protocol's answer
for "no usable card" and keeps checkout's flow intact.) Logs name subjects by their
keyed hash only, never by e-mail, id, document or address.

If Redis fails, the limiter does not fail open: the search answers 503 like any
other request whose store is unavailable.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import time
from dataclasses import dataclass

import redis
from flask import current_app, g, request

from . import observability
from .config import ConfigError, Settings
from .connection import UNAVAILABLE
from .errors import StoreUnavailable
from .keys import Keys
from .store import LedgerStore

log = logging.getLogger(__name__)

ALERT_SHARE = 0.8  # the store-wide brake warns once failures reach this share of its limit
SUBJECT_HEX = 16  # 64 bits of HMAC: no accidental collision among the few thousand subjects of a window
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d*)\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Limit:
    """At most `count` failures per `seconds` (a sliding window estimated from two fixed ones)."""

    count: int
    seconds: int
    text: str  # as configured, for logs: "10/minute"


def parse_limits(name: str, text: str) -> list[Limit]:
    """ "10/minute;50/day" (also "10 per 2 minutes") -> limits; "" -> none of that kind."""
    limits = []
    for part in filter(str.strip, re.split(r"[;,]", text)):
        match = _LIMIT.fullmatch(part)
        if not match or int(match[1]) < 1 or match[2] == "0":
            raise ConfigError(f"{name}: {part.strip()!r} is not N/second|minute|hour|day (N >= 1)")
        seconds = int(match[2] or 1) * _UNITS[match[3].lower()]
        limits.append(Limit(int(match[1]), seconds, part.strip()))
    return limits


def source_address(trusted_hops: int) -> str:
    """The caller's address: REMOTE_ADDR, or the entry `trusted_hops` from the end of X-Forwarded-For
    when that many proxies (e.g. Heroku's router: 1) append to it."""
    if trusted_hops > 0:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if len(forwarded) >= trusted_hops:
            return forwarded[-trusted_hops]
    return request.remote_addr or "-"


@contextlib.contextmanager
def _unavailable_as_503():
    """Fail closed: a limiter that cannot count answers 503, like the ledger."""
    try:
        yield
    except (redis.RedisError, *UNAVAILABLE) as exc:
        observability.redis_error("limiter", exc)
        log.warning("rate limiter store unavailable: %s", type(exc).__name__)
        raise StoreUnavailable(f"the rate limiter store is unavailable ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class Check:
    """One limit of one subject: scope ("client" or "address"), its keyed hash, the limit."""

    scope: str
    subject: str
    limit: Limit


@dataclass
class CodeLookup:
    """One code search: the limits it is checked and counted against, at one instant."""

    throttle: CodeLookupThrottle
    checks: list[Check]
    now: float
    throttled: bool = False

    @property
    def counters(self) -> list[tuple[str, str]]:
        """(hash key, field) of each check's current and previous window: read with the code index."""
        return [cell for c in self.checks for cell in self.throttle.cells(c, self.now)]

    def spent(self, counts: list[str | None]) -> Check | None:
        """The first check whose limit the counts (as `counters` read them) have spent, or None."""
        for i, check in enumerate(self.checks):
            current, previous = (int(v or 0) for v in counts[2 * i : 2 * i + 2])
            if _estimate(current, previous, check.limit, self.now) >= check.limit.count:
                return check
        return None

    def over_limit(self, counts: list[str | None]) -> bool:
        return self.spent(counts) is not None

    def refuse(self, counts: list[str | None]) -> None:
        """The look-up was not made: log and count which limit is spent (subjects by keyed hash only)."""
        check = self.spent(counts)
        self.throttled = True
        observability.child(observability.CODE_LOOKUPS, "throttled").inc()
        observability.child(observability.CODE_LOOKUPS_THROTTLED, check.scope).inc()
        g.code_lookup = "throttled"
        log.warning(
            "code look-up throttled",
            extra={
                "fields": {
                    "scope": check.scope,
                    "subject": check.subject,
                    "limit": check.limit.text,
                    "request_id": g.get("request_id"),
                }
            },
        )

    def finish(self, found: bool) -> None:
        """Record the look-up's result; a failure counts against every limit of the search."""
        if self.throttled:
            return
        if found:
            observability.child(observability.CODE_LOOKUPS, "found").inc()
            g.code_lookup = "found"
            return
        observability.child(observability.CODE_LOOKUPS, "not_found").inc()
        g.code_lookup = "not_found"
        self.throttle.count_failure(self.checks, self.now)


def _estimate(current: int, previous: int, limit: Limit, now: float) -> float:
    """Failures in the last `limit.seconds`: the current fixed window's, plus the previous one's
    share that still overlaps the sliding window (failures assumed spread evenly over it)."""
    elapsed = (now % limit.seconds) / limit.seconds
    return current + previous * (1 - elapsed)


class CodeLookupThrottle:
    """Counts failed look-ups in bounded per-window hashes on the ledger's own Redis client.

    Cost: the counts a search needs ride in the pipeline that reads the code index
    (one HGET per window, not MGET: on a cluster each hash lives in its own slot),
    so a look-up stays two round trips; only a failure pays one more, to count it,
    and a failure beyond the tracking cap one more again, to forget it.
    """

    def __init__(self, store: LedgerStore, settings: Settings):
        self.store = store
        self.limits = {
            "client": parse_limits("CODE_LOOKUP_LIMIT", settings.code_lookup_limit),
            "address": parse_limits("CODE_LOOKUP_ADDRESS_LIMIT", settings.code_lookup_address_limit),
        }
        if settings.code_lookup_max_tracked < 1:
            raise ConfigError("CODE_LOOKUP_MAX_TRACKED must be at least 1")
        self.max_tracked = settings.code_lookup_max_tracked
        self.trusted_hops = settings.trusted_proxy_hops
        self._secret = settings.code_hash_secret.encode()
        self._keys = Keys(settings.key_prefix)
        self._full: dict[tuple[str, int], str] = {}  # (scope, seconds) -> the last window hash found full
        if not self.limits["client"]:
            log.warning("failed code look-ups are not limited per shopper (CODE_LOOKUP_LIMIT is empty)")

    def subject(self, scope: str, *parts: str) -> str:
        """The keyed hash that stands for a shopper or address in Redis and in the logs."""
        message = json.dumps([scope, *parts]).encode()  # unambiguous: ("a", "b c") != ("a b", "c")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:SUBJECT_HEX]

    def begin(self, client_id: str, email: str, document: str) -> CodeLookup:
        """The limits one code search is checked against (no Redis call: see CodeLookup.counters).

        The identity parts arrive normalised (e-mails lower-cased, blanks stripped); all
        three empty is an anonymous search, limited only by the store-wide brake if set.
        """
        checks = []
        if client_id or email or document:
            shopper = self.subject("client", client_id, email, document)
            checks += [Check("client", shopper, limit) for limit in self.limits["client"]]
        if self.limits["address"]:
            address = self.subject("address", source_address(self.trusted_hops))
            checks += [Check("address", address, limit) for limit in self.limits["address"]]
        return CodeLookup(self, checks, time.time())

    def cells(self, check: Check, now: float) -> tuple[tuple[str, str], tuple[str, str]]:
        """(key, field) of the check's subject in the current and the previous window."""
        window = int(now // check.limit.seconds)
        key = self._keys.code_lookup_failures
        return (
            (key(check.scope, check.limit.seconds, window), check.subject),
            (key(check.scope, check.limit.seconds, window - 1), check.subject),
        )

    def count_failure(self, checks: list[Check], now: float) -> None:
        """One failure for every check's subject: HINCRBY in the current window's hash, which
        expires at the end of the next window (read as the previous one until then)."""
        seen, counted = set(), []
        for check in checks:
            current, previous = self.cells(check, now)
            if current not in seen:  # two limits with one window length share their counts
                seen.add(current)
                counted.append((check, current[0], previous[0]))
        if not counted:  # an anonymous search with the brake off: nothing to count it against
            return
        with _unavailable_as_503():
            pipe = self.store.redis.pipeline(transaction=False)
            for check, key, previous in counted:
                pipe.hincrby(key, check.subject, 1)
                # Absolute, and repeated by every failure: a lost EXPIREAT is healed by the next one.
                pipe.expireat(key, (int(now // check.limit.seconds) + 2) * check.limit.seconds)
                pipe.hlen(key)
                pipe.hget(previous, check.subject)
            replies = pipe.execute()
            forget = []
            for i, (check, key, _) in enumerate(counted):
                count, _, size, previous_count = replies[4 * i : 4 * i + 4]
                if count == 1 and size > self.max_tracked:
                    forget.append((check, key))
                elif check.scope == "address":
                    self._alert_before_brake(check, now, count, int(previous_count or 0))
            if forget:
                self._forget(forget)

    def _forget(self, forget: list[tuple[Check, str]]) -> None:
        """Subjects new to a full window hash are not tracked: remove the field just made."""
        pipe = self.store.redis.pipeline(transaction=False)
        for check, key in forget:
            pipe.hdel(key, check.subject)
        pipe.execute()
        for check, key in forget:
            observability.CODE_LOOKUPS_UNTRACKED.labels(check.scope).inc()
            window = (check.scope, check.limit.seconds)
            if self._full.get(window) != key:  # say so once per window and process, not per search
                self._full[window] = key
                log.warning(
                    "code look-up tracking full: new subjects are not throttled in this window",
                    extra={"fields": {"scope": check.scope, "key": key, "max_tracked": self.max_tracked}},
                )

    def _alert_before_brake(self, check: Check, now: float, count: int, previous: int) -> None:
        """Warn when this failure takes the store-wide brake's estimate up to ALERT_SHARE of its limit.

        The estimate moves up only by failures, one at a time, and the brake blocks only once
        it reaches the limit, so this warning comes before the first blocked search (for
        limits under 5 a single failure may cross both: the warning still comes first).
        """
        threshold = max(1, math.ceil(ALERT_SHARE * check.limit.count))
        after = _estimate(count, previous, check.limit, now)
        if after - 1 < threshold <= after:
            observability.CODE_LOOKUP_BRAKE_ALERTS.inc()
            log.warning(
                "code look-up brake near: failed code searches from one address approach its limit",
                extra={
                    "fields": {
                        "scope": check.scope,
                        "subject": check.subject,
                        "limit": check.limit.text,
                        "failures": round(after, 1),
                        "request_id": g.get("request_id"),
                    }
                },
            )


def code_lookups() -> CodeLookupThrottle:
    return current_app.extensions["giftcard_provider"]["throttle"]
