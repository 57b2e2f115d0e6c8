"""The ledger's records, typed: the one module that knows Redis's field names and record layouts.

A card is one Redis hash with short field names (keys.py lists them); a transaction
is packed into one of its fields ("D|value|dateMs|deadlineMs|held|settled|released|
refunded|records" or "C|value|dateMs|settled|cancelled|records"), and so is each
settlement or cancellation ("s|oid|minor|dateMs|" / "c|oid|minor|dateMs|reason").
Events are entries of the bucket's stream. Everything above the store (the HTTP
blueprints, the CLI, verify, reports, bench) reads the records defined here.

Amounts are integer minor units of the card's currency; times are epoch
milliseconds on Redis's clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from redis.exceptions import ResponseError

# The card's own fields as gc_read_card returns them (ledger.lua: CARD_FIELDS, same order).
CARD_FIELDS = (
    "cur", "exp", "av", "hd", "st", "sr", "sc", "own", "rel", "cap", "ro", "mr", "mc",
    "at", "from", "to", "l4", "tk", "lim", "seq", "od", "cr", "ntx", "mv",
)  # fmt: skip


def _int(fields: dict[str, str], name: str, default: int = 0) -> int:
    value = fields.get(name)
    return int(value) if value not in (None, "") else default


@dataclass(frozen=True)
class Card:
    """A card as gc_read_card saw it, at `now_ms` on Redis's clock."""

    id: str
    currency: str
    exponent: int
    available: int  # as stored: a hold past its deadline that no call has released yet is still in `held`
    held: int
    due_holds: int  # minor units of holds past their deadline, not yet released (ledger.lua: read_card)
    now_ms: int
    status: str  # active | blocked | inactive
    status_reason: str
    status_changed_ms: int | None
    profile_id: str
    restricted_to_owner: bool
    multiple_redemptions: bool
    multiple_credits: bool
    relation_name: str
    caption: str
    emission_ms: int
    expiring_ms: int
    created_ms: int
    code_last4: str
    token: str
    balance_limit: int
    seq: int  # events written for the card so far
    open_debits: int = 0  # Debits not yet released or refunded in full (multipleRedemptions)
    credits: int = 0
    transactions: int = 0
    moving: bool = False  # marked by a later layout's migration: this release changes nothing on it

    @classmethod
    def from_hash(cls, card_id: str, fields: dict[str, str], due_holds: int = 0, now_ms: int = 0) -> Card:
        return cls(
            id=card_id,
            currency=fields["cur"],
            exponent=int(fields["exp"]),
            available=_int(fields, "av"),  # av and hd are absent until money first moves
            held=_int(fields, "hd"),
            due_holds=due_holds,
            now_ms=now_ms,
            status=fields["st"],
            status_reason=fields.get("sr", ""),
            status_changed_ms=_int(fields, "sc") or None,
            profile_id=fields.get("own", ""),
            restricted_to_owner=fields.get("ro") == "1",  # a flag at its default is left out (card_fields)
            multiple_redemptions=fields.get("mr", "1") == "1",
            multiple_credits=fields.get("mc", "1") == "1",
            relation_name=fields.get("rel", ""),
            caption=fields.get("cap", ""),
            emission_ms=_int(fields, "from", int(fields["at"])),  # "from" is left out when it equals "at"
            expiring_ms=int(fields["to"]),
            created_ms=int(fields["at"]),
            code_last4=fields.get("l4", ""),
            token=fields.get("tk", ""),
            balance_limit=_int(fields, "lim"),
            seq=_int(fields, "seq"),
            open_debits=_int(fields, "od"),
            credits=_int(fields, "cr"),
            transactions=_int(fields, "ntx"),
            moving=fields.get("mv", "") != "",
        )

    def to_hash(self) -> dict[str, str]:
        """The card's own fields as stored (from_hash's inverse; the migration writes them: gc_import_card).
        Its transactions' fields are `ledger_fields`'."""
        fields = {
            "cur": self.currency, "exp": str(self.exponent), "st": self.status, "own": self.profile_id,
            "rel": self.relation_name, "cap": self.caption,
            **_flags(self.restricted_to_owner, self.multiple_redemptions, self.multiple_credits),
            "at": str(self.created_ms), "to": str(self.expiring_ms),
            "l4": self.code_last4, "tk": self.token, "lim": str(self.balance_limit),
            "seq": str(self.seq), "od": str(self.open_debits), "cr": str(self.credits), "ntx": str(self.transactions),
        }  # fmt: skip
        if self.available or self.held:
            fields.update(av=str(self.available), hd=str(self.held))
        if self.emission_ms != self.created_ms:
            fields["from"] = str(self.emission_ms)
        if self.status_reason:
            fields["sr"] = self.status_reason
        if self.status_changed_ms is not None:
            fields["sc"] = str(self.status_changed_ms)
        if self.moving:
            fields["mv"] = "1"
        return fields

    @property
    def balance(self) -> int:
        """Available now: what is stored as available plus the holds past their deadline."""
        return self.available + self.due_holds

    @property
    def held_now(self) -> int:
        """Held now: the holds past their deadline no longer count."""
        return self.held - self.due_holds

    @property
    def usable(self) -> bool:
        """What search shows: active, inside its validity window, with money to spend."""
        return self.status == "active" and self.emission_ms <= self.now_ms < self.expiring_ms and self.balance > 0

    def terms(self) -> dict:
        """What the card was issued with, in the protocol's names and types."""
        return {
            "relationName": self.relation_name,
            "caption": self.caption,
            "profileId": self.profile_id,
            "restrictedToOwner": self.restricted_to_owner,
            "multipleRedemptions": self.multiple_redemptions,
            "multipleCredits": self.multiple_credits,
        }

    def visible_to(self, identities: set[str]) -> bool:
        """A restricted card shows only to its owner (identities normalised: identity.py)."""
        return not self.restricted_to_owner or self.profile_id in identities


