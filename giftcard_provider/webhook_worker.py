"""The webhook worker: the Procfile's ``worker`` process (``flask cards webhooks work``).

Each endpoint has 256 **lanes**, one per bucket of the event log. A lane's events (so each card's)
are delivered one at a time, in order: the next is sent only once the previous one was answered
2xx, or given up (dead-lettered) after WEBHOOK_MAX_ATTEMPTS. Lanes are independent, so a failing
event holds back its own lane only, and a pool of threads delivers many lanes at once.

Several workers may run: a lane is delivered only by the worker holding its **lease**
(webhook_lease.lua), renewed every third of its length; the live workers (a heartbeat each) split
the lanes evenly, and the lanes of a worker that stops renewing (killed, stalled, partitioned)
pass to another once its leases lapse. Every step of a lane (delivered, filtered out, failed,
dead-lettered) is recorded by webhook_lane.lua only if the worker still holds the lease and the
cursor is still where it read it, so a worker that lost its lane, or a lane an operator replayed,
changes nothing.

Delivery is at least once: a worker killed after the receiver got an event but before its step was
recorded sends that event again (the same webhook-id) when the lane resumes. A worker that stalls
longer than the lease while a POST is in flight can deliver that one event after its successor has
sent it, and after events that follow it: receivers de-duplicate by webhook-id, and order by the
card's `seq` where it matters.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from .errors import NotFound, ProviderError
from .keys import BUCKETS, buckets
from .ledger_calls import translated_errors
from .records import DeadLetter, Endpoint, Event, LaneCursor, LaneRetry, LogBounds
from .webhooks import LATENCY_BOUNDS, Attempt, Sender, Signer, Webhooks, body_of, predecessor, signed_headers

log = logging.getLogger("giftcard_provider.webhooks")

_LUA = Path(__file__).parent / "lua"
LEASE_SCRIPT = (_LUA / "webhook_lease.lua").read_text()
LANE_SCRIPT = (_LUA / "webhook_lane.lua").read_text()
ALL_BUCKETS = buckets()
_BOUNDS_MS = ",".join(str(round(b * 1000)) for b in LATENCY_BOUNDS)


def backoff(attempts: int, base: float, cap: float, rng=random) -> float:
    """Seconds before attempt `attempts` + 1: base * 2**(attempts - 1), capped, with jitter (a random
    half of it is taken off, so lanes that failed together do not come back together)."""
    delay = min(cap, base * 2 ** min(attempts - 1, 60))
    return delay * rng.uniform(0.5, 1.0)


def ordinals(events: list[Event], cursor: LaneCursor | None, tail: LogBounds) -> list[int | None]:
    """Each event's ordinal in its bucket's stream (see LogBounds), where it can be known: counted
    back from the stream's last entry when the read reached it, else forward from the stream's first
    retained entry when the read started there (the cursor was older than the retention), else
    forward from the cursor's own ordinal."""
    n = len(events)
    if not n:
        return []
    if events[-1].stream_id == tail.last_id:
        return [tail.entries_added - (n - 1 - i) for i in range(n)]
    if events[0].stream_id == tail.first_id:
        first = tail.entries_added - tail.length + 1
        return [first + i for i in range(n)]
    if cursor is not None and cursor.ordinal is not None:
        return [cursor.ordinal + 1 + i for i in range(n)]
    return [None] * n


