"""The ledger's records, typed: the one module that knows Redis's field names and record layouts.

Redis hashes hold cards and transactions as flat string fields (keys.py has the
layout); the journal is a stream; settlements and cancellations are packed
"oid|minor|dateMs|requestId|reason" strings. Everything above the store (the
HTTP blueprints, the CLI, verify, bench) reads these records instead. (What the
store writes, and the key names, are in store.py, keys.py and ledger.lua.)

Amounts are integer minor units of the card's currency; times are epoch
milliseconds on Redis's clock.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    code_digest: str | None  # None on cards made before it was stored
    token: str
    balance_limit: int
    seq: int  # journal entries so far
    moving: bool = False  # marked movedTo by a layout migration: this release changes nothing on it

    @classmethod
    def from_hash(cls, card_id: str, fields: dict[str, str], due_holds: int = 0, now_ms: int = 0) -> Card:
        return cls(
            id=card_id,
            currency=fields["currency"],
            exponent=int(fields["exponent"]),
            available=int(fields["available"]),
            held=int(fields["held"]),
            due_holds=due_holds,
            now_ms=now_ms,
            status=fields["status"],
            status_reason=fields.get("statusReason", ""),
            status_changed_ms=_int(fields, "statusChangedMs") or None,
            profile_id=fields["profileId"],
            restricted_to_owner=fields.get("restrictedToOwner") == "1",
            multiple_redemptions=fields.get("multipleRedemptions") == "1",
            multiple_credits=fields.get("multipleCredits") == "1",
            relation_name=fields.get("relationName", ""),
            caption=fields.get("caption", ""),
            emission_ms=int(fields["emissionMs"]),
            expiring_ms=int(fields["expiringMs"]),
            created_ms=int(fields["createdMs"]),
            code_last4=fields.get("codeLast4", ""),
            code_digest=fields.get("codeDigest"),
            token=fields.get("token", ""),
            balance_limit=_int(fields, "balanceLimit"),
            seq=_int(fields, "seq"),
            moving="movedTo" in fields,
        )

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

    @property
    def debit(self) -> bool:
        return self.operation == "Debit"

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Transaction | None:
        if not fields:
            return None
        return cls(
            id=fields["id"],
            operation=fields["operation"],
            value=int(fields["value"]),
            date_ms=int(fields["dateMs"]),
            request_id=fields["requestId"],
            order_id=fields.get("orderId", ""),
            description=fields.get("description", ""),
            settled=_int(fields, "settled"),
            held=_int(fields, "held"),
            released=_int(fields, "released"),
            refunded=_int(fields, "refunded"),
            cancelled=_int(fields, "cancelled"),
            hold_deadline_ms=_int(fields, "holdDeadlineMs") or None,
        )


@dataclass(frozen=True)
class Operation:
    """A settlement, cancellation or authorization record: {oid, value, date}."""

    oid: str
    minor: int
    date_ms: int
    request_id: str = ""
    reason: str = ""  # "expired" for a hold released by its deadline

    @classmethod
    def parse(cls, packed: str) -> Operation:
        # "oid|minor|dateMs|requestId|reason": the Hub's requestId may itself hold "|".
        oid, minor, date_ms, rest = packed.split("|", 3)
        request_id, _, reason = rest.rpartition("|")
        return cls(oid, int(minor), int(date_ms), request_id, reason)


@dataclass(frozen=True)
class JournalEntry:
    """One money movement of a card, with its balances after it."""

    entry_id: str  # the stream entry id: "<ms>-<n>"
    seq: int
    kind: str  # credit, authorize, settle, settle_credit, release, refund, expire, reverse_credit
    tx_id: str
    ref: str  # the transaction id, or the settlement's / cancellation's oid
    amount: int
    available: int
    held: int
    at_ms: int

    @classmethod
    def from_stream(cls, entry_id: str, fields: dict[str, str]) -> JournalEntry:
        return cls(
            entry_id=entry_id,
            seq=int(fields["seq"]),
            kind=fields["kind"],
            tx_id=fields["tx"],
            ref=fields["ref"],
            amount=int(fields["amount"]),
            available=int(fields["available"]),
            held=int(fields["held"]),
            at_ms=int(fields["at"]),
        )


@dataclass(frozen=True)
class OperationList:
    """A transaction's settlements or cancellations as gc_read_operations read them, with the release
    its hold's deadline has made due but no call has written yet (the very record ledger.lua's
    release_if_due will write: oid "<txId>-expired", the held amount, dated at the deadline)."""

    records: list[Operation]
    exponent: int
    due_release: Operation | None

    @classmethod
    def from_reply(cls, tx_id: str, reply: list) -> OperationList | None:
        """{"ok", nowMs, exponent, held, holdDeadlineMs, record...} | {"not_found"}"""
        if reply[0] == "not_found":
            return None
        _, now_ms, exponent, held, deadline, *packed = reply
        due = None
        if held and int(held) > 0 and int(deadline) <= int(now_ms):
            due = Operation(f"{tx_id}-expired", int(held), int(deadline), "", "expired")
        return cls([Operation.parse(p) for p in packed], int(exponent), due)


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def card_from_read(card_id: str, reply: list) -> Card | None:
    """gc_read_card's reply {"ok", nowMs, dueMinor, field, value, ...} | {"not_found"} -> the card."""
    if reply[0] == "not_found":
        return None
    _, now_ms, due, *flat = reply
    return Card.from_hash(card_id, _pairs(flat), int(due), int(now_ms))


@dataclass(frozen=True)
class TransactionSnapshot:
    transaction: Transaction | None  # None: listed by the card but missing
    settlements: list[Operation]
    cancellations: list[Operation]


@dataclass(frozen=True)
class LedgerSnapshot:
    """Everything verify checks about one card, as gc_read_ledger read it at one instant."""

    card: Card
    journal: list[JournalEntry]
    holding: set[str]  # transaction ids in the hold-deadline index
    requests: dict[str, str]  # requestId -> the id of the transaction it made
    transactions: dict[str, TransactionSnapshot]

    @classmethod
    def from_reply(cls, card_id: str, reply: list) -> LedgerSnapshot | None:
        """{"ok", cardFields, journal, holdIds, requestFields, {txId, fields, settlements, cancellations}...}"""
        if reply[0] == "not_found":
            return None
        _, card, journal, holding, requests, *txs = reply
        return cls(
            card=Card.from_hash(card_id, _pairs(card)),
            journal=[JournalEntry.from_stream(entry_id, _pairs(fields)) for entry_id, fields in journal],
            holding=set(holding),
            requests={rid: packed.split("|", 1)[0] for rid, packed in _pairs(requests).items()},
            transactions={
                tx_id: TransactionSnapshot(
                    Transaction.from_hash(_pairs(fields)),
                    [Operation.parse(r) for r in settled],
                    [Operation.parse(r) for r in cancelled],
                )
                for tx_id, fields, settled, cancelled in txs
            },
        )