def _flags(restricted_to_owner: bool, multiple_redemptions: bool, multiple_credits: bool) -> dict[str, str]:
    """The card's flags as stored: each only when it differs from its default (the protocol's: not
    restricted, multiple redemptions and credits), so a typical card pays for none of them. ledger.lua
    reads an absent flag as its default too."""
    fields = {}
    if restricted_to_owner:
        fields["ro"] = "1"
    if not multiple_redemptions:
        fields["mr"] = "0"
    if not multiple_credits:
        fields["mc"] = "0"
    return fields


def card_fields(
    *,
    currency: str,
    exponent: int,
    balance_limit: int,
    profile_id: str,
    relation_name: str,
    caption: str,
    restricted_to_owner: bool,
    multiple_redemptions: bool,
    multiple_credits: bool,
    code_last4: str,
    token: str,
) -> dict[str, str]:
    """A new card's terms as the fields gc_create_card writes (it adds balances, status and dates)."""
    return {
        "cur": currency,
        "exp": str(exponent),
        "lim": str(balance_limit),
        "own": profile_id,
        "rel": relation_name,
        "cap": caption,
        **_flags(restricted_to_owner, multiple_redemptions, multiple_credits),
        "l4": code_last4,
        "tk": token,
    }


@dataclass(frozen=True)
class Transaction:
    """A Debit (hold) or Credit (load) and what has happened to it since."""

    id: str
    operation: str  # Debit | Credit
    value: int
    date_ms: int
    request_id: str
    order_id: str
    description: str
    settled: int
    held: int = 0  # Debit: still held
    released: int = 0  # Debit: given back unsettled (cancelled or expired)
    refunded: int = 0  # Debit: settled, then given back
    cancelled: int = 0  # Credit: taken back out
    hold_deadline_ms: int | None = None  # Debit
    records: int = 0  # settlements and cancellations recorded

    @property
    def debit(self) -> bool:
        return self.operation == "Debit"

    @classmethod
    def unpack(cls, tx_id: str, packed: str, request_id: str = "", order_id: str = "", description: str = ""):
        """A t:<tx> field -> the transaction (None for an operation the ledger does not know)."""
        f = packed.split("|")
        common = dict(id=tx_id, value=int(f[1]), date_ms=int(f[2]), request_id=request_id, order_id=order_id,
                      description=description)  # fmt: skip
        if f[0] == "D":
            held, settled, released, refunded, records = map(int, f[4:9])
            return cls(operation="Debit", hold_deadline_ms=int(f[3]), held=held, settled=settled,
                       released=released, refunded=refunded, records=records, **common)  # fmt: skip
        if f[0] == "C":
            settled, cancelled, records = map(int, f[3:6])
            return cls(operation="Credit", settled=settled, cancelled=cancelled, records=records, **common)
        return None

    def pack(self) -> str:
        """The t:<tx> field (unpack's inverse; ledger.lua's write_tx packs the same)."""
        if self.debit:
            counters = (self.hold_deadline_ms or 0, self.held, self.settled, self.released, self.refunded)
            return "|".join(map(str, ("D", self.value, self.date_ms, *counters, self.records)))
        return "|".join(map(str, ("C", self.value, self.date_ms, self.settled, self.cancelled, self.records)))


