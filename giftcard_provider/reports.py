"""Finance reports: what the ledger owes (now, and at a past time), breakage, cards about to expire,
and activity per day and kind.

The pure functions here turn records (records.py: Books, Card, Event, LogBounds) into report rows,
in integer minor units; the walks read those records through LedgerStore, never the keyspace:
the books (one round trip), the buckets' card lists and cards (pipelined batches), and the
buckets' event logs (a page at a time, one bucket after another, so memory stays at one page
whatever the store's size). `flask cards report` (cli_reports.py) renders the rows.

A past liability is the books now minus what every event since then did, bucket by bucket: the
books and the position in the log they correspond to are read together (events.py:
books_at_log_position), and only the events after the asked time are read, so the cost grows with
the activity since then, not with the history. That needs every event since then: retention
(EVENT_RETENTION_DAYS / EVENT_RETENTION_MAX) trims the oldest events, and a report that would need a
trimmed event is refused (RetentionGap) rather than answered with a wrong figure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.common import iso_ms

from .errors import InvalidRequest, ProviderError
from .keys import BUCKETS
from .records import EVENT_DELTAS, Books, Card, Event, LogBounds, stream_order

DAY_MS = 86_400_000
CARD_BATCH = 500  # cards read per pipeline

Progress = Callable[[int], None]


def _no_progress(_: int) -> None:
    pass


class RetentionGap(ProviderError):
    """The event log no longer holds every event the report needs."""

    code = "retention_gap"

    def __init__(self, start_ms: int, complete_from: dict[str, int | None]):
        known = [ms for ms in complete_from.values() if ms is not None]
        buckets = ", ".join(sorted(complete_from))
        if len(known) == len(complete_from):
            message = (
                f"the event log no longer holds every event since {iso_ms(start_ms)}: retention "
                f"(EVENT_RETENTION_DAYS / EVENT_RETENTION_MAX) trimmed the log of bucket(s) {buckets}; "
                f"the earliest time this report can start from is {iso_ms(max(known))}"
            )
        else:
            message = (
                f"cannot tell whether the event log still holds every event since {iso_ms(start_ms)}: Redis does "
                f"not say what was trimmed from the log of bucket(s) {buckets} (XINFO STREAM has no entries-added: "
                "Redis 7 is needed)"
            )
        super().__init__(message)
        self.complete_from = complete_from


def check_complete(start_ms: int, bounds: dict[str, LogBounds]) -> None:
    """Refuse (RetentionGap) unless every bucket's log holds every event from `start_ms` on."""
    gaps = {
        b: lb.complete_from_ms
        for b, lb in bounds.items()
        if lb.complete_from_ms is None or lb.complete_from_ms > start_ms
    }
    if gaps:
        raise RetentionGap(start_ms, gaps)