class Worker:
    """Delivers every endpoint's lanes that this worker holds, until `stop` is set."""

    def __init__(
        self,
        store,
        *,
        threads: int = 8,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.25,
        batch: int = 100,
        worker_id: str | None = None,
    ):
        self.hooks = Webhooks(store)
        self.store = store
        self.settings = store.settings
        self.keys = store.keys
        self.id = worker_id or f"{os.environ.get('DYNO') or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.threads = threads
        self.lease_ms = round(lease_seconds * 1000)
        self.poll = poll_seconds
        self.batch = batch
        self.sender = Sender(self.settings.webhook_timeout_seconds)
        self.stop = threading.Event()
        self.offset = random.randrange(BUCKETS)  # where this worker starts taking free lanes
        self.endpoints: dict[str, Endpoint] = {}
        self.owned: dict[str, frozenset[str]] = {}
        self._signers: dict[str, Signer] = {}
        self._busy: set[tuple[str, str]] = set()
        self._busy_lock = threading.Lock()
        self._renewed = -math.inf
        self._scripts = None
        self.pool: ThreadPoolExecutor | None = None

    # -- the loop --

    def run(self, *, until=None) -> None:
        """Cycle until `stop` is set (or until() is true between cycles); then let the lanes in flight
        finish their current step and give every lease back, so another worker takes over at once."""
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhook")
        log.info("webhook worker %s started", self.id, extra={"fields": {"worker": self.id}})
        try:
            while not self.stop.is_set() and not (until and until()):
                try:
                    self.cycle()
                except (ProviderError, redis.RedisError) as exc:
                    log.warning("webhook worker cycle failed, retrying: %s", exc)
                    self._renewed = -math.inf  # the leases may have lapsed meanwhile: take stock again
                self.stop.wait(self.poll)
        finally:
            self.stop.set()
            self.pool.shutdown(wait=True)
            self.sender.close()
            self._give_back()
            log.info("webhook worker %s stopped", self.id, extra={"fields": {"worker": self.id}})

    def cycle(self) -> None:
        self._refresh_endpoints()
        if time.monotonic() - self._renewed >= self.lease_ms / 3000:
            self._renew()
        self._dispatch()

    # -- configuration and leases --

    @property
    def redis(self):
        return self.store.redis

    def _script(self, which: str):
        if self._scripts is None:
            client = self.redis
            self._scripts = {"lease": client.register_script(LEASE_SCRIPT), "lane": client.register_script(LANE_SCRIPT)}
        return self._scripts[which]

    def _refresh_endpoints(self) -> None:
        current = {e.id: e for e in self.hooks.endpoints(with_secret=True)}  # it signs
        if current.keys() != self.endpoints.keys() or any(
            current[i].paused != self.endpoints[i].paused for i in current
        ):
            self._renewed = -math.inf  # an endpoint came, went, paused or resumed: share the lanes again now
        self.endpoints = current

    def _renew(self) -> None:
        # Redis's clock (the scripts' clock: store.now_ms, its own round trip, as a cluster pipeline
        # refuses TIME). On a cluster it is one node's clock and the scripts run on others': their
        # skew (ms, with NTP) shifts a retry or a heartbeat by as much, never more.
        with translated_errors():
            now_ms = self.store.now_ms()
            pipe = self.redis.pipeline(transaction=False)
            workers = self.keys.webhook_workers()
            pipe.zadd(workers, {self.id: now_ms + self.lease_ms})
            pipe.zremrangebyscore(workers, "-inf", now_ms)
            pipe.zcard(workers)
            live = max(1, pipe.execute()[-1])
            quota = math.ceil(BUCKETS / live)
            owned = {}
            for endpoint in self.endpoints.values():
                owned[endpoint.id] = frozenset(self._lease(endpoint.id, 0 if endpoint.paused else quota))
        self.owned = owned
        self._renewed = time.monotonic()

    def _lease(self, endpoint_id: str, quota: int) -> list[str]:
        k = self.keys.webhook(endpoint_id)
        with self._busy_lock:
            busy = sorted(b for e, b in self._busy if e == endpoint_id)
        args = [self.id, self.lease_ms, quota, self.offset, *busy]
        return self._script("lease")(keys=[k["leases"], k["endpoint"]], args=args)

    def _give_back(self) -> None:
        try:
            for endpoint_id in self.endpoints:
                self._lease(endpoint_id, 0)
            self.redis.zrem(self.keys.webhook_workers(), self.id)
        except (ProviderError, redis.RedisError) as exc:  # they lapse on their own
            log.warning("could not give the webhook leases back (they lapse in %d ms): %s", self.lease_ms, exc)

    # -- finding work --

    def _dispatch(self) -> None:
        """Redis's time, then one round trip reads every bucket's log tail and each endpoint's cursor
        and retry state; every held lane with events past its cursor, and no retry waiting, is handed
        to the pool (which reads the lane again before it delivers: Lane.run)."""
        active = [e for e in self.endpoints.values() if not e.paused and self.owned.get(e.id)]
        if not active:
            return
        with translated_errors():
            now_ms = self.store.now_ms()
            pipe = self.redis.pipeline(transaction=False)
            for b in ALL_BUCKETS:
                pipe.xinfo_stream(self.keys.events(b))
            for endpoint in active:
                k = self.keys.webhook(endpoint.id)
                pipe.hgetall(k["cursor"])
                pipe.hgetall(k["retry"])
            rest = pipe.execute(raise_on_error=False)
            for reply in rest[BUCKETS:]:  # any failure stops the cycle here
                if isinstance(reply, Exception):
                    raise reply
            # None for a bucket with no log yet; any other XINFO error (a node down) is raised
            tails = {b: LogBounds.from_info(r) for b, r in zip(ALL_BUCKETS, rest[:BUCKETS], strict=True)}
        states = rest[BUCKETS:]
        for i, endpoint in enumerate(active):
            cursors, retries = states[2 * i], states[2 * i + 1]
            for bucket in self.owned.get(endpoint.id, ()):
                tail = tails[bucket]
                if tail is None or tail.length == 0:
                    continue
                raw = cursors.get(bucket, "")
                cursor = LaneCursor.parse(raw)
                if cursor is not None and tail.handled(cursor):
                    continue
                retry = LaneRetry.parse(retries.get(bucket))
                if retry is not None and retry.applies(cursor) and retry.next_ms > now_ms:
                    continue
                self._submit(endpoint.id, bucket, tail)

    def _submit(self, endpoint_id: str, bucket: str, tail: LogBounds) -> None:
        lane = (endpoint_id, bucket)
        with self._busy_lock:
            if lane in self._busy:
                return
            self._busy.add(lane)
        self.pool.submit(self._run_lane, endpoint_id, bucket, tail)

    def _run_lane(self, endpoint_id: str, bucket: str, tail: LogBounds) -> None:
        try:
            Lane(self, endpoint_id, bucket).run(tail)
        except (ProviderError, redis.RedisError) as exc:
            log.warning("webhook lane %s/%s stopped by Redis, resumes next cycle: %s", endpoint_id, bucket, exc)
        except Exception:
            log.exception("webhook lane %s/%s failed; it resumes next cycle", endpoint_id, bucket)
        finally:
            with self._busy_lock:
                self._busy.discard((endpoint_id, bucket))

    def signer(self, endpoint: Endpoint) -> Signer:
        """The endpoint's Signer, made again when its secrets change (a rotation: the worker reads the
        endpoints every cycle)."""
        cached = self._signers.get(endpoint.id)
        if cached is None or cached.key != (endpoint.secret, endpoint.previous_secret, endpoint.previous_until_ms):
            cached = self._signers[endpoint.id] = Signer(endpoint)
        return cached