@dataclass(frozen=True)
class Operation:
    """A settlement, cancellation or authorization record: {oid, value, date}."""

    oid: str
    minor: int
    date_ms: int
    request_id: str = ""
    reason: str = ""  # "expired" for a hold released by its deadline
    kind: str = ""  # "s" settlement, "c" cancellation

    @classmethod
    def unpack(cls, packed: str, request_id: str = "") -> Operation:
        """An o:<tx>:<k> field "kind|oid|minor|dateMs|reason" and its requestId -> the record."""
        kind, oid, minor, date_ms, reason = packed.split("|", 4)
        return cls(oid, int(minor), int(date_ms), request_id, reason, kind)

    def pack(self) -> str:
        """The o:<tx>:<k> field (unpack's inverse); the requestId goes in p:<tx>:<k>."""
        return f"{self.kind}|{self.oid}|{self.minor}|{self.date_ms}|{self.reason}"


def ledger_fields(transactions: list[tuple[Transaction, list[Operation]]], requests: dict[str, str]) -> dict[str, str]:
    """A card's transaction fields, as ledger.lua writes them one by one (keys.py): x:<n>, t:, q:, n:,
    d: per transaction (in list order, with its settlement and cancellation records in the order
    they happened), o: and p: per record, r: per requestId ("txId|operation|minor"). The migration
    writes them with the card's own fields (Card.to_hash) in one call (gc_import_card)."""
    fields: dict[str, str] = {}
    for n, (tx, records) in enumerate(transactions, start=1):
        fields[f"x:{n}"] = tx.id
        fields[f"t:{tx.id}"] = tx.pack()
        for prefix, value in (("q", tx.request_id), ("n", tx.order_id), ("d", tx.description)):
            if value:
                fields[f"{prefix}:{tx.id}"] = value
        for k, record in enumerate(records, start=1):
            fields[f"o:{tx.id}:{k}"] = record.pack()
            if record.request_id:
                fields[f"p:{tx.id}:{k}"] = record.request_id
    fields.update({f"r:{request_id}": made for request_id, made in requests.items()})
    return fields


# What each event type does to a card's (available, held), per unit of its amount (verify.py).
EVENT_DELTAS = {
    "credit": (1, 0),
    "authorize": (-1, 1),
    "settle": (0, -1),
    "settle_credit": (0, 0),
    "release": (1, -1),
    "expire": (1, -1),
    "refund": (1, 0),
    "reverse_credit": (-1, 0),
}
# Events that move no money: their amount is 0 and the balances stay as they were.
MARKER_EVENTS = ("created", "status", "imported", "discarded")


@dataclass(frozen=True)
class Event:
    """One entry of a bucket's event log: a card's money movement, status change, creation or import,
    with the card's balances after it. `id` ("<bucket>-<stream id>") is stable and unique."""

    bucket: str
    stream_id: str  # "<ms>-<n>": the time on Redis's clock and the order within the bucket
    type: str  # created, credit, authorize, settle, settle_credit, release, refund, expire, reverse_credit,
    # status, imported, discarded
    card_id: str
    tx_id: str
    ref: str  # the transaction id, a settlement's / cancellation's oid, or the new status
    amount: int
    available: int
    held: int
    seq: int  # the card's own sequence: 1, 2, 3, ...
    currency: str

    @property
    def id(self) -> str:
        return f"{self.bucket}-{self.stream_id}"

    @property
    def at_ms(self) -> int:
        return int(self.stream_id.split("-", 1)[0])

    @classmethod
    def from_stream(cls, bucket: str, stream_id: str, fields: dict[str, str]) -> Event:
        return cls(
            bucket=bucket,
            stream_id=stream_id,
            type=fields["type"],
            card_id=fields["card"],
            tx_id=fields["tx"],
            ref=fields["ref"],
            amount=int(fields["amount"]),
            available=int(fields["available"]),
            held=int(fields["held"]),
            seq=int(fields["seq"]),
            currency=fields["currency"],
        )


