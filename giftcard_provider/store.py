"""The ledger's domain API: cards, transactions, settlements and cancellations, holds, verify.

The HTTP blueprints and the CLI call the methods here and get typed records
(records.py) back; how a call reaches Redis (client, library, durability, 503s)
is ledger_calls.py. Every write is one FCALL (one round trip); reads are one
FCALL_RO or one pipeline, except search by code, which first resolves the code index.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from redis.cluster import RedisCluster

from . import observability, verify
from .codes import CodeHasher, new_code, new_id, new_token, normalise
from .config import Settings
from .errors import InvalidRequest, NotFound, ProviderError, StoreUnavailable, raise_for_reply
from .keys import Keys, is_valid_id
from .ledger_calls import LedgerCalls, layout_refusal, translated_errors
from .ledger_library import RELEASE, Library, installed_libraries, prune_libraries
from .money import Amount, exponent_of
from .records import Card, JournalEntry, Operation, OperationList, Transaction, card_from_read

# Holds the sweeper releases per call on one card (it calls again while a call releases some):
# keeps each call short on a card with a backlog. Money calls release every due hold.
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

        The card is written first and its indexes after (on a cluster they live
        in other slots), so an index never names a card that does not exist. If
        Redis fails in between, the caller gets a 503 and the card, never handed
        out, is unreachable by code: `flask cards verify` lists it (verify.py).
        """
        exponent = exponent_of(currency)
        limit = self.balance_limit(currency)
        for _ in range(3):  # a new id and code after a collision among 2**128 ids / 30**20 codes
            card_id, code, token = new_id(), new_code(), new_token()
            code_digest = self.hasher.digest(code)
            fields = {
                "currency": currency.upper(),
                "exponent": str(exponent),
                "balanceLimit": str(limit),
                "relationName": relation_name,
                "caption": caption,
                "profileId": profile_id,
                "restrictedToOwner": "1" if restricted_to_owner else "0",
                "multipleRedemptions": "1" if multiple_redemptions else "0",
                "multipleCredits": "1" if multiple_credits else "0",
                "codeLast4": normalise(code)[-4:],
                "codeDigest": code_digest,
                "token": token,
            }
            args = [
                card_id,
                "" if emission_ms is None else str(emission_ms),
                "" if expiring_ms is None else str(expiring_ms),
                self._validity_ms,
                *(item for pair in fields.items() for item in pair),
            ]
            reply = self._fcall("gc_create_card", [self.keys.card(card_id)], args)
            if reply[0] == "invalid_window":
                raise InvalidRequest(
                    "expiringDate must be later than emissionDate and in the future",
                    errors={"json": {"expiringDate": ["Must be later than emissionDate and now."]}},
                )
            if reply[0] == "card_exists" or not self._index_card(card_id, code_digest, profile_id):
                continue
            created_ms, emission, expiring = reply[1:]
            fields.update(emissionMs=emission, expiringMs=expiring, createdMs=created_ms)
            fields.update(available="0", held="0", status="active", seq="0")
            return Card.from_hash(card_id, fields, 0, int(created_ms)), code
        raise ProviderError("card creation collided three times; please retry")

    def _index_card(self, card_id: str, code_digest: str, profile_id: str) -> bool:
        """Point the code and owner indexes at a new card; False (and the card withdrawn) if the code is taken.

        The same round trip reads the layout marker again: if a migration to another layout has
        finished since this process started, the new card would be left behind in the old layout,
        so it is withdrawn and the answer is a 503 (ledger_calls.layout_refusal).
        """
        code_key, owner_key = self.keys.code_index(code_digest), self.keys.owner_index(profile_id)
        claimed, _, layout = self._pipeline(
            lambda pipe: (
                pipe.set(code_key, card_id, nx=True),
                pipe.sadd(owner_key, card_id),
                pipe.get(self.calls.layout_key),
            )
        )
        refusal = layout_refusal(layout)
        if claimed and refusal is None:
            return True
        # The indexes go before the card they name.
        self._pipeline(lambda pipe: (pipe.srem(owner_key, card_id), claimed and pipe.delete(code_key)))
        self._fcall("gc_discard_card", [self.keys.card(card_id), self.keys.transactions(card_id)], [])
        if refusal is not None:
            raise refusal
        return False

    def card(self, card_id: str) -> Card | None:
        if not is_valid_id(card_id):
            return None
        reply = self._fcall("gc_read_card", [self.keys.card(card_id), self.keys.holds(card_id)], [], readonly=True)
        return card_from_read(card_id, reply)

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

        def reads(pipe):
            for key, name in counters:  # one HGET each: on a cluster the hashes live in different slots
                pipe.hget(key, name)
            pipe.get(self.keys.code_index(self.hasher.digest(code)))

        *values, card_id = self._pipeline(reads)
        if refused(values) or not card_id:
            return values, None
        return values, self.card(card_id)

    def cards_of(self, identities: set[str]) -> list[Card]:
        """Cards owned by any of the identities (client id, email), oldest first."""
        owned = self._pipeline(lambda pipe: [pipe.smembers(self.keys.owner_index(i)) for i in sorted(identities)])
        ids = sorted(set().union(*owned))
        read_card = self.library.function("gc_read_card")
        replies = self._with_library(
            lambda: self._pipeline(
                lambda pipe: [pipe.fcall_ro(read_card, 2, self.keys.card(i), self.keys.holds(i)) for i in ids]
            )
        )
        cards = [card_from_read(i, r) for i, r in zip(ids, replies, strict=True)]
        return sorted((c for c in cards if c), key=lambda c: c.created_ms)

    def set_status(self, card_id: str, status: str, reason: str) -> tuple[bool, str, int | None]:
        """Block, unblock or deactivate a card; moves no money. Returns (changed, previous status, changed ms)."""
        if status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        self._require_id(card_id, "gift card")
        reply = self._fcall("gc_set_status", [self.keys.card(card_id)], [status, reason])
        if reply[0] == "unchanged":
            return False, reply[1], int(reply[2]) if reply[2] else None
        _, (previous, changed_ms) = raise_for_reply(reply)
        return True, previous, int(changed_ms)

    def journal(self, card_id: str, *, after: str = "-", count: int | None = None) -> list[JournalEntry]:
        """Journal entries oldest first, from just after entry id `after` (for paging), at most `count`."""
        self._require_id(card_id, "gift card")
        with translated_errors():
            page = self.redis.xrange(self.keys.journal(card_id), "-" if after == "-" else f"({after}", count=count)
        return [JournalEntry.from_stream(entry_id, fields) for entry_id, fields in page]

    def journal_tail(self, card_id: str, count: int) -> list[JournalEntry]:
        """The newest `count` journal entries, oldest first."""
        self._require_id(card_id, "gift card")
        with translated_errors():
            page = self.redis.xrevrange(self.keys.journal(card_id), count=count)[::-1]
        return [JournalEntry.from_stream(entry_id, fields) for entry_id, fields in page]

    def cards_with_holds(self) -> Iterator[str]:
        """Ids of the cards holding money, by SCAN (the sweeper's tool: never on a request path)."""
        with translated_errors():
            for key in self.redis.scan_iter(match=self.keys.holds_pattern(), count=1000):
                if card_id := self.keys.card_id_in(key):
                    yield card_id

    def card_ids(self) -> Iterator[str]:
        """Every card id, by SCAN (operators' export and verify: never on a request path)."""
        with translated_errors():
            yield from verify.card_ids(self.redis, self.keys)

    def verify(self, card_id: str | None = None) -> verify.Report:
        """Recompute one card, or every card and index, from the journals (verify.py)."""
        with translated_errors():
            return verify.verify_store(self.redis, self.keys, card_id, self.library)

    def expire_all_holds(self) -> dict:
        """The sweeper's pass: release every hold past its deadline, card by card, SWEEP_BATCH per call.

        Returns {"cardsWithHolds", "holdsReleased", "released": {card: n}, "errors": {card: message},
        "moving": [card]}; a card that cannot be swept (removed by hand under its holds, or being moved
        by an upgrade) is reported, not fatal.
        """
        released, errors, moving = {}, {}, []
        holding = list(self.cards_with_holds())
        for card_id in holding:
            try:
                while count := self.expire_holds(card_id):
                    released[card_id] = released.get(card_id, 0) + count
            except StoreUnavailable as exc:
                if exc.code != "card_moving":
                    raise
                moving.append(card_id)  # an upgrade is moving it: the new release sweeps it
            except ProviderError as exc:
                errors[card_id] = exc.message
        return {
            "cardsWithHolds": len(holding),
            "holdsReleased": sum(released.values()),
            "released": released,
            "errors": errors,
            "moving": moving,
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
        self._require_id(card_id, "gift card")
        tx_id = new_id()
        k = self.keys
        reply = self._fcall(
            "gc_authorize",
            [
                k.card(card_id),
                k.transactions(card_id),
                k.requests(card_id),
                k.journal(card_id),
                k.holds(card_id),
                k.transaction(card_id, tx_id),
            ],
            [
                tx_id,
                operation,
                *amount.ledger_args(),
                request_id,
                token,
                self._hold_ms,
                order_id,
                description,
                *sorted(identities),
            ],
        )
        replayed, (tx, date_ms) = raise_for_reply(reply)
        return replayed, tx, int(date_ms)

    def settle(self, card_id: str, tx_id: str, amount: Amount, request_id: str) -> tuple[bool, Operation, int]:
        """Capture part of what a Debit holds. Returns (replayed, record, currency exponent)."""
        return self._operate("gc_settle", self.keys.settlements, card_id, tx_id, amount, request_id)

    def cancel(self, card_id: str, tx_id: str, amount: Amount, request_id: str) -> tuple[bool, Operation, int]:
        """Release what is held, then refund what was settled. Returns (replayed, record, exponent)."""
        return self._operate("gc_cancel", self.keys.cancellations, card_id, tx_id, amount, request_id)

    def _operate(self, function, records_key, card_id, tx_id, amount, request_id):
        self.check_ceiling(amount)
        self._require_id(card_id, "transaction")
        self._require_id(tx_id, "transaction")
        k = self.keys
        reply = self._fcall(
            function,
            [
                k.card(card_id),
                k.transaction(card_id, tx_id),
                k.operation_requests(card_id, tx_id),
                records_key(card_id, tx_id),
                k.journal(card_id),
                k.holds(card_id),
            ],
            [new_id(), *amount.ledger_args(), request_id],
        )
        replayed, (oid, minor, date_ms, exponent) = raise_for_reply(reply, "transaction")
        return replayed, Operation(oid, int(minor), int(date_ms), request_id), int(exponent)

    def expire_holds(self, card_id: str, batch: int = SWEEP_BATCH) -> int:
        """Release at most `batch` of the card's holds past their deadline now. Returns how many."""
        self._require_id(card_id, "gift card")
        k = self.keys
        reply = self._fcall("gc_expire_holds", [k.card(card_id), k.journal(card_id), k.holds(card_id)], [str(batch)])
        return int(raise_for_reply(reply)[1][0])

    def transaction_ids(self, card_id: str, start: int, stop: int) -> tuple[list[str], int]:
        """A page of the card's transaction ids (oldest first) and their total count."""
        self._require_id(card_id, "gift card")
        k = self.keys
        exists, ids, total = self._pipeline(
            lambda pipe: (
                pipe.exists(k.card(card_id)),
                pipe.lrange(k.transactions(card_id), start, stop),
                pipe.llen(k.transactions(card_id)),
            )
        )
        if not exists:
            raise NotFound("gift card not found")
        return ids, total

    def transaction(self, card_id: str, tx_id: str) -> tuple[Transaction, int]:
        """A transaction and the card's currency exponent."""
        self._require_id(card_id, "transaction")
        self._require_id(tx_id, "transaction")
        exponent, fields = self._pipeline(
            lambda pipe: (
                pipe.hget(self.keys.card(card_id), "exponent"),
                pipe.hgetall(self.keys.transaction(card_id, tx_id)),
            )
        )
        transaction = Transaction.from_hash(fields)
        if transaction is None or exponent is None:
            raise NotFound("transaction not found")
        return transaction, int(exponent)

    def settlements(self, card_id: str, tx_id: str) -> tuple[list[Operation], int]:
        """A transaction's settlements, oldest first, and the card's currency exponent."""
        read = self._operations(self.keys.settlements, card_id, tx_id)
        return read.records, read.exponent

    def cancellations(self, card_id: str, tx_id: str) -> tuple[list[Operation], int]:
        """A transaction's cancellations, oldest first, and the card's currency exponent.

        A hold past its deadline that no money call has released yet is listed
        as the very record its release will write (see release_if_due in
        ledger.lua), so the Hub's sum never misses money that is already back.
        """
        read = self._operations(self.keys.cancellations, card_id, tx_id)
        return read.records + ([read.due_release] if read.due_release else []), read.exponent

    def _operations(self, records_key, card_id, tx_id) -> OperationList:
        self._require_id(card_id, "transaction")
        self._require_id(tx_id, "transaction")
        reply = self._fcall(
            "gc_read_operations",
            [self.keys.card(card_id), self.keys.transaction(card_id, tx_id), records_key(card_id, tx_id)],
            [],
            readonly=True,
        )
        read = OperationList.from_reply(tx_id, reply)
        if read is None:
            raise NotFound("transaction not found")
        return read

    @staticmethod
    def _require_id(value: str, what: str) -> None:
        if not is_valid_id(value):
            raise NotFound(f"{what} not found")
