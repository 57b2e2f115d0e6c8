"""The event log: every bucket's stream of events, read as one ordered log, and its retention.

ledger.lua appends an event to the card's bucket stream (``gc:{b<bb>}:events``) in the same
call as every money movement, status change, creation and import, so the log is exactly as
durable as the balances it describes, and in the same slot. An event's id is
``<bucket>-<stream id>``: stable and unique. Within a bucket, events are in order; across
buckets, a reader merges them by time (the stream ids' milliseconds, on Redis's clock).

A reader keeps a **cursor**: per bucket, the last stream id it has handled. Reading from a
cursor returns every later event (at-least-once: a reader that stops before saving its cursor
reads the same events again, so consumers de-duplicate by event id). A named consumer's cursor is
kept in Redis, ``gc:consumers:<name>`` (hash: bucket -> last id), by `save_cursor`.

Retention (EVENT_RETENTION_DAYS, EVENT_RETENTION_MAX) trims old events in the sweeper's pass.
Verify replays a card from its first retained event, so trimming never makes a sound card look
broken, but a consumer that falls behind the retention loses events: keep the retention longer
than any consumer may be down.
"""

from __future__ import annotations

import heapq

import redis

from .errors import ProviderError
from .keys import Keys, buckets
from .records import Event, LogBounds

PAGE = 1000
# Events read per bucket per round trip by `walk`, which keeps one page of each of the 256 buckets in
# memory while it merges them: 256 x 100 events (about 35 MB of Python objects) at most, whatever the
# size of the log, where pages of PAGE would hold up to 256,000 (about 350 MB). Measured with
# bench/issuance.py (export's peak RSS); a page more per 100 events costs one short XRANGE.
WALK_PAGE = 100


def _stream_key(event: Event) -> tuple[int, int, str]:
    ms, _, n = event.stream_id.partition("-")
    return int(ms), int(n), event.bucket


def card_events(
    client: redis.Redis, keys: Keys, card_id: str, *, after: str = "-", count: int | None = None, newest: bool = False
) -> list[Event]:
    """A card's events, oldest first: from just after stream id `after`, at most `count`; or with
    `newest` the last `count`. The bucket's log is read page by page and filtered (an operator's
    tool: its cost grows with the bucket's events)."""
    bucket, key = card_id[:2], keys.events(card_id[:2])
    found: list[Event] = []
    if newest:
        end = "+"
        while (count is None or len(found) < count) and (page := client.xrevrange(key, end, "-", count=PAGE)):
            found += [e for e in _events(bucket, page) if e.card_id == card_id]
            end = f"({page[-1][0]}"
        return found[:count][::-1] if count is not None else found[::-1]
    start = "-" if after == "-" else f"({after}"
    while (count is None or len(found) < count) and (page := client.xrange(key, start, "+", count=PAGE)):
        found += [e for e in _events(bucket, page) if e.card_id == card_id]
        start = f"({page[-1][0]}"
    return found[:count] if count is not None else found


def walk(client: redis.Redis, keys: Keys, start_ms: int | None = None, end_ms: int | None = None):
    """Every event of every bucket from `start_ms` (inclusive) to `end_ms` (exclusive), merged in time
    order; each bucket is read a page at a time, so memory stays at one page per bucket."""
    start = f"{start_ms}-0" if start_ms is not None else "-"
    end = f"({end_ms}-0" if end_ms is not None else "+"
    logs = (bucket_log(client, keys, b, start, end, count=WALK_PAGE) for b in buckets())
    return heapq.merge(*logs, key=_stream_key)


def bucket_log(client: redis.Redis, keys: Keys, bucket: str, start: str = "-", end: str = "+", *, count: int = PAGE):
    """One bucket's events from stream id `start` to `end` (XRANGE bounds), oldest first, `count` at a time."""
    key = keys.events(bucket)
    while page := client.xrange(key, start, end, count=count):
        start = f"({page[-1][0]}"
        events = _events(bucket, page)
        del page  # the raw reply is as big as its events: keep only one of them while they are yielded
        yield from events