class Lane:
    """One pass over one lane: read its cursor and events, deliver them in order, record each step."""

    def __init__(self, worker: Worker, endpoint_id: str, bucket: str):
        self.w = worker
        self.endpoint_id = endpoint_id
        self.bucket = bucket
        self.k = worker.keys.webhook(endpoint_id)
        self.expected = ""  # the cursor as stored: webhook_lane.lua compares it
        self.cursor: LaneCursor | None = None
        self.retry: LaneRetry | None = None

    def run(self, tail: LogBounds) -> None:
        """The dispatcher's reading is only a hint (a lane that just finished may have moved since):
        the lane reads its own cursor and retry state first, then its events up to `tail`."""
        w = self.w
        with translated_errors():
            pipe = w.redis.pipeline(transaction=False)
            pipe.hget(self.k["cursor"], self.bucket)
            pipe.hget(self.k["retry"], self.bucket)
            raw, retry = pipe.execute()
            self.expected, self.cursor, self.retry = raw or "", LaneCursor.parse(raw), LaneRetry.parse(retry)
            if self.retry is not None and not self.retry.applies(self.cursor):
                self.retry = None  # noted against a cursor since moved (a replay): not this head's
            if self.cursor is not None and tail.handled(self.cursor):
                return
            if self.retry is not None and self.retry.next_ms > w.store.now_ms():
                return
        start = f"({self.cursor.stream_id}" if self.cursor else "-"
        with translated_errors():
            page = w.redis.xrange(w.keys.events(self.bucket), start, tail.last_id, count=w.batch)
        events = [Event.from_stream(self.bucket, stream_id, fields) for stream_id, fields in page]
        numbers = ordinals(events, self.cursor, tail)
        if not self._pass_trimmed(events, numbers):
            return
        if self.retry is not None and (not events or events[0].stream_id != self.retry.stream_id):
            self.retry = None  # not the event right after the cursor: its attempts are not this one's
        skipped = None
        for event, ordinal in zip(events, numbers, strict=True):
            endpoint = w.endpoints.get(self.endpoint_id)
            if w.stop.is_set() or endpoint is None or endpoint.paused:
                break
            if self.bucket not in w.owned.get(endpoint.id, ()):
                break  # given back to another worker meanwhile
            position = LaneCursor(event.stream_id, ordinal).pack()
            if not endpoint.wants(event.type):
                skipped = position
                continue
            if skipped is not None:
                if not self._step("skipped", skipped):
                    return
                skipped = None
            if not self._deliver(endpoint, event, position):
                return
        if skipped is not None:
            self._step("skipped", skipped)

    def _pass_trimmed(self, events: list[Event], numbers: list[int | None]) -> bool:
        """Events the retention trimmed after the cursor, before this lane had them, are lost for the
        endpoint: when the count is known (the cursor's ordinal and the first event's), move the
        cursor to just before the first retained event, count them ("trimmed", /metrics) and warn,
        once. False: the step was not recorded (the lane is no longer ours, or moved)."""
        if not events or self.cursor is None or self.cursor.ordinal is None or numbers[0] is None:
            return True
        lost = numbers[0] - self.cursor.ordinal - 1
        if lost <= 0:
            return True
        before_first = LaneCursor(predecessor(events[0].stream_id), numbers[0] - 1).pack()
        if not self._step("skipped", before_first, str(lost)):
            return False
        log.warning(
            "webhook events trimmed before delivery: %d event(s) of bucket %s never reach %s",
            lost, self.bucket, self.endpoint_id,
            extra={"fields": {"endpoint": self.endpoint_id, "bucket": self.bucket, "trimmed": lost}},
        )  # fmt: skip
        return True

    def _deliver(self, endpoint: Endpoint, event: Event, position: str) -> bool:
        """Send one event; record the outcome. False: the lane stops here (failed, or no longer ours)."""
        w = self.w
        body = body_of(event)
        attempt = w.sender.post(endpoint.url, body, signed_headers(w.signer(endpoint), event.id, body))
        if attempt.ok:
            log.debug("delivered %s to %s in %.3f s", event.id, endpoint.id, attempt.seconds)
            return self._step("delivered", position, str(event.at_ms), _BOUNDS_MS)
        before = self.retry.attempts if self.retry and self.retry.stream_id == event.stream_id else 0
        attempts = before + 1
        fields = {"endpoint": endpoint.id, "event": event.id, "attempts": attempts, "error": attempt.error}
        if attempt.kind == "gone":
            # 410: the receiver wants no more (the specification: disable the endpoint). Paused, not
            # removed: the event stays at the head of its lane for when an operator resumes.
            try:
                w.hooks.set_paused(endpoint.id, True, f"the receiver answered 410 Gone to {event.id}")
            except NotFound:
                return False  # removed meanwhile: nothing to pause, and the lane is no longer ours
            log.error("webhook endpoint %s paused: HTTP 410 Gone", endpoint.id, extra={"fields": fields})
        elif attempts >= w.settings.webhook_max_attempts:
            log.error("webhook event dead-lettered", extra={"fields": fields})
            return self._step("dead", position, attempt.kind, *DeadLetter.fields(event, attempts, attempt.error))
        log.warning("webhook delivery failed", extra={"fields": fields})
        delay = self._delay(attempts, attempt)
        self._step("retry", f"{event.stream_id}|{attempts}", attempt.kind, str(round(delay * 1000)), attempt.error)
        return False

    def _delay(self, attempts: int, attempt: Attempt) -> float:
        s = self.w.settings
        if attempt.retry_after is not None:
            return min(attempt.retry_after, s.webhook_retry_max_seconds)
        return backoff(attempts, s.webhook_retry_base_seconds, s.webhook_retry_max_seconds)

    def _step(self, outcome: str, *args: str) -> bool:
        """webhook_lane.lua: True if recorded (the cursor moved, or the retry was noted)."""
        k = self.k
        keys = [k["cursor"], k["leases"], k["retry"], k["stats"], k["dead"]]
        with translated_errors():
            reply = self.w._script("lane")(keys=keys, args=[self.w.id, self.bucket, self.expected, outcome, *args])
        if reply[0] != "ok":
            log.info("webhook lane %s/%s: %s, left to its next reading", self.endpoint_id, self.bucket, reply[0])
            return False
        if outcome != "retry":
            self.expected = args[0]
            self.retry = None
        return True