@dataclass(frozen=True)
class OperationList:
    """A transaction's settlements or cancellations as gc_read_transaction read them, with the release
    its hold's deadline has made due but no call has written yet (the very record ledger.lua's
    release_if_due will write: oid "<txId>-expired", the held amount, dated at the deadline)."""

    records: list[Operation]
    exponent: int
    due_release: Operation | None


@dataclass(frozen=True)
class TransactionRead:
    """gc_read_transaction's reply: the transaction, its records, the card's exponent, Redis's time."""

    transaction: Transaction
    operations: list[Operation]
    exponent: int
    now_ms: int

    @classmethod
    def from_reply(cls, tx_id: str, reply: list) -> TransactionRead | None:
        """{"ok", nowMs, exponent, record, requestId, orderId, description, (record, requestId)...}"""
        if reply[0] == "not_found":
            return None
        _, now_ms, exponent, packed, request_id, order_id, description, *flat = reply
        transaction = Transaction.unpack(tx_id, packed, request_id, order_id, description)
        if transaction is None:
            return None
        operations = [Operation.unpack(p, rid) for p, rid in zip(flat[::2], flat[1::2], strict=True) if p]
        return cls(transaction, operations, int(exponent), int(now_ms))

    def operation_list(self, kind: str) -> OperationList:
        """The settlements ("s") or cancellations ("c"), the latter with a due, unwritten release."""
        t = self.transaction
        due = None
        if kind == "c" and t.debit and t.held > 0 and t.hold_deadline_ms and t.hold_deadline_ms <= self.now_ms:
            due = Operation(f"{t.id}-expired", t.held, t.hold_deadline_ms, "", "expired", "c")
        return OperationList([o for o in self.operations if o.kind == kind], self.exponent, due)


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def card_from_read(card_id: str, reply: list) -> Card | None:
    """gc_read_card's reply {"ok", nowMs, dueMinor, value of each CARD_FIELDS} | {"not_found"} -> the card."""
    if reply[0] == "not_found":
        return None
    _, now_ms, due, *values = reply
    fields = {name: value for name, value in zip(CARD_FIELDS, values, strict=True) if value != ""}
    return Card.from_hash(card_id, fields, int(due), int(now_ms))


@dataclass(frozen=True)
class TransactionSnapshot:
    transaction: Transaction | None  # None: listed by the card but its record is missing or unknown
    settlements: list[Operation]
    cancellations: list[Operation]
    listed: bool = True  # named by an x:<n> field


@dataclass(frozen=True)
class LedgerSnapshot:
    """Everything verify checks about one card, as gc_read_ledger read it at one instant."""

    card: Card
    order: list[str]  # transaction ids by x:<n>, oldest first ("" where a number is missing)
    hold_scores: dict[str, int | None]  # each Debit's deadline in the bucket's holds (None: no entry)
    requests: dict[str, str]  # requestId -> the id of the transaction it made
    transactions: dict[str, TransactionSnapshot]

    @classmethod
    def from_reply(cls, card_id: str, reply: list) -> LedgerSnapshot | None:
        """{"ok", fields (flat), holdScores (flat txId, deadline or "")} | {"not_found"}"""
        if reply[0] == "not_found":
            return None
        _, flat, scores = reply
        fields = _pairs(flat)
        card = Card.from_hash(card_id, fields)
        order = [fields.get(f"x:{n}", "") for n in range(1, card.transactions + 1)]
        transactions = {}
        for name, packed in fields.items():
            if not name.startswith("t:"):
                continue
            tx_id = name[2:]
            t = Transaction.unpack(tx_id, packed, fields.get(f"q:{tx_id}", ""), fields.get(f"n:{tx_id}", ""),
                                   fields.get(f"d:{tx_id}", ""))  # fmt: skip
            records = [
                Operation.unpack(fields.get(f"o:{tx_id}:{k}", "?|?|0|0|"), fields.get(f"p:{tx_id}:{k}", ""))
                for k in range(1, (t.records if t else 0) + 1)
            ]
            transactions[tx_id] = TransactionSnapshot(
                t, [r for r in records if r.kind == "s"], [r for r in records if r.kind == "c"], tx_id in order
            )
        for tx_id in order:
            transactions.setdefault(tx_id, TransactionSnapshot(None, [], []))
        return cls(
            card=card,
            order=order,
            hold_scores={tx: (int(s) if s != "" else None) for tx, s in _pairs(scores).items()},
            requests={n[2:]: v.split("|", 1)[0] for n, v in fields.items() if n.startswith("r:")},
            transactions=transactions,
        )