def log_bounds(client: redis.Redis, keys: Keys, bucket_names: list[str]) -> dict[str, LogBounds]:
    """What each bucket's log still holds (records.LogBounds), in one round trip. The buckets must have
    a log (verify.used_buckets: a bucket's first card writes its log and its books)."""
    pipe = client.pipeline(transaction=False)
    for b in bucket_names:
        pipe.xinfo_stream(keys.events(b))
    return {b: LogBounds.from_xinfo(r) for b, r in zip(bucket_names, pipe.execute(), strict=True)}


def books_at_log_position(
    client: redis.Redis, keys: Keys, bucket_names: list[str], tries: int = 10
) -> dict[str, tuple[dict[str, str], LogBounds]]:
    """Each bucket's books hash with its log's bounds, the books being exactly the sum of every event
    up to `LogBounds.last_id`.

    A call that changes a bucket's books appends its event in the same call, so books read between
    two reads of the log's last id that agree reflect exactly the events up to that id. One round
    trip reads every bucket so; a bucket written in between is read again (at most `tries` rounds).
    """
    found: dict[str, tuple[dict[str, str], LogBounds]] = {}
    pending = list(bucket_names)
    for _ in range(tries):
        pipe = client.pipeline(transaction=False)
        for b in pending:
            pipe.xinfo_stream(keys.events(b))
            pipe.hgetall(keys.books(b))
            pipe.xinfo_stream(keys.events(b))
        replies = pipe.execute()
        changed = []
        for i, b in enumerate(pending):
            before, books, after = (LogBounds.from_xinfo(replies[3 * i]), replies[3 * i + 1],
                                    LogBounds.from_xinfo(replies[3 * i + 2]))  # fmt: skip
            if before.last_id == after.last_id:
                found[b] = (books, after)
            else:
                changed.append(b)
        if not changed:
            return found
        pending = changed
    raise ProviderError(f"bucket(s) {', '.join(pending)} changed during each of {tries} reads of their books: retry")


def _events(bucket: str, page) -> list[Event]:
    return [Event.from_stream(bucket, stream_id, fields) for stream_id, fields in page]


def read_all(client: redis.Redis, keys: Keys, cursor: dict[str, str], count: int = PAGE) -> list[Event]:
    """The events after `cursor` (bucket -> last stream id handled; a missing bucket is read from
    its start, or from the cursor's "*" entry: "<ms>-0" to start at a time), at most `count` per
    bucket, merged by time. One round trip for all buckets."""
    everyone = buckets()
    default = cursor.get("*", "-")
    pipe = client.pipeline(transaction=False)
    for b in everyone:
        last = cursor.get(b)
        pipe.xrange(keys.events(b), f"({last}" if last else default, "+", count=count)
    pages = pipe.execute()
    return list(heapq.merge(*(_events(b, p) for b, p in zip(everyone, pages, strict=True)), key=_stream_key))


def advance(cursor: dict[str, str], events: list[Event]) -> dict[str, str]:
    """The cursor after handling `events`."""
    moved = dict(cursor)
    for event in events:
        moved[event.bucket] = event.stream_id
    return moved


def load_cursor(client: redis.Redis, keys: Keys, name: str) -> dict[str, str]:
    return client.hgetall(keys.consumer(name))


def save_cursor(client: redis.Redis, keys: Keys, name: str, cursor: dict[str, str]) -> None:
    if cursor:
        client.hset(keys.consumer(name), mapping=cursor)


def trim(client: redis.Redis, keys: Keys, *, now_ms: int, max_age_days: int, max_per_bucket: int) -> int:
    """Apply retention to every bucket's log (0 = no limit of that kind). Returns events removed."""
    if not (max_age_days or max_per_bucket):
        return 0
    pipe = client.pipeline(transaction=False)
    for b in buckets():
        if max_age_days:
            pipe.xtrim(keys.events(b), minid=f"{now_ms - max_age_days * 86_400_000}-0", approximate=False)
        if max_per_bucket:
            pipe.xtrim(keys.events(b), maxlen=max_per_bucket, approximate=False)
    return sum(pipe.execute())
