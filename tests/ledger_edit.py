"""Raw reads and hand edits of the v2 ledger, for tests that inspect Redis or age a hold without waiting.

Key names come from `Keys`, records are parsed by `records.py`; only the few field names a test
edits are spelled here (`CARD_FIELDS`), and every edit is read back through `records` so that a
name or packing that drifted from the ledger's fails here, loudly, instead of editing nothing.

A card's transaction lives in its card hash (field ``t:<txId>``); a Debit's hold deadline is
inside that packed record *and* is the score of the card's entry in its bucket's ``holds``
(the sweeper's work list): `set_hold_deadlines` moves both.
"""

from __future__ import annotations

import dataclasses

from giftcard_provider.keys import hold_member
from giftcard_provider.records import Card, Operation, Transaction

# Card attribute (records.Card) -> its field in the card hash (keys.py), for the attributes tests edit.
CARD_FIELDS = {
    "status": "st",
    "status_reason": "sr",
    "emission_ms": "from",
    "expiring_ms": "to",
    "available": "av",
    "held": "hd",
}


def card_hash(store, card_id: str) -> dict[str, str]:
    """Every field of the card's hash, as stored."""
    return store.redis.hgetall(store.keys.card(card_id))


def stored_card(store, card_id: str) -> Card:
    """The card as stored (balances as written: no due hold counted as available)."""
    return Card.from_hash(card_id, card_hash(store, card_id))


def edit_card(store, card_id: str, **changes) -> None:
    """Overwrite some of a card's own fields by hand, e.g. edit_card(store, id, status="blocked",
    expiring_ms=1). Attributes are records.Card's; no event is written (verify ignores status and dates)."""
    store.redis.hset(store.keys.card(card_id), mapping={CARD_FIELDS[a]: str(v) for a, v in changes.items()})
    card = stored_card(store, card_id)
    assert {a: getattr(card, a) for a in changes} == changes, "the card hash did not take the edit"


def transaction_field(tx_id: str) -> str:
    """The card hash field holding a transaction's packed record."""
    return f"t:{tx_id}"


def raw_transaction(store, card_id: str, tx_id: str) -> str | None:
    """A transaction's packed record as stored, or None."""
    return store.redis.hget(store.keys.card(card_id), transaction_field(tx_id))


def write_raw_transaction(store, card_id: str, tx_id: str, packed: str) -> None:
    """Overwrite a transaction's packed record by hand (to damage it, or to put it back)."""
    store.redis.hset(store.keys.card(card_id), transaction_field(tx_id), packed)


def stored_transaction(store, card_id: str, tx_id: str) -> Transaction:
    """A transaction as stored, parsed by records.Transaction.unpack (counters only: no requestId etc.)."""
    packed = raw_transaction(store, card_id, tx_id)
    assert packed is not None, f"card {card_id} has no transaction {tx_id}"
    transaction = Transaction.unpack(tx_id, packed)
    assert transaction is not None, f"transaction {tx_id} has an unknown operation: {packed!r}"
    return transaction


def pack_transaction(transaction: Transaction) -> str:
    """The packed record of a transaction (ledger.lua: write_tx)."""
    return transaction.pack()


def hold_deadline(store, card_id: str, tx_id: str) -> int | None:
    """The deadline of a hold in its bucket's holds (the sweeper's list), or None if it has no entry."""
    score = store.redis.zscore(store.keys.holds(card_id[:2]), hold_member(card_id, tx_id))
    return None if score is None else int(score)


def set_hold_entry(store, card_id: str, tx_id: str, deadline_ms: int) -> None:
    """Move (or add) only the bucket's holds entry of a hold, leaving its transaction as it is: a hand edit
    that makes the two disagree."""
    store.redis.zadd(store.keys.holds(card_id[:2]), {hold_member(card_id, tx_id): deadline_ms})


def holds_of(store, card_id: str) -> dict[str, int]:
    """The card's entries in its bucket's holds: txId -> deadline (other cards of the bucket left out)."""
    head = hold_member(card_id, "")
    entries = store.redis.zrange(store.keys.holds(card_id[:2]), 0, -1, withscores=True)
    return {member[len(head) :]: int(score) for member, score in entries if member.startswith(head)}


def set_hold_deadlines(store, card_id: str, deadlines: dict[str, int]) -> None:
    """Move Debits' hold deadlines (as if their lifetime were other), in their records and in the
    bucket's holds, in one round trip, so that no money call in between sees half of it.

    Each must still be holding money, with its entry in the bucket's holds."""
    card_key, holds_key = store.keys.card(card_id), store.keys.holds(card_id[:2])
    packed = {}
    for tx_id, deadline_ms in deadlines.items():
        t = stored_transaction(store, card_id, tx_id)
        assert t.debit and t.held > 0, f"{tx_id} holds nothing: {t}"
        assert hold_deadline(store, card_id, tx_id) is not None, f"{tx_id} has no entry in the bucket's holds"
        packed[tx_id] = pack_transaction(dataclasses.replace(t, hold_deadline_ms=deadline_ms))
    pipe = store.redis.pipeline(transaction=False)  # the card and its bucket's holds share one slot
    for tx_id, deadline_ms in deadlines.items():
        pipe.hset(card_key, transaction_field(tx_id), packed[tx_id])
        pipe.zadd(holds_key, {hold_member(card_id, tx_id): deadline_ms})
    pipe.execute()


def make_due(store, card_id: str, tx_id: str, deadline_ms: int = 1) -> None:
    """Move one hold's deadline into the past (as if its lifetime had run out), without waiting."""
    set_hold_deadlines(store, card_id, {tx_id: deadline_ms})


def operation_records(store, card_id: str, tx_id: str) -> list[Operation]:
    """A transaction's settlement and cancellation records as stored (o:<tx>:<k>, p:<tx>:<k>), oldest first."""
    t = stored_transaction(store, card_id, tx_id)
    names = [f"{tx_id}:{k}" for k in range(1, t.records + 1)]
    if not names:
        return []
    values = store.redis.hmget(store.keys.card(card_id), [f"{p}:{n}" for n in names for p in ("o", "p")])
    return [Operation.unpack(o, p or "") for o, p in zip(values[::2], values[1::2], strict=True)]