# The running totals a bucket's books keep per currency ("<CUR>:<total>", ledger.lua: book), in
# minor units; `cards` counts cards.
BOOK_TOTALS = (
    "cards", "credited", "authorized", "settled", "released", "expired", "refunded", "reversed", "available", "held",
)  # fmt: skip


@dataclass(frozen=True)
class Books:
    """What the ledger owes in one currency, kept by the same call as every movement.

    credited: loaded by Credits; reversed: Credits taken back out; authorized: held by Debits;
    settled: captured from holds; released: holds given back (cancelled or expired); expired: the
    part of released given back by a deadline; refunded: settled money given back. available and
    held: the sum of the cards' balances. The liability is available + held.
    """

    currency: str
    cards: int = 0
    credited: int = 0
    authorized: int = 0
    settled: int = 0
    released: int = 0
    expired: int = 0
    refunded: int = 0
    reversed: int = 0
    available: int = 0
    held: int = 0

    @property
    def liability(self) -> int:
        return self.available + self.held

    @classmethod
    def total(cls, hashes: list[dict[str, str]]) -> dict[str, Books]:
        """Books hashes ("<CUR>:<total>" -> minor) summed per currency."""
        sums: dict[str, dict[str, int]] = {}
        for fields in hashes:
            for name, value in fields.items():
                currency, _, total = name.partition(":")
                if total in BOOK_TOTALS:
                    per = sums.setdefault(currency, {})
                    per[total] = per.get(total, 0) + int(value)
        return {c: cls(c, **totals) for c, totals in sorted(sums.items())}

    def problems(self) -> list[str]:
        """The totals must agree with each other: what is owed follows from what moved."""
        found = []
        if self.liability != self.credited - self.reversed - self.settled + self.refunded:
            found.append(
                f"liability {self.liability} != credited {self.credited} - reversed {self.reversed} "
                f"- settled {self.settled} + refunded {self.refunded}"
            )
        if self.held != self.authorized - self.settled - self.released:
            found.append(
                f"held {self.held} != authorized {self.authorized} - settled {self.settled} - released {self.released}"
            )
        if self.expired > self.released or self.refunded > self.settled:
            found.append("expired above released, or refunded above settled")
        return found

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in BOOK_TOTALS} | {"liability": self.liability}


def stream_order(stream_id: str) -> tuple[int, int]:
    """A stream id "<ms>-<n>" (or "<ms>") -> (ms, n), which order as the stream does."""
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0)


def redis_time_ms(reply) -> int:
    """A TIME reply (seconds, microseconds) -> epoch milliseconds on Redis's clock."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass(frozen=True)
class LogBounds:
    """What one bucket's event log still holds, from XINFO STREAM (Redis 7: `entries-added`): for
    reports (complete_from_ms) and webhooks (pending_after, handled).

    Retention trims a log from its oldest end (XTRIM MINID / MAXLEN; nothing here deletes single
    entries), so the log holds every event from `complete_from_ms` on: the beginning (0) if nothing
    was ever trimmed, else just after the first entry kept (the trimmed ones may share its
    millisecond), or after the last id ever written if everything was trimmed. For the same reason
    entry ordinals are contiguous: the last entry is number `entries_added`, the first retained one
    `entries_added - length + 1`.
    """

    length: int
    entries_added: int | None  # every event ever appended; None: the server did not say (Redis < 7)
    first_id: str | None  # the oldest entry still kept
    last_id: str  # the last id ever generated ("0-0": none yet); trimming never lowers it

    @classmethod
    def from_xinfo(cls, reply: dict) -> LogBounds:
        first = reply.get("first-entry")
        added = reply.get("entries-added")
        return cls(
            length=int(reply["length"]),
            entries_added=None if added is None else int(added),
            first_id=first[0] if first else None,
            last_id=reply["last-generated-id"],
        )

    @classmethod
    def from_info(cls, info) -> LogBounds | None:
        """An XINFO STREAM reply from a pipeline run with raise_on_error=False -> the bounds; None
        only for a stream that does not exist (Redis answers "no such key"). Any other error is
        raised: a cluster pipeline puts a node's connection or timeout error in the reply list, and
        reading it as "no log yet" would place a new endpoint's cursor at that bucket's start."""
        if isinstance(info, ResponseError) and str(info).removeprefix("ERR ").strip() == "no such key":
            return None
        if isinstance(info, BaseException):
            raise info
        return cls.from_xinfo(info)

    def pending_after(self, cursor: LaneCursor | None) -> int:
        """Events retained after `cursor`: exact when its ordinal is known, else at most `length`."""
        if cursor is not None and self.handled(cursor):
            return 0
        if cursor is None or cursor.ordinal is None or self.entries_added is None:
            return self.length
        return max(0, min(self.entries_added - cursor.ordinal, self.length))

    def handled(self, cursor: LaneCursor) -> bool:
        """Whether `cursor` is at or past the stream's last entry (nothing left after it)."""
        return stream_order(cursor.stream_id) >= stream_order(self.last_id)

    @property
    def complete_from_ms(self) -> int | None:
        """The earliest time (ms) from which every event of the log is still there; None if the
        server cannot tell (no `entries-added`: nothing proves that nothing was trimmed)."""
        if self.entries_added is None:
            return None
        if self.entries_added <= self.length:
            return 0
        return stream_order(self.first_id or self.last_id)[0] + 1