def utc_day(ms: int) -> str:
    return _day(ms // DAY_MS)


@functools.lru_cache(maxsize=4096)
def _day(index: int) -> str:
    """The date of the index-th day since 1970-01-01 (UTC days are 86,400,000 ms: no leap seconds in
    epoch time). Cached: an activity report asks for it once per event, for a few days."""
    return datetime.fromtimestamp(index * 86_400, UTC).strftime("%Y-%m-%d")


def utc_month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


# -- outstanding liability -------------------------------------------------------------------------


@dataclass
class Liability:
    """What the ledger owes in one currency: the cards' available and held balances."""

    currency: str
    cards: int = 0
    available: int = 0
    held: int = 0

    @property
    def liability(self) -> int:
        return self.available + self.held

    @property
    def empty(self) -> bool:
        return not (self.cards or self.available or self.held)


@dataclass(frozen=True)
class LiabilityReport:
    as_of_ms: int
    source: str  # "books": read now; "events": the books, less every event since as_of_ms
    rows: list[Liability]
    events_read: int = 0


def liability_from_books(books: dict[str, Books]) -> list[Liability]:
    return [Liability(c, b.cards, b.available, b.held) for c, b in sorted(books.items())]


def liability_change(event: Event) -> tuple[int, int, int]:
    """What an event did to its currency's (cards, available, held)."""
    if event.type in EVENT_DELTAS:
        d_available, d_held = EVENT_DELTAS[event.type]
        return 0, d_available * event.amount, d_held * event.amount
    if event.type == "created":
        return 1, 0, 0
    if event.type == "discarded":  # a card withdrawn right after its creation: gone from the books' count
        return -1, 0, 0
    if event.type == "imported":  # a card moved from v1 arrives with its balances
        return 1, event.available, event.held
    if event.type == "status":
        return 0, 0, 0
    raise ProviderError(f"event {event.id} has a type this release does not know ({event.type!r}): cannot undo it")


def undo(totals: dict[str, Liability], events: Iterable[Event]) -> int:
    """Take what each event did back out of `totals` (per currency). Returns the events undone."""
    undone = 0
    for event in events:
        cards, available, held = liability_change(event)
        row = totals.setdefault(event.currency, Liability(event.currency))
        row.cards -= cards
        row.available -= available
        row.held -= held
        undone += 1
    return undone


def liability_now(store) -> LiabilityReport:
    """From the books: one round trip, whatever the number of cards. Dated by this machine's clock."""
    books = store.books()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return LiabilityReport(now_ms, "books", liability_from_books(books))


def liability_as_of(store, as_of_ms: int, progress: Progress = _no_progress) -> LiabilityReport:
    """The liability at `as_of_ms` (events at that millisecond and later are not counted): the books
    now, less what every event since did. Refused (RetentionGap) if retention trimmed an event that is
    needed, and (InvalidRequest) for a time in the future. `progress` advances by one per bucket, 256 in all."""
    now_ms = store.now_ms()
    if as_of_ms > now_ms:
        raise InvalidRequest(f"{iso_ms(as_of_ms)} is in the future (Redis's clock says {iso_ms(now_ms)})")
    snapshot = store.log_snapshot()
    check_complete(as_of_ms, {b: bounds for b, (_, bounds) in snapshot.items()})
    totals: dict[str, Liability] = {}
    for books, _ in snapshot.values():
        for row in liability_from_books(books):
            total = totals.setdefault(row.currency, Liability(row.currency))
            total.cards += row.cards
            total.available += row.available
            total.held += row.held
    progress(BUCKETS - len(snapshot))  # buckets that never held a card: nothing to read
    read = 0
    for bucket, (_, bounds) in sorted(snapshot.items()):
        if stream_order(bounds.last_id)[0] >= as_of_ms:
            read += undo(totals, store.bucket_events(bucket, as_of_ms, through=bounds.last_id))
        progress(1)
    # Retention may have trimmed while the logs were read: the figure stands only if nothing needed went.
    check_complete(as_of_ms, store.log_bounds(list(snapshot)))
    rows = [row for _, row in sorted(totals.items()) if not row.empty]
    return LiabilityReport(as_of_ms, "events", rows, read)


# -- every card ------------------------------------------------------------------------------------


def card_count(store) -> int:
    """How many cards the books count (one round trip): the length of a walk over every card."""
    return sum(b.cards for b in store.books().values())


def every_card(store, progress: Progress = _no_progress, batch: int = CARD_BATCH) -> Iterator[Card]:
    """Every card, bucket by bucket from the buckets' card lists, read `batch` at a time in one pipeline
    each. Each card is read at one instant; the walk as a whole is not one instant."""
    ids: list[str] = []
    for card_id in store.card_ids():
        ids.append(card_id)
        if len(ids) == batch:
            yield from store.read_cards(ids)
            progress(len(ids))
            ids = []
    if ids:
        yield from store.read_cards(ids)
        progress(len(ids))


@dataclass
class Breakage:
    """Money left on cards past their expiringDate, for one month of expiry and currency."""

    month: str  # YYYY-MM (UTC) of the cards' expiringDate
    currency: str
    cards: int = 0  # expired cards with money left
    balance: int = 0  # available: no longer spendable
    held: int = 0  # held by Debits taken before the expiry: may still be settled or given back


def breakage_rows(cards: Iterable[Card]) -> list[Breakage]:
    """Per month of expiry and currency, the cards past their expiringDate (on Redis's clock when
    each was read) that still hold money, oldest month first. A hold past its deadline counts as
    balance (records.Card.balance)."""
    rows: dict[tuple[str, str], Breakage] = {}
    for card in cards:
        if card.now_ms < card.expiring_ms or not (card.balance or card.held_now):
            continue
        month = utc_month(card.expiring_ms)
        row = rows.setdefault((month, card.currency), Breakage(month, card.currency))
        row.cards += 1
        row.balance += card.balance
        row.held += card.held_now
    return [rows[k] for k in sorted(rows)]


@dataclass(frozen=True)
class Expiring:
    """A card to remind its owner of: active, money to spend, expiring soon."""

    card_id: str
    profile_id: str
    relation_name: str
    currency: str
    exponent: int
    balance: int
    expiring_ms: int
    days_left: int  # whole days from the read to the expiry (0: within 24 hours)


def expiring_rows(cards: Iterable[Card], days: int) -> list[Expiring]:
    """The active cards with a balance whose expiringDate comes within `days` days of when each was
    read (not past yet), soonest first."""
    found = []
    for card in cards:
        left = card.expiring_ms - card.now_ms
        if card.status != "active" or card.balance <= 0 or not 0 < left <= days * DAY_MS:
            continue
        found.append(
            Expiring(
                card.id,
                card.profile_id,
                card.relation_name,
                card.currency,
                card.exponent,
                card.balance,
                card.expiring_ms,
                left // DAY_MS,
            )
        )
    return sorted(found, key=lambda e: (e.expiring_ms, e.card_id))


# -- activity --------------------------------------------------------------------------------------


@dataclass
class Activity:
    """One day's events of one kind (the event type) in one currency."""

    day: str  # YYYY-MM-DD, UTC
    currency: str
    kind: str
    count: int = 0
    amount: int = 0  # minor units (0 for events that move no money; settle_credit: the value settled)


class ActivityTally:
    """Events added one by one, counted per day, currency and kind: memory grows with those, not with
    the events."""

    def __init__(self):
        self._rows: dict[tuple[str, str, str], Activity] = {}
        self.events = 0

    def add(self, event: Event) -> None:
        key = (utc_day(event.at_ms), event.currency, event.type)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = Activity(*key)
        row.count += 1
        row.amount += event.amount
        self.events += 1

    def rows(self) -> list[Activity]:
        return [self._rows[k] for k in sorted(self._rows)]


@dataclass(frozen=True)
class ActivityReport:
    since_ms: int
    until_ms: int  # exclusive
    rows: list[Activity]
    events_read: int


def activity(store, since_ms: int, until_ms: int, progress: Progress = _no_progress) -> ActivityReport:
    """Every event from `since_ms` (inclusive) to `until_ms` (exclusive; at most Redis's time now),
    tallied per day, currency and kind. Refused (RetentionGap) if retention trimmed events of the
    period. `progress` advances by one per bucket, 256 in all."""
    until_ms = min(until_ms, store.now_ms())
    if since_ms >= until_ms:
        raise InvalidRequest(f"the period is empty: {iso_ms(since_ms)} is not before {iso_ms(until_ms)}")
    bounds = store.log_bounds()
    check_complete(since_ms, bounds)
    progress(BUCKETS - len(bounds))  # buckets that never held a card: nothing to read
    tally = ActivityTally()
    for bucket in sorted(bounds):
        for event in store.bucket_events(bucket, since_ms, end_ms=until_ms):
            tally.add(event)
        progress(1)
    check_complete(since_ms, store.log_bounds(list(bounds)))  # nothing of the period trimmed meanwhile
    return ActivityReport(since_ms, until_ms, tally.rows(), tally.events)
