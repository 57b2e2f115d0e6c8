"""Webhook endpoints and what is sent to them: configuration, payloads, signatures, one HTTP attempt.

An operator configures endpoints (``flask cards webhooks add URL``); the worker process
(webhook_worker.py) delivers every event of the event log (events.py) to each of them as a signed
HTTP POST following the Standard Webhooks specification: headers ``webhook-id`` (the event's stable
id, so a retry carries the same one), ``webhook-timestamp`` (the attempt's time, Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body`` under the endpoint's
``whsec_`` secret, made by the `standardwebhooks` package; after a rotation, a second signature by
the secret it replaced, until its overlap ends). The body is JSON with every amount as an
exact JSON number in major units (written from integers, never through a binary float) and again
in integer minor units.

An endpoint's position is a cursor per bucket of the event log (a "lane"): the last event handled.
Events of a bucket, so of a card, are delivered one at a time in order; a failing event is retried
with backoff until WEBHOOK_MAX_ATTEMPTS, then moved to the endpoint's dead letters and the lane goes
on. Everything here is stored under the endpoint's own hash tag (keys.py), so webhook_lane.lua can
check a lane's lease and move its cursor in one step, on a cluster too.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import simplejson
from standardwebhooks import Webhook

from schemas.common import iso_ms

from .errors import InvalidRequest, NotFound
from .keys import buckets, is_valid_id
from .ledger_calls import translated_errors
from .money import exponent_of, to_major
from .records import (
    EVENT_DELTAS,
    MARKER_EVENTS,
    DeadLetter,
    Endpoint,
    Event,
    LaneCursor,
    LaneRetry,
    LogBounds,
    WebhookStats,
)

EVENT_TYPES = (*EVENT_DELTAS, *MARKER_EVENTS)
SECRET_BYTES = 32  # the specification asks for 24 to 64 random bytes
MAX_URL = 2048
MAX_DESCRIPTION = 200
# Delivery latency, from the event's append (its stream id, Redis clock) to the receiver's 2xx
# being recorded (Redis clock again): the bounds of the histogram the worker keeps, in seconds.
LATENCY_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0)
# What /metrics reports as an attempt's failure: a fixed set (label values).
FAILURE_KINDS = ("timeout", "connection", "http_3xx", "http_4xx", "http_5xx", "gone")
USER_AGENT = "giftcard-provider-webhooks/1"
# A kept-alive connection idle longer than this is not reused: the receiver may have closed it
# meanwhile, and a POST sent on it would fail for nothing (it is never retried at once).
IDLE_REUSE = 1.0
_RESPONSE_KEPT = 300  # characters of a failing answer's body kept as its error
PAUSE_SCRIPT = (Path(__file__).parent / "lua" / "webhook_pause.lua").read_text()
ROTATE_SCRIPT = (Path(__file__).parent / "lua" / "webhook_rotate.lua").read_text()
# How long the secret a rotation replaces keeps signing beside the new one, by default and at most.
ROTATION_OVERLAP_HOURS = 24
MAX_ROTATION_OVERLAP_HOURS = 30 * 24


def new_endpoint_id() -> str:
    return f"we_{secrets.token_hex(6)}"


def new_secret() -> str:
    """A signing secret in the specification's serialisation: "whsec_" + base64 of random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_url(url: str, *, production: bool) -> str:
    """An endpoint URL, or InvalidRequest saying what is wrong with it. Production wants https (the
    body names cards and balances; the signature proves the sender, it does not hide the content)."""
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidRequest(f"the URL is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise InvalidRequest(f"the URL must start with https:// (got {parts.scheme or 'no scheme'!r})")
    if parts.scheme == "http" and production:
        raise InvalidRequest("production delivers to https:// URLs only (http:// is for APP_ENV=development)")
    if not parts.hostname:
        raise InvalidRequest("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("put no credentials in the URL: `list` shows URLs, and the signature authenticates us")
    if parts.fragment:
        raise InvalidRequest("the URL has a #fragment, which is never sent: leave it out")
    if port == 0:
        raise InvalidRequest("port 0 is not a port")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidRequest("the URL contains spaces or control characters")
    return url


@contextlib.contextmanager
def _about(field: str):
    """An InvalidRequest raised inside names `field` (details["field"]): the argument it is about."""
    try:
        yield
    except InvalidRequest as exc:
        exc.details.setdefault("field", field)
        raise


def _check_types(types: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    return tuple(t for t in EVENT_TYPES if t in types)  # one order, whatever was typed


# -- what is sent ---------------------------------------------------------------


def payload(event: Event) -> dict:
    """The JSON document for one event: the specification's {type, timestamp, data}. Amounts are
    int or Decimal (written as exact JSON numbers), and integer minor units."""
    exponent = exponent_of(event.currency)
    return {
        "type": f"giftcard.{event.type}",
        "timestamp": iso_ms(event.at_ms),
        "data": {
            "id": event.id,
            "type": event.type,
            "at": iso_ms(event.at_ms),
            "cardId": event.card_id,
            "transactionId": event.tx_id,
            "ref": event.ref,
            "currency": event.currency,
            "amount": to_major(event.amount, exponent),
            "amountMinor": event.amount,
            "availableAfter": to_major(event.available, exponent),
            "availableAfterMinor": event.available,
            "heldAfter": to_major(event.held, exponent),
            "heldAfterMinor": event.held,
            "seq": event.seq,
        },
    }


def body_of(event: Event) -> str:
    """The exact text that is signed and sent (compact JSON; Decimals as JSON numbers)."""
    return simplejson.dumps(payload(event), use_decimal=True, separators=(",", ":"))


class Signer:
    """An endpoint's signatures: by its secret, and after a rotation by the previous secret too until
    its overlap ends. The specification puts several signatures in one header, space-separated, and a
    receiver accepts the delivery if any of them is made with its secret."""

    def __init__(self, endpoint: Endpoint):
        self.key = (endpoint.secret, endpoint.previous_secret, endpoint.previous_until_ms)
        self._current = Webhook(endpoint.secret)
        self._previous = Webhook(endpoint.previous_secret) if endpoint.previous_secret else None
        self._previous_until_ms = endpoint.previous_until_ms

    def sign(self, message_id: str, moment: datetime, body: str) -> str:
        signature = self._current.sign(message_id, moment, body)
        if self._previous is not None and moment.timestamp() * 1000 < self._previous_until_ms:
            signature += " " + self._previous.sign(message_id, moment, body)
        return signature


def signed_headers(signer: Signer, message_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (a retry signs again with its own timestamp)."""
    moment = datetime.fromtimestamp(int(time.time()), UTC)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signer.sign(message_id, moment, body),
    }


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt: ok (a 2xx), else its failure kind and error; `retry_after` seconds when the
    receiver asked (Retry-After on 429 or 503)."""

    ok: bool
    status: int | None
    kind: str
    error: str
    seconds: float
    retry_after: int | None = None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


class _Deadline:
    """A socket whose every send and receive waits at most until `deadline` (time.monotonic()): the
    attempt's end, set by Sender.post. A plain per-call timeout would let a receiver that trickles
    its answer a byte at a time hold an attempt (and a worker's SIGTERM shutdown) for ever."""

    deadline = math.inf

    def _arm(self) -> None:
        if self.deadline != math.inf:
            self.settimeout(_remaining(self.deadline))

    def recv(self, *args):
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)

    def send(self, *args):
        self._arm()
        return super().send(*args)

    def sendall(self, *args):  # one deadline for the whole call (Python >= 3.5)
        self._arm()
        return super().sendall(*args)


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    """The TLS socket the context makes (its sslsocket_class)."""


def _deadline_connection(conn):
    """conn's _create_connection: connect within the attempt's time left, then a _DeadlineSocket (the
    TLS handshake, made next by HTTPSConnection.connect, gets what is left after the connect)."""

    def create(address, timeout, source_address=None):
        plain = socket.create_connection(address, _remaining(conn.deadline), source_address)
        sock = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.deadline = conn.deadline
        sock.settimeout(_remaining(conn.deadline))
        return sock

    return create


class _HTTPConnection(http.client.HTTPConnection):
    deadline = math.inf

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _deadline_connection(self)

    def connect(self):
        super().connect()
        self.sock.deadline = self.deadline  # for https, the TLS socket made from the plain one


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    pass


class Sender:
    """POSTs with a per-thread keep-alive connection per origin (reused within IDLE_REUSE). Redirects
    are failures (the specification: update the URL instead), and so is any answer but a 2xx.
    `timeout` bounds each attempt as a whole (connect, TLS handshake, send, every read): each socket
    call waits at most the time left (_DeadlineSocket)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._local = threading.local()
        self._tls = ssl.create_default_context()
        self._tls.sslsocket_class = _DeadlineSSLSocket
        self._pools: list[dict] = []  # every thread's connections, for close()
        self._pools_lock = threading.Lock()

    def close(self) -> None:
        """Close every kept-alive connection (the threads that used them have finished)."""
        with self._pools_lock:
            for pool in self._pools:
                for conn, _ in pool.values():
                    conn.close()
                pool.clear()

    def post(self, url: str, body: str, headers: dict[str, str]) -> Attempt:
        started = time.monotonic()
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname, parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
            with self._pools_lock:
                self._pools.append(connections)
        conn, last_used = connections.pop(origin, (None, 0.0))
        if conn is not None and started - last_used > IDLE_REUSE:
            conn.close()  # receivers close idle connections (gunicorn after 2 s): never send on a stale one
            conn = None
        conn = conn or self._connect(parts)
        conn.deadline = started + self.timeout
        if conn.sock is not None:
            conn.sock.deadline = conn.deadline  # a kept-alive connection: this attempt's deadline
        try:
            conn.request("POST", target, body=body.encode(), headers=headers)
            response = conn.getresponse()
            text = response.read(64 * 1024)
        except TimeoutError:
            conn.close()
            return self._failed("timeout", f"no answer within {self.timeout:g} s", started)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return self._failed("connection", f"{type(exc).__name__}: {exc}".rstrip(": "), started)
        if response.isclosed() and not response.will_close:
            connections[origin] = (conn, time.monotonic())
        else:
            conn.close()  # an answer we did not read to the end, or a server that closes
        return self._answered(response, text, started)

    def _connect(self, parts) -> http.client.HTTPConnection:
        if parts.scheme == "https":
            return _HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout, context=self._tls)
        return _HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)

    def _failed(self, kind: str, error: str, started: float) -> Attempt:
        return Attempt(False, None, kind, error, time.monotonic() - started)

    def _answered(self, response, text: bytes, started: float) -> Attempt:
        status, elapsed = response.status, time.monotonic() - started
        if 200 <= status < 300:
            return Attempt(True, status, "", "", elapsed)
        kind = "gone" if status == 410 else f"http_{status // 100}xx" if 300 <= status < 600 else "http_5xx"
        retry_after = None
        if status in (429, 503):
            value = response.getheader("Retry-After", "")
            retry_after = int(value) if re.fullmatch(r"\d{1,7}", value.strip()) else None
        snippet = text.decode("utf-8", "replace").strip().replace("\n", " ")[:_RESPONSE_KEPT]
        return Attempt(False, status, kind, f"HTTP {status}{': ' + snippet if snippet else ''}", elapsed, retry_after)


# -- endpoints ----------------------------------------------------------------------


def predecessor(stream_id: str) -> str | None:
    """The stream id just before `stream_id` (a cursor that starts *at* it), None before 0-1."""
    ms, n = map(int, stream_id.split("-"))
    if n:
        return f"{ms}-{n - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms else None


_EVENT_ID = re.compile(r"([0-9a-f]{2})-(\d+)-(\d+)")


def parse_event_id(event_id: str) -> tuple[str, str] | None:
    """ "<bucket>-<ms>-<n>" -> (bucket, stream id), or None."""
    match = _EVENT_ID.fullmatch(event_id)
    return (match[1], f"{match[2]}-{match[3]}") if match else None


class Webhooks:
    """The operator's side: endpoints, cursors, failures and replays, through the ledger store's client."""

    def __init__(self, store, *, for_metrics: bool = False):
        """`for_metrics`: the /metrics scrape's reader, like store.books_for_metrics: no layout check
        and no error translation (the scrape counts a failure as its own: webhook_metrics.py)."""
        self.store = store
        self.keys = store.keys
        self.settings = store.settings
        self.for_metrics = for_metrics

    @property
    def redis(self):
        return self.store.calls.raw if self.for_metrics else self.store.redis

    def _errors(self):
        return contextlib.nullcontext() if self.for_metrics else translated_errors()

    def _keys(self, endpoint_id: str) -> dict[str, str]:
        return self.keys.webhook(endpoint_id)

    # -- configuration --

    def add(self, url: str, *, types: list[str] = (), description: str = "", start: str = "now") -> Endpoint:
        """A new endpoint with a fresh secret (returned here, and never shown again). `start`: "now"
        (the events appended from now on), "beginning" (the whole retained log), an event id (from
        that event, inclusive) or "<ms>" epoch milliseconds (from that time, inclusive).
        An InvalidRequest names the argument it is about in details["field"] (url, description, types,
        start), so a caller can point at it."""
        with _about("url"):
            url = check_url(url, production=self.settings.production)
        if len(description) > MAX_DESCRIPTION:
            raise InvalidRequest(f"the description is longer than {MAX_DESCRIPTION} characters", field="description")
        with _about("types"):
            checked_types = _check_types(list(types))
        endpoint = Endpoint(
            id=new_endpoint_id(),
            url=url,
            secret=new_secret(),
            types=checked_types,
            paused=False,
            paused_reason="",
            description=description,
            created_ms=int(time.time() * 1000),
        )
        with _about("start"):
            cursor = self._start_cursor(start)
        k = self._keys(endpoint.id)
        with self._errors():
            client = self.redis
            if cursor:
                client.hset(k["cursor"], mapping=cursor)
            client.hset(k["endpoint"], mapping=endpoint.to_hash())
            client.sadd(self.keys.webhook_endpoints(), endpoint.id)  # listed last: complete when seen
        return endpoint

    def _start_cursor(self, start: str) -> dict[str, str]:
        """A cursor (bucket -> packed LaneCursor, "" = from the bucket's start) for `start`."""
        if start == "beginning":
            return {b: "" for b in buckets()}
        if start == "now":
            return {b: LaneCursor(t.last_id, t.entries_added).pack() if t else "" for b, t in self.tails().items()}
        parsed = parse_event_id(start)
        if parsed:
            bucket, stream_id = parsed
            at = f"{stream_id.split('-')[0]}-0"
        elif start.isdigit():
            bucket, stream_id, at = None, None, f"{start}-0"
        else:
            raise InvalidRequest(f"start must be now, beginning, an event id or a time, not {start!r}")
        cursor = {b: predecessor(at) or "" for b in buckets()}
        if bucket:
            cursor[bucket] = predecessor(stream_id) or ""
        return {b: LaneCursor(v, None).pack() if v else "" for b, v in cursor.items()}

    def tails(self) -> dict[str, LogBounds | None]:
        """XINFO STREAM of every bucket's log, in one round trip (None: a bucket with no log yet)."""
        everyone = buckets()
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            for b in everyone:
                pipe.xinfo_stream(self.keys.events(b))
            replies = pipe.execute(raise_on_error=False)  # a missing stream answers an error: not a failure
            return {b: LogBounds.from_info(r) for b, r in zip(everyone, replies, strict=True)}  # raises the others

    def endpoints(self, *, with_secret: bool = False) -> list[Endpoint]:
        """Every endpoint, oldest first; their secrets only `with_secret` (the worker signs), else ""."""
        names = Endpoint.PUBLIC_FIELDS + (Endpoint.SECRET_FIELDS if with_secret else ())
        with self._errors():
            ids = sorted(self.redis.smembers(self.keys.webhook_endpoints()))
            pipe = self.redis.pipeline(transaction=False)
            for endpoint_id in ids:
                pipe.hmget(self._keys(endpoint_id)["endpoint"], names)
            found = [Endpoint.from_values(i, names, v) for i, v in zip(ids, pipe.execute(), strict=True)]
        return sorted((e for e in found if e), key=lambda e: (e.created_ms, e.id))

    def endpoint(self, endpoint_id: str) -> Endpoint:
        """One endpoint, without its secret (secret "")."""
        if is_valid_id(endpoint_id):
            names = Endpoint.PUBLIC_FIELDS
            with self._errors():
                found = Endpoint.from_values(
                    endpoint_id, names, self.redis.hmget(self._keys(endpoint_id)["endpoint"], names)
                )
            if found:
                return found
        raise NotFound(f"no webhook endpoint {endpoint_id}")

    def remove(self, endpoint_id: str) -> Endpoint:
        """Forget an endpoint: its configuration, cursor, leases, retries, dead letters and counters.
        A worker delivering to it stops at its next step (its lane's lease is gone)."""
        endpoint = self.endpoint(endpoint_id)
        with self._errors():
            self.redis.srem(self.keys.webhook_endpoints(), endpoint_id)
            self.redis.delete(*self._keys(endpoint_id).values())  # one slot: the endpoint's hash tag
        return endpoint

    def set_paused(self, endpoint_id: str, paused: bool, reason: str = "") -> bool:
        """Pause (no delivery; events wait, the cursor stays) or resume. Returns whether it changed."""
        endpoint = self.endpoint(endpoint_id)
        if endpoint.paused == paused:
            return False
        fields = ["paused", "1" if paused else "0", "paused_reason", reason if paused else ""]
        with self._errors():  # only if it still exists (webhook_pause.lua): a remove may have come meanwhile
            done = self.redis.register_script(PAUSE_SCRIPT)(keys=[self._keys(endpoint_id)["endpoint"]], args=fields)
        if not done:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return True

    def rotate_secret(self, endpoint_id: str, overlap_hours: int = ROTATION_OVERLAP_HOURS) -> tuple[Endpoint, str]:
        """Give the endpoint a new secret (returned here, and never shown again); the one it replaces
        signs beside it for `overlap_hours` more (0: not at all). Returns (the endpoint, the new
        secret); the endpoint's previous_until_ms says when the old secret stops signing."""
        if not 0 <= overlap_hours <= MAX_ROTATION_OVERLAP_HOURS:
            raise InvalidRequest(
                f"the overlap must be 0 to {MAX_ROTATION_OVERLAP_HOURS} hours, not {overlap_hours}", field="overlap"
            )
        self.endpoint(endpoint_id)
        secret = new_secret()
        with self._errors():
            script = self.redis.register_script(ROTATE_SCRIPT)
            until_ms = script(keys=[self._keys(endpoint_id)["endpoint"]], args=[secret, overlap_hours * 3_600_000])
        if until_ms < 0:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return self.endpoint(endpoint_id), secret

    # -- position, failures, replays --

    def pending(self, endpoints: list[Endpoint], tails: dict[str, LogBounds | None] | None = None) -> dict[str, int]:
        """Events each endpoint has still to handle (deliver, filter out or give up), retained in the
        log: exact per lane whose cursor's ordinal is known, else an upper bound (after a replay, until
        the lane reaches the end of its bucket's log)."""
        tails = self.tails() if tails is None else tails
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            for endpoint in endpoints:
                pipe.hgetall(self._keys(endpoint.id)["cursor"])
            flats = pipe.execute()
        return {
            e.id: sum(t.pending_after(LaneCursor.parse(flat.get(b))) for b, t in tails.items() if t)
            for e, flat in zip(endpoints, flats, strict=True)
        }

    def retrying(self, endpoint_id: str) -> dict[str, LaneRetry]:
        """The lanes whose head event has failed and waits for its next attempt: bucket -> state
        (a retry noted against a cursor since moved is stale: left out, as the worker ignores it)."""
        k = self._keys(endpoint_id)
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(k["retry"])
            pipe.hgetall(k["cursor"])
            flat, cursors = pipe.execute()
        found = {b: LaneRetry.parse(v) for b, v in sorted(flat.items())}
        return {b: r for b, r in found.items() if r.applies(LaneCursor.parse(cursors.get(b)))}

    def dead_letters(self, endpoint_id: str, count: int | None = None) -> list[DeadLetter]:
        """The endpoint's dead letters, newest first (at most `count`)."""
        with self._errors():
            entries = self.redis.xrevrange(self._keys(endpoint_id)["dead"], "+", "-", count=count)
        return [DeadLetter.from_stream(entry_id, fields) for entry_id, fields in entries]

    def dead_count(self, endpoint_id: str) -> int:
        with self._errors():
            return self.redis.xlen(self._keys(endpoint_id)["dead"])

    def drop_dead_letters(self, endpoint_id: str, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        with self._errors():
            return self.redis.xdel(self._keys(endpoint_id)["dead"], *entry_ids)

    def stats(self, endpoint_id: str) -> WebhookStats:
        with self._errors():
            return WebhookStats.from_hash(self.redis.hgetall(self._keys(endpoint_id)["stats"]))

    def replay_from(self, endpoint_id: str, start: str) -> None:
        """Move the endpoint's cursor back (or forward) to `start` (as in `add`): the worker delivers
        from there again, in order. Events delivered before come again with their own webhook-id."""
        self.endpoint(endpoint_id)
        with _about("start"):
            cursor = self._start_cursor(start)
        k = self._keys(endpoint_id)
        with self._errors():
            # One MULTI (both keys share the endpoint's hash tag: one slot): a lane's step
            # (webhook_lane.lua) runs wholly before it, and its retry is deleted, or wholly after, and
            # finds the cursor moved and reads again. As two commands, a retry noted between them
            # would be for the old head (the worker ignores such a retry too: LaneRetry.applies).
            # One HSET of all 256 lanes: a worker sees the old cursor or the new one, never a mix.
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(k["retry"])
            pipe.hset(k["cursor"], mapping=cursor)
            pipe.execute()

    def event(self, event_id: str) -> Event | None:
        """One event of the log by its id, or None (unknown, or trimmed by the retention)."""
        parsed = parse_event_id(event_id)
        if parsed is None:
            raise InvalidRequest(f"{event_id!r} is not an event id (<bucket>-<ms>-<n>)")
        bucket, stream_id = parsed
        with self._errors():
            found = self.redis.xrange(self.keys.events(bucket), stream_id, stream_id)
        return Event.from_stream(bucket, *found[0]) if found else None

    def deliver_now(self, endpoint: Endpoint, event: Event) -> Attempt:
        """One attempt, from this process (an operator's replay of a single event): no retry, the
        worker's cursor untouched. The secrets are read here, for this signature only."""
        names = Endpoint.PUBLIC_FIELDS + Endpoint.SECRET_FIELDS
        with self._errors():
            signing = Endpoint.from_values(
                endpoint.id, names, self.redis.hmget(self._keys(endpoint.id)["endpoint"], names)
            )
        if signing is None or not signing.secret:
            raise NotFound(f"no webhook endpoint {endpoint.id}")
        body = body_of(event)
        headers = signed_headers(Signer(signing), event.id, body)
        sender = Sender(self.settings.webhook_timeout_seconds)
        try:
            return sender.post(endpoint.url, body, headers)
        finally:
            sender.close()