# -- webhooks (webhooks.py, webhook_worker.py) -----------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint as its hash stores it (keys.py: gc:{w<id>}:endpoint). `types` empty: every
    event type. The secret ("whsec_" + base64) signs every delivery: only what signs reads it (the
    worker, and `replay --event/--failed`); every other reader (list, pause, failures, /metrics) reads
    PUBLIC_FIELDS only, and its Endpoint has secret "" and previous_secret "".

    After `rotate-secret`, the secret it replaced is `previous_secret` and signs too (a second
    signature in the same header) until `previous_until_ms`, so that the receiver can move to the new
    one without refusing a delivery. Never rotated: previous "" and 0 (`add` writes them so; an
    endpoint added by an earlier release has no such fields, which reads the same)."""

    id: str
    url: str
    secret: str
    types: tuple[str, ...]
    paused: bool
    paused_reason: str
    description: str
    created_ms: int
    previous_secret: str = ""
    previous_until_ms: int = 0

    PUBLIC_FIELDS = ("url", "types", "paused", "paused_reason", "description", "created", "previous_until")
    SECRET_FIELDS = ("secret", "previous_secret")

    @classmethod
    def from_values(cls, endpoint_id: str, names: tuple[str, ...], values: list[str | None]) -> Endpoint | None:
        """An HMGET of `names` -> the endpoint (None if it has no url: gone)."""
        return cls.from_hash(endpoint_id, {n: v for n, v in zip(names, values, strict=True) if v is not None})

    @classmethod
    def from_hash(cls, endpoint_id: str, fields: dict[str, str]) -> Endpoint | None:
        if not fields.get("url"):
            return None
        return cls(
            id=endpoint_id,
            url=fields["url"],
            secret=fields.get("secret", ""),
            types=tuple(t for t in fields.get("types", "").split(",") if t),
            paused=fields.get("paused") == "1",
            paused_reason=fields.get("paused_reason", ""),
            description=fields.get("description", ""),
            created_ms=_int(fields, "created"),
            previous_secret=fields.get("previous_secret", ""),
            previous_until_ms=_int(fields, "previous_until"),
        )

    def to_hash(self) -> dict[str, str]:
        return {
            "url": self.url,
            "secret": self.secret,
            "types": ",".join(self.types),
            "paused": "1" if self.paused else "0",
            "paused_reason": self.paused_reason,
            "description": self.description,
            "created": str(self.created_ms),
            "previous_secret": self.previous_secret,
            "previous_until": str(self.previous_until_ms),
        }

    def wants(self, event_type: str) -> bool:
        return not self.types or event_type in self.types


@dataclass(frozen=True)
class LaneCursor:
    """Where an endpoint stands in one bucket's log: the last stream id handled (delivered, filtered
    out or dead-lettered) and its ordinal in the bucket's stream (1 for the first entry ever added;
    None when not known, after a replay, until the worker reaches the stream's end)."""

    stream_id: str
    ordinal: int | None

    @classmethod
    def parse(cls, value: str | None) -> LaneCursor | None:
        if not value:
            return None
        stream_id, _, ordinal = value.partition("|")
        return cls(stream_id, int(ordinal) if ordinal else None)

    def pack(self) -> str:
        return f"{self.stream_id}|{'' if self.ordinal is None else self.ordinal}"


