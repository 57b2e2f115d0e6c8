"""The ledger's domain API: cards, transactions, settlements and cancellations, holds, events,
books, verify.

The HTTP blueprints and the CLI call the methods here and get typed records
(records.py) back; how a call reaches Redis (client, library, durability, 503s)
is ledger_calls.py. Every write is one FCALL (one round trip); reads are one
FCALL_RO or one pipeline, except search by code and by owner, which first read an index.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from redis.cluster import RedisCluster

from . import events, observability, verify
from .codes import CodeHasher, new_code, new_id, new_short_id, new_token, normalise
from .config import Settings
from .errors import InvalidRequest, NotFound, ProviderError, raise_for_reply
from .keys import Keys, buckets, is_valid_card_id, is_valid_id, owner_member
from .ledger_calls import LedgerCalls, layout_refusal, translated_errors
from .ledger_library import RELEASE, Library, installed_libraries, prune_libraries
from .money import Amount, exponent_of
from .records import (
    Books,
    Card,
    Event,
    LogBounds,
    Operation,
    Transaction,
    TransactionRead,
    card_fields,
    card_from_read,
    redis_time_ms,
)

# Hold entries the sweeper looks at per call on one bucket (it calls again while a call releases
# some): keeps each call short on a backlog. Money calls release every due hold of their card.
SWEEP_BATCH = 100

# A card's statuses; "inactive" is final (see gc_set_status).
STATUSES = ("active", "blocked", "inactive")


class LedgerStore:
    """The ledger on one Redis server or on a Redis Cluster; `client` None connects on first use."""

    def __init__(self, client: redis.Redis | RedisCluster | None, settings: Settings, library: Library = RELEASE):
        self.keys = Keys(settings.key_prefix)
        self.calls = LedgerCalls(client, settings, library, self.keys.layout())
        self.hasher = CodeHasher(settings.code_hash_secret)
        self.settings = settings
        self._hold_ms = str(round(settings.hold_lifetime_seconds * 1000))
        self._validity_ms = str(settings.card_validity_days * 86_400_000)

    # -- plumbing: ledger_calls.py --------------------------------------------

    @property
    def redis(self) -> redis.Redis | RedisCluster:
        return self.calls.redis

    @property
    def cluster(self) -> bool:
        return self.calls.cluster

    @property
    def library(self) -> Library:
        return self.calls.library

    @library.setter
    def library(self, library: Library) -> None:
        self.calls.library = library

    def load_library(self) -> None:
        """Load this release's ledger.lua (on every primary of a cluster: a function runs where its card's
        slot lives). Calls load it themselves when it is missing; this is for operators and tests."""
        with translated_errors():
            self.library.load(self.redis)

    def _fcall(self, name: str, keys: list[str], args: list[str], *, readonly: bool = False):
        reply = self.calls.call(name, keys, args, readonly=readonly)
        observability.ledger_reply(name, args, reply)  # metrics: authorized, refused (by code), settled...
        return reply

    def _with_library(self, run):
        return self.calls.run(run)

    def _pipeline(self, build) -> list:
        return self.calls.pipeline(build)

    def libraries(self, *, prune: bool = False) -> tuple[list[str], list[str]]:
        """(the ledger libraries loaded in Redis, those pruned): with `prune`, every other release's
        is deleted (ledger_library.prune_libraries says why that is safe). Loads this release's first."""
        with translated_errors():
            self.library.load(self.redis)
            pruned = prune_libraries(self.redis, keep=self.library) if prune else []
            return installed_libraries(self.redis), pruned

    def ping(self) -> bool:
        """True if Redis answers and runs this release's library on every primary (a PING alone would
        miss a lost library; a missing one is loaded here, as by any call)."""
        with translated_errors():
            return self.library.ping(self.redis) == {self.library.digest}

    # -- cards --------------------------------------------------------------

    def create_card(
        self,
        *,
        relation_name: str,
        caption: str,
        profile_id: str,
        currency: str,
        restricted_to_owner: bool,
        multiple_redemptions: bool,
        multiple_credits: bool,
        emission_ms: int | None,
        expiring_ms: int | None,
    ) -> tuple[Card, str]:
        """Create a card with balance 0. Returns it with its full redemption code, shown once.

        One call writes the card, its bucket's card list, its code index entry (the card's id
        starts with its code digest's two digits, so both live in one bucket), the books' card
        count and a "created" event. The owner index lives in another slot and is written after
        (an index never names a card that does not exist). If Redis fails in between, the caller
        gets a 503 and the card, never handed out, has no owner entry: `flask cards verify` lists it.
        """
        exponent = exponent_of(currency)
        for _ in range(3):  # a new id and code after a collision among 2**120 ids / 2**128 digests
            code, token = new_code(), new_token()
            code_digest = self.hasher.digest(code)
            card_id = code_digest[:2] + new_id()[2:]
            fields = card_fields(
                currency=currency.upper(),
                exponent=exponent,
                balance_limit=self.balance_limit(currency),
                profile_id=profile_id,
                relation_name=relation_name,
                caption=caption,
                restricted_to_owner=restricted_to_owner,
                multiple_redemptions=multiple_redemptions,
                multiple_credits=multiple_credits,
                code_last4=normalise(code)[-4:],
                token=token,
            )
            args = [
                card_id,
                code_digest,
                "" if emission_ms is None else str(emission_ms),
                "" if expiring_ms is None else str(expiring_ms),
                self._validity_ms,
                *(item for pair in fields.items() for item in pair),
            ]
            reply = self._fcall("gc_create_card", self._creation_keys(card_id, code_digest), args)
            if reply[0] == "invalid_window":
                raise InvalidRequest(
                    "expiringDate must be later than emissionDate and in the future",
                    errors={"json": {"expiringDate": ["Must be later than emissionDate and now."]}},
                )
            if reply[0] in ("card_exists", "code_taken"):
                continue
            raise_for_reply(reply)
            self._index_owner(card_id, code_digest, profile_id)
            created_ms, emission, expiring = reply[1:]
            fields.update({"from": emission, "to": expiring, "at": created_ms})
            fields.update(av="0", hd="0", st="active", seq="1")
            return Card.from_hash(card_id, fields, 0, int(created_ms)), code
        raise ProviderError("card creation collided three times; please retry")

    def _creation_keys(self, card_id: str, code_digest: str) -> list[str]:
        bucket = card_id[:2]
        k = self.keys
        return [k.card(card_id), k.card_list(card_id), k.code_index(code_digest), k.events(bucket), k.books(bucket)]

    def _index_owner(self, card_id: str, code_digest: str, profile_id: str) -> None:
        """Point the owner index at a new card.

        The same round trip reads the layout marker again: if a migration to another layout has
        finished since this process started, the new card would be left behind in the old layout,
        so it is withdrawn and the answer is a 503 (ledger_calls.layout_refusal).
        """
        owner_key, member = self.keys.owner_index(profile_id), owner_member(profile_id, card_id)
        _, layout = self._pipeline(lambda pipe: (pipe.zadd(owner_key, {member: 0}), pipe.get(self.calls.layout_key)))
        if layout is None:
            # The marker was lost since this process checked it (a flushed Redis: a v1 store was
            # refused then), and the card just written is v2: mark the store again.
            with translated_errors():
                layout = self.calls.mark_new_store(self.redis)
        refusal = layout_refusal(layout)
        if refusal is None:
            return
        self._pipeline(lambda pipe: pipe.zrem(owner_key, member))  # the index goes before the card it names
        self._fcall("gc_discard_card", self._creation_keys(card_id, code_digest), [card_id, code_digest])
        raise refusal

    def card(self, card_id: str) -> Card | None:
        if not is_valid_card_id(card_id):
            return None
        keys = [self.keys.card(card_id), self.keys.holds(card_id[:2])]
        return card_from_read(card_id, self._fcall("gc_read_card", keys, [], readonly=True))

    def find_by_code(self, code: str) -> Card | None:
        """The card a redemption code names, or None. Two round trips: index, then card."""
        return self.find_by_code_unless(code, [])[1]

    def find_by_code_unless(
        self, code: str, counters: list[tuple[str, str]], refused=any
    ) -> tuple[list[str | None], Card | None]:
        """Like find_by_code, but first reads `counters` ((hash key, field) pairs), with the code index
        in one round trip. If refused(their values) is true the card is not read (the throttle's
        decision: throttle.py).

        Returns (the counters' values, the card or None).
        """
        if not normalise(code):
            return [None] * len(counters), None
        digest = self.hasher.digest(code)

        def reads(pipe):
            for key, name in counters:  # one HGET each: on a cluster the hashes live in different slots
                pipe.hget(key, name)
            pipe.hget(self.keys.code_index(digest), digest)

        *values, card_id = self._pipeline(reads)
        if refused(values) or not card_id:
            return values, None
        return values, self.card(card_id)

    def cards_of(self, identities: set[str]) -> list[Card]:
        """Cards owned by any of the identities (client id, email), oldest first. Two round trips:
        the owner index shards (a lex range each), then the cards."""

        def ranges(pipe):
            for identity in sorted(identities):
                pipe.zrangebylex(self.keys.owner_index(identity), f"[{identity}|", f"({identity}}}")

        found = self._pipeline(ranges)
        ids = sorted(
            {
                card_id
                for identity, members in zip(sorted(identities), found, strict=True)
                for owner, _, card_id in (m.rpartition("|") for m in members)
                if owner == identity and is_valid_card_id(card_id)  # "a|b|<id>" is owner "a|b", not "a"
            }
        )
        return sorted(self.read_cards(ids), key=lambda c: c.created_ms)

    def read_cards(self, ids: list[str]) -> list[Card]:
        """The cards with these ids, in one round trip (a card gone meanwhile is left out)."""
        read_card = self.library.function("gc_read_card")
        replies = self._with_library(
            lambda: self._pipeline(
                lambda pipe: [pipe.fcall_ro(read_card, 2, self.keys.card(i), self.keys.holds(i[:2])) for i in ids]
            )
        )
        return [card for card in (card_from_read(i, r) for i, r in zip(ids, replies, strict=True)) if card]

    def set_status(self, card_id: str, status: str, reason: str) -> tuple[bool, str, int | None]:
        """Block, unblock or deactivate a card; moves no money. Returns (changed, previous status, changed ms)."""
        if status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        self._require_card(card_id, "gift card")
        reply = self._fcall("gc_set_status", self.keys.card_keys(card_id), [status, reason])
        if reply[0] == "unchanged":
            return False, reply[1], int(reply[2]) if reply[2] else None
        _, (previous, changed_ms) = raise_for_reply(reply)
        return True, previous, int(changed_ms)

    # -- events, books, walks over every card -----------------------------------

    def journal(self, card_id: str, *, after: str = "-", count: int | None = None) -> list[Event]:
        """A card's events oldest first, from just after stream id `after` (for paging), at most `count`.
        Read from its bucket's event log, filtered: an operator's tool, never a request path."""
        self._require_card(card_id, "gift card")
        with translated_errors():
            return events.card_events(self.redis, self.keys, card_id, after=after, count=count)

    def journal_tail(self, card_id: str, count: int) -> list[Event]:
        """The newest `count` events of a card, oldest first."""
        self._require_card(card_id, "gift card")
        with translated_errors():
            return events.card_events(self.redis, self.keys, card_id, count=count, newest=True)

    def events(self, since: dict[str, str] | None = None, count: int = 1000) -> list[Event]:
        """Events of every bucket after the cursor `since` (bucket -> last stream id seen; a bucket
        missing from it is read from its start), at most `count` per bucket, in time order."""
        with translated_errors():
            return events.read_all(self.redis, self.keys, since or {}, count)

    def event_cursor(self, consumer: str) -> dict[str, str]:
        """A named consumer's saved cursor (bucket -> last stream id), {} if it has none."""
        with translated_errors():
            return events.load_cursor(self.redis, self.keys, consumer)

    def save_event_cursor(self, consumer: str, cursor: dict[str, str]) -> None:
        with translated_errors():
            events.save_cursor(self.redis, self.keys, consumer, cursor)

    def all_events(self, start_ms: int | None = None, end_ms: int | None = None) -> Iterator[Event]:
        """Every event from `start_ms` to `end_ms` (exclusive), all buckets merged in time order."""
        with translated_errors():
            yield from events.walk(self.redis, self.keys, start_ms, end_ms)

    def books(self) -> dict[str, Books]:
        """The running totals per currency, summed over every bucket's books: one round trip, whatever
        the number of cards."""
        with translated_errors():
            return self._books(self.redis)

    def books_for_metrics(self) -> dict[str, Books]:
        """books(), for the /metrics scrape: no layout check and no error translation (the scrape
        counts a failure as its own, and answers without the gauges: observability.BooksCollector)."""
        return self._books(self.calls.raw)

    def _books(self, client) -> dict[str, Books]:
        pipe = client.pipeline(transaction=False)
        for bucket in buckets():
            pipe.hgetall(self.keys.books(bucket))
        return Books.total(pipe.execute())

    def card_ids(self) -> Iterator[str]:
        """Every card id, bucket by bucket, from the buckets' card lists (no walk of the keyspace)."""
        with translated_errors():
            yield from verify.card_ids(self.redis, self.keys)

    def now_ms(self) -> int:
        """Redis's clock (the one every event and card date is on), in epoch ms."""
        with translated_errors():
            return redis_time_ms(self.redis.time())

    def log_snapshot(self) -> dict[str, tuple[dict[str, Books], LogBounds]]:
        """Per bucket holding cards: its books per currency and what its event log holds, the books
        being exactly what the log's events up to `LogBounds.last_id` made them (events.py:
        books_at_log_position). Two round trips, plus one more whenever a bucket was written while read."""
        with translated_errors():
            used = verify.used_buckets(self.redis, self.keys)
            read = events.books_at_log_position(self.redis, self.keys, used)
        return {b: (Books.total([books]), bounds) for b, (books, bounds) in read.items()}

    def log_bounds(self, bucket_names: list[str] | None = None) -> dict[str, LogBounds]:
        """What each bucket's event log still holds (retention trims the oldest events), for the given
        buckets (each must hold cards) or every bucket holding cards."""
        with translated_errors():
            if bucket_names is None:
                bucket_names = verify.used_buckets(self.redis, self.keys)
            return events.log_bounds(self.redis, self.keys, bucket_names)

    def bucket_events(
        self, bucket: str, start_ms: int | None = None, *, end_ms: int | None = None, through: str | None = None
    ) -> Iterator[Event]:
        """One bucket's events from `start_ms` on (inclusive), before `end_ms`, or up to and including
        the stream id `through`; oldest first, a page at a time."""
        start = "-" if start_ms is None else f"{start_ms}-0"
        end = through if through is not None else (f"({end_ms}-0" if end_ms is not None else "+")
        with translated_errors():
            yield from events.bucket_log(self.redis, self.keys, bucket, start, end)

    def verify(self, card_id: str | None = None) -> verify.Report:
        """Recompute one card, or every card, its indexes and the books, from the event log (verify.py)."""
        with translated_errors():
            return verify.verify_store(self.redis, self.keys, card_id, self.library)

    def expire_all_holds(self) -> dict:
        """The sweeper's pass: release every hold past its deadline, bucket by bucket.

        One round trip counts every bucket's due holds; then gc_sweep_bucket runs on the buckets that
        have any, SWEEP_BATCH entries per call, until a call finds no more. The cost grows with the
        buckets and the due holds, never with the keyspace. Returns {"bucketsWithDueHolds",
        "holdsReleased", "errors": {bucket: message}, "moving": holds skipped because a layout
        migration is moving their card, "eventsTrimmed": by the event retention}; a bucket that
        cannot be swept is reported, not fatal.
        """
        now_ms = self.now_ms()
        all_buckets = buckets()
        counts = self._pipeline(lambda pipe: [pipe.zcount(self.keys.holds(b), "-inf", now_ms) for b in all_buckets])
        due = [b for b, n in zip(all_buckets, counts, strict=True) if n]
        released, moving, errors = 0, 0, {}
        for bucket in due:
            keys = [self.keys.holds(bucket), self.keys.events(bucket), self.keys.books(bucket)]
            try:
                while True:
                    reply = self._fcall("gc_sweep_bucket", keys, [str(SWEEP_BATCH)])
                    _, (freed, looked, skipped) = raise_for_reply(reply)
                    released += int(freed)
                    if not (int(freed) or (int(looked) == SWEEP_BATCH and not int(skipped))):
                        moving += int(skipped)
                        break
            except ProviderError as exc:
                errors[bucket] = exc.message
        s = self.settings
        with translated_errors():
            trimmed = events.trim(
                self.redis,
                self.keys,
                now_ms=now_ms,
                max_age_days=s.event_retention_days,
                max_per_bucket=s.event_retention_max,
            )
        return {
            "bucketsWithDueHolds": len(due),
            "holdsReleased": released,
            "errors": errors,
            "moving": moving,
            "eventsTrimmed": trimmed,
        }

    # -- money rules applied before the ledger ---------------------------------

    def check_ceiling(self, amount: Amount) -> Amount:
        """MAX_TRANSACTION_AMOUNT (major units), for every transaction, settlement and cancellation."""
        ceiling = self.settings.max_transaction_amount
        if amount.coefficient > ceiling * 10**amount.scale:
            raise InvalidRequest(
                f"value is above the maximum of {ceiling}",
                code="invalid_amount",
                errors={"json": {"value": [f"Must not exceed {ceiling}."]}},
            )
        return amount

    def balance_limit(self, currency: str) -> int:
        """MAX_CARD_BALANCE in the currency's minor units: what a card may hold (available + held)."""
        return Amount.from_decimal(self.settings.max_card_balance).to_minor(exponent_of(currency))

    # -- transactions -------------------------------------------------------

    def authorize(
        self,
        card_id: str,
        *,
        operation: str,
        amount: Amount,
        request_id: str,
        token: str,
        identities: set[str] = frozenset(),
        order_id: str = "",
        description: str = "",
    ) -> tuple[bool, str, int]:
        """Create a Debit (hold) or Credit (load). Returns (replayed, transaction id, date ms).

        A Debit must carry the card's redemption `token` and, on a card restricted to its
        owner, name the owner among `identities` (normalised: identity.py); the ledger checks both.
        """
        self.check_ceiling(amount)
        self._require_card(card_id, "gift card")
        args = [operation, *amount.ledger_args(), request_id, token, self._hold_ms, order_id, description]
        for _ in range(3):  # a new id after a collision among the card's 2**64 transaction ids
            reply = self._fcall(
                "gc_authorize", self.keys.card_keys(card_id), [new_short_id(), *args, *sorted(identities)]
            )
            if reply[0] != "id_taken":
                break
        replayed, (tx, date_ms) = raise_for_reply(reply)
        return replayed, tx, int(date_ms)

    def settle(self, card_id: str, tx_id: str, amount: Amount, request_id: str) -> tuple[bool, Operation, int]:
        """Capture part of what a Debit holds. Returns (replayed, record, currency exponent)."""
        return self._operate("gc_settle", card_id, tx_id, amount, request_id)

    def cancel(self, card_id: str, tx_id: str, amount: Amount, request_id: str) -> tuple[bool, Operation, int]:
        """Release what is held, then refund what was settled. Returns (replayed, record, exponent)."""
        return self._operate("gc_cancel", card_id, tx_id, amount, request_id)

    def _operate(self, function, card_id, tx_id, amount, request_id):
        self.check_ceiling(amount)
        self._require_card(card_id, "transaction")
        self._require_id(tx_id, "transaction")
        reply = self._fcall(
            function, self.keys.card_keys(card_id), [tx_id, new_short_id(), *amount.ledger_args(), request_id]
        )
        replayed, (oid, minor, date_ms, exponent) = raise_for_reply(reply, "transaction")
        return replayed, Operation(oid, int(minor), int(date_ms), request_id), int(exponent)

    def expire_holds(self, card_id: str, batch: int = SWEEP_BATCH) -> int:
        """Release at most `batch` of one card's holds past their deadline now. Returns how many."""
        self._require_card(card_id, "gift card")
        reply = self._fcall("gc_expire_holds", self.keys.card_keys(card_id), [str(batch)])
        return int(raise_for_reply(reply)[1][0])

    def transaction_ids(self, card_id: str, start: int, stop: int) -> tuple[list[str], int]:
        """A page of the card's transaction ids (oldest first; start/stop as LRANGE) and their total count."""
        self._require_card(card_id, "gift card")
        reply = self._fcall("gc_read_transactions", [self.keys.card(card_id)], [str(start), str(stop)], readonly=True)
        if reply[0] == "not_found":
            raise NotFound("gift card not found")
        _, total, *ids = reply
        return ids, int(total)

    def transaction(self, card_id: str, tx_id: str) -> tuple[Transaction, int]:
        """A transaction and the card's currency exponent."""
        read = self._read_transaction(card_id, tx_id)
        return read.transaction, read.exponent

    def settlements(self, card_id: str, tx_id: str) -> tuple[list[Operation], int]:
        """A transaction's settlements, oldest first, and the card's currency exponent."""
        read = self._read_transaction(card_id, tx_id).operation_list("s")
        return read.records, read.exponent

    def cancellations(self, card_id: str, tx_id: str) -> tuple[list[Operation], int]:
        """A transaction's cancellations, oldest first, and the card's currency exponent.

        A hold past its deadline that no money call has released yet is listed
        as the very record its release will write (see release_if_due in
        ledger.lua), so the Hub's sum never misses money that is already back.
        """
        read = self._read_transaction(card_id, tx_id).operation_list("c")
        return read.records + ([read.due_release] if read.due_release else []), read.exponent

    def _read_transaction(self, card_id: str, tx_id: str) -> TransactionRead:
        self._require_card(card_id, "transaction")
        self._require_id(tx_id, "transaction")
        reply = self._fcall("gc_read_transaction", [self.keys.card(card_id)], [tx_id], readonly=True)
        read = TransactionRead.from_reply(tx_id, reply)
        if read is None:
            raise NotFound("transaction not found")
        return read

    @staticmethod
    def _require_id(value: str, what: str) -> None:
        if not is_valid_id(value):
            raise NotFound(f"{what} not found")

    @staticmethod
    def _require_card(card_id: str, what: str) -> None:
        if not is_valid_card_id(card_id):
            raise NotFound(f"{what} not found")