_RETRY = re.compile(r"([0-9]+-[0-9]+)\|([0-9]+)\|([0-9]+)\|((?:[0-9]+-[0-9]+)?)\|(.*)", re.S)


@dataclass(frozen=True)
class LaneRetry:
    """A lane's head event that failed: how many attempts so far, when the next may start (epoch ms,
    Redis clock), the stream id of the cursor it was noted against (its event is the one right after
    it; None in a value noted before this field existed), and the last attempt's error."""

    stream_id: str
    attempts: int
    next_ms: int
    error: str
    after: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> LaneRetry | None:
        """ "<stream id>|<attempts>|<next ms>|<cursor's stream id>|<error>" (webhook_lane.lua), or the
        older "<stream id>|<attempts>|<next ms>|<error>" (no cursor: an error never starts "<ms>-<n>|")."""
        if not value:
            return None
        match = _RETRY.fullmatch(value)
        if match:
            stream_id, attempts, next_ms, after, error = match.groups()
            return cls(stream_id, int(attempts), int(next_ms), error, after)
        stream_id, attempts, next_ms, error = value.split("|", 3)
        return cls(stream_id, int(attempts), int(next_ms), error)

    def applies(self, cursor: LaneCursor | None) -> bool:
        """Whether this retry is for the lane's head event now, the one right after `cursor`: it was
        noted against that cursor. One noted against another is stale (a replay moved the cursor
        meanwhile) and is ignored, or the lane would wait for an event it no longer sends next."""
        return self.after is None or self.after == (cursor.stream_id if cursor else "")


@dataclass(frozen=True)
class DeadLetter:
    """An event given up for one endpoint (its dead-letter stream): after how many attempts, when (the
    entry's stream id, Redis clock), and why."""

    entry_id: str
    event_id: str
    event_type: str
    card_id: str
    attempts: int
    error: str

    @property
    def at_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])

    @classmethod
    def from_stream(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        return cls(entry_id, fields["event"], fields.get("type", ""), fields.get("card", ""),
                   _int(fields, "attempts"), fields.get("error", ""))  # fmt: skip

    @staticmethod
    def fields(event: Event, attempts: int, error: str) -> list[str]:
        """A new dead letter's stream fields, flat, as webhook_lane.lua XADDs them."""
        return ["event", event.id, "type", event.type, "card", event.card_id, "attempts", str(attempts), "error", error]


@dataclass(frozen=True)
class WebhookStats:
    """An endpoint's counters (keys.py: gc:{w<id>}:stats), kept by webhook_lane.lua: events delivered,
    failed attempts per kind, events dead-lettered, and the latency histogram (non-cumulative counts
    per bound index "lat:<i>", 1-based; one past the last bound is +Inf; their sum in ms)."""

    delivered: int
    dead: int
    failures: dict[str, int]
    latency_counts: dict[int, int]
    latency_sum_ms: int
    trimmed: int = 0  # events the retention trimmed before the endpoint had them: never delivered

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> WebhookStats:
        return cls(
            delivered=_int(fields, "delivered"),
            dead=_int(fields, "dead"),
            failures={k[5:]: int(v) for k, v in fields.items() if k.startswith("fail:")},
            latency_counts={int(k[4:]): int(v) for k, v in fields.items() if k.startswith("lat:")},
            latency_sum_ms=_int(fields, "lat_sum_ms"),
            trimmed=_int(fields, "trimmed"),
        )


# -- bulk issuance batches (bulk_issue.py) -------------------------------------------------------
# One hash, keys.batches(), holds every batch of `flask cards issue-batch`; a batch's fields all start
# with its id (ids hold no "|": keys.is_valid_id):
#   <id>          its definition (JSON: BatchSpec, plus what was resolved when it was registered)
#   <id>|key      its secret, wrapped (hex); deleted once its codes are written (bulk_issue.py)
#   <id>|done     the cards confirmed so far (progress: creation resumes from there)
#   <id>|a        the rare redraws: JSON {index: attempt} for indexes whose first code was taken
#   <id>|out      once published: "<ms>|<rows>|<sha256 of the CSV>"


def batch_fields(batch_id: str) -> list[str]:
    """The fields of one batch in the batches hash, in the order Batch.from_values reads them."""
    return [batch_id, f"{batch_id}|key", f"{batch_id}|done", f"{batch_id}|a", f"{batch_id}|out"]


@dataclass(frozen=True)
class BatchSpec:
    """What a batch issues: `count` cards with these terms, each loaded with `load_minor` (0: none).

    emission_ms / expiring_ms / valid_days are the operator's options as given (None: not given), so a
    rerun can be compared with the run that registered the batch."""

    count: int
    currency: str
    load_minor: int
    relation_name: str
    caption: str
    profile_id: str
    restricted_to_owner: bool
    multiple_redemptions: bool
    multiple_credits: bool
    emission_ms: int | None = None
    expiring_ms: int | None = None
    valid_days: int | None = None

    def as_dict(self) -> dict:
        return {
            "count": self.count, "currency": self.currency, "loadMinor": self.load_minor,
            "relationName": self.relation_name, "caption": self.caption, "profileId": self.profile_id,
            "restrictedToOwner": self.restricted_to_owner, "multipleRedemptions": self.multiple_redemptions,
            "multipleCredits": self.multiple_credits, "emissionMs": self.emission_ms,
            "expiringMs": self.expiring_ms, "validDays": self.valid_days,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> BatchSpec:
        return cls(
            count=int(d["count"]), currency=d["currency"], load_minor=int(d["loadMinor"]),
            relation_name=d["relationName"], caption=d["caption"], profile_id=d["profileId"],
            restricted_to_owner=bool(d["restrictedToOwner"]), multiple_redemptions=bool(d["multipleRedemptions"]),
            multiple_credits=bool(d["multipleCredits"]), emission_ms=d.get("emissionMs"),
            expiring_ms=d.get("expiringMs"), valid_days=d.get("validDays"),
        )  # fmt: skip

    def differences(self, other: BatchSpec) -> list[str]:
        """The terms in which `other` differs from this spec, as "name: this -> other"."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{name}: {mine[name]!r} -> {theirs[name]!r}" for name in mine if mine[name] != theirs[name]]


@dataclass(frozen=True)
class Published:
    """A batch whose codes were written: when (ms), how many rows, and the CSV's SHA-256."""

    at_ms: int
    rows: int
    sha256: str

    def pack(self) -> str:
        return f"{self.at_ms}|{self.rows}|{self.sha256}"


@dataclass(frozen=True)
class Batch:
    """One batch of `flask cards issue-batch`, as the batches hash holds it."""

    id: str
    spec: BatchSpec
    registered_ms: int
    expiring_ms: int | None  # resolved at registration (--valid-days: from then); None: each card's default
    wrapped_key: str | None  # None once published (or before the key was stored)
    done: int
    attempts: dict[int, int]
    published: Published | None

    def definition(self) -> str:
        """The <id> field: the spec and what was resolved at registration."""
        return json.dumps(
            {"spec": self.spec.as_dict(), "registeredMs": self.registered_ms, "expiringMs": self.expiring_ms},
            sort_keys=True,
        )

    @classmethod
    def from_values(cls, batch_id: str, values: list[str | None]) -> Batch | None:
        """HMGET of batch_fields(batch_id) -> the batch, or None if it was never registered."""
        definition, key, done, attempts, out = values
        if definition is None:
            return None
        d = json.loads(definition)
        published = None
        if out:
            at_ms, rows, sha = out.split("|")
            published = Published(int(at_ms), int(rows), sha)
        return cls(
            id=batch_id,
            spec=BatchSpec.from_dict(d["spec"]),
            registered_ms=int(d["registeredMs"]),
            expiring_ms=d.get("expiringMs"),
            wrapped_key=key or None,
            done=int(done or 0),
            attempts={int(i): int(a) for i, a in json.loads(attempts or "{}").items()},
            published=published,
        )

    @staticmethod
    def pack_attempts(attempts: dict[int, int]) -> str:
        """The <id>|a field: which attempt each redrawn card number is at."""
        return json.dumps({str(n): a for n, a in sorted(attempts.items())})

    @classmethod
    def all_from_hash(cls, fields: dict[str, str]) -> list[Batch]:
        """HGETALL of the batches hash -> every batch, oldest first."""
        ids = [name for name in fields if "|" not in name]
        found = [cls.from_values(i, [fields.get(f) for f in batch_fields(i)]) for i in ids]
        return sorted((b for b in found if b), key=lambda b: (b.registered_ms, b.id))
