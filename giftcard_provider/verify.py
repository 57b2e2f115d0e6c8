"""Ledger verification: recompute a card from its journal and check every cap and index.

This is the proof that nothing was created or lost: the journal is replayed
from zero, each entry's recorded balances must follow from the previous ones,
the end must equal the card's balances, and every transaction's settlements and
cancellations must add up to its counters and stay within their caps.

Each card is read in one call of the read-only ledger function gc_read_ledger,
so a write can never land between two of the reads and make a sound card look
broken: verify runs beside live traffic without false reports.

The code and owner indexes live outside the cards' slots and are written after
the card (store.create_card), so they are checked both ways: a card its code
index does not name was never handed out (its creation was interrupted), and
an index entry that names no card must never exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from .keys import Keys
from .ledger_library import RELEASE, Library
from .records import Card, LedgerSnapshot, TransactionSnapshot

# Journal kind -> (change of available, change of held), per unit of `amount`.
DELTAS = {
    "credit": (1, 0),
    "authorize": (-1, 1),
    "settle": (0, -1),
    "settle_credit": (0, 0),
    "release": (1, -1),
    "refund": (1, 0),
    "expire": (1, -1),
    "reverse_credit": (-1, 0),
}


def verify_card(client: redis.Redis, keys: Keys, card_id: str, library: Library = RELEASE) -> list[str]:
    """Every inconsistency found on one card, as sentences; [] means the card is sound."""
    return _check_card(client, keys, card_id, library)[0]


def _check_card(client: redis.Redis, keys: Keys, card_id: str, library: Library) -> tuple[list[str], bool]:
    """(verify_card's problems, whether the card is unreachable: see unreachable_cards)."""
    call_keys = [keys.card(card_id), keys.transactions(card_id), keys.requests(card_id)]
    call_keys += [keys.journal(card_id), keys.holds(card_id)]
    reply = library.call(client, "gc_read_ledger", call_keys, [], readonly=True)
    try:
        snapshot = LedgerSnapshot.from_reply(card_id, reply)
    except (KeyError, ValueError) as exc:  # a record damaged by hand: exactly what verify is for
        return [f"card {card_id}: unreadable record ({type(exc).__name__}: {exc})"], False
    if snapshot is None:
        return [f"card {card_id}: not found"], False
    card = snapshot.card
    problems: list[str] = []
    available = held = 0
    for expected_seq, entry in enumerate(snapshot.journal, 1):
        if entry.kind not in DELTAS:
            problems.append(f"journal {entry.entry_id}: unknown kind {entry.kind!r}")
            continue
        if entry.seq != expected_seq:
            problems.append(f"journal {entry.entry_id}: seq {entry.seq}, expected {expected_seq}")
        d_available, d_held = DELTAS[entry.kind]
        available += d_available * entry.amount
        held += d_held * entry.amount
        if (entry.available, entry.held) != (available, held):
            problems.append(
                f"journal {entry.entry_id}: records available={entry.available} held={entry.held}, "
                f"replay gives {available}/{held}"
            )
        if entry.amount <= 0:
            problems.append(f"journal {entry.entry_id}: non-positive amount {entry.amount}")
    if (card.available, card.held) != (available, held):
        problems.append(f"balances available={card.available} held={card.held} differ from journal {available}/{held}")
    if available < 0 or held < 0:
        problems.append(f"negative balance: available={available} held={held}")

    total_held = 0
    for tx_id, record in snapshot.transactions.items():
        problems += [f"transaction {tx_id}: {p}" for p in _verify_transaction(tx_id, record, snapshot.holding)]
        total_held += record.transaction.held if record.transaction else 0
    if total_held != card.held:
        problems.append(f"card held {card.held} differs from the sum of its transactions' holds {total_held}")
    for request_id, tx_id in snapshot.requests.items():
        if tx_id not in snapshot.transactions:
            problems.append(f"requestId {request_id!r} points to a missing transaction")
    gaps = _index_gaps(client, keys, card)
    unreachable = bool(gaps) and card.seq == 0 and not snapshot.transactions  # an interrupted creation
    if gaps and not unreachable:
        problems.append(f"missing from the {' and '.join(gaps)} index")
    return [f"card {card_id}: {p}" for p in problems], unreachable


def _index_gaps(client, keys: Keys, card: Card) -> list[str]:
    """The indexes ("code", "owner") that do not name the card."""
    gaps = []
    # Cards made before codeDigest was stored cannot be checked against the code index.
    if card.code_digest is not None and client.get(keys.code_index(card.code_digest)) != card.id:
        gaps.append("code")
    if not client.sismember(keys.owner_index(card.profile_id), card.id):
        gaps.append("owner")
    return gaps


@dataclass
class Report:
    checked: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)  # card id -> its problems
    dangling: list[str] = field(default_factory=list)  # index entries that name no card
    unreachable: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [p for problems in self.failed.values() for p in problems] + self.dangling


def verify_store(client: redis.Redis, keys: Keys, card_id: str | None = None, library: Library = RELEASE) -> Report:
    """One card, or every card (by SCAN) and then every index entry.

    Unreachable cards are those whose creation stopped before their indexes were
    written (Redis failed in between). The caller got a 503, so the card's id and
    code were never handed out; it has no money and no transactions, and nothing
    can reach it. Not a ledger problem: garbage that costs about 1 KiB each.
    """
    report = Report()
    for cid in [card_id] if card_id else card_ids(client, keys):
        report.checked += 1
        problems, unreachable = _check_card(client, keys, cid, library)
        if problems:
            report.failed[cid] = problems
        if unreachable and not card_id:
            report.unreachable.append(cid)
    if not card_id:
        report.dangling = dangling_index_entries(client, keys)
    return report


def unreachable_cards(client: redis.Redis, keys: Keys) -> list[str]:
    return verify_store(client, keys).unreachable


def dangling_index_entries(client: redis.Redis, keys: Keys) -> list[str]:
    """Index entries that name a card which does not exist, or not back (by SCAN: operators' tool)."""
    problems = []
    for key in client.scan_iter(match=keys.code_index_pattern(), count=1000):
        card_id = client.get(key)
        digest = key[len(keys.code_index("")) :]
        if card_id is None:
            continue  # deleted since the SCAN saw it
        exists, card_digest = client.hmget(keys.card(card_id), "id", "codeDigest")
        if exists is None or card_digest not in (digest, None):
            problems.append(f"code index {key}: names card {card_id}, which does not exist or has another code")
    for key in client.scan_iter(match=keys.owner_index_pattern(), count=1000):
        profile_id = key[len(keys.owner_index("")) :]
        for card_id in client.smembers(key):
            if client.hget(keys.card(card_id), "profileId") != profile_id:
                problems.append(f"owner index {key}: names card {card_id}, which does not exist or has another owner")
    return problems


def _verify_transaction(tx_id: str, record: TransactionSnapshot, holding: set[str]) -> Iterator[str]:
    tx = record.transaction
    if tx is None:
        yield "listed but missing"
        return
    settlements = sum(op.minor for op in record.settlements)
    cancellations = sum(op.minor for op in record.cancellations)
    if settlements != tx.settled:
        yield f"settlements sum to {settlements}, counter says {tx.settled}"
    if tx.operation == "Debit":
        if tx.held + tx.settled + tx.released != tx.value:
            yield f"held {tx.held} + settled {tx.settled} + released {tx.released} != value {tx.value}"
        if tx.refunded > tx.settled:
            yield f"refunded {tx.refunded} more than settled {tx.settled}"
        if cancellations != tx.released + tx.refunded:
            yield f"cancellations sum to {cancellations}, released + refunded is {tx.released + tx.refunded}"
        if min(tx.held, tx.settled, tx.released, tx.refunded) < 0:
            yield "negative counter"
        if (tx.held > 0) != (tx_id in holding):
            yield f"hold of {tx.held} {'missing from' if tx.held else 'left in'} the hold deadlines"
    elif tx.operation == "Credit":
        if cancellations != tx.cancelled:
            yield f"cancellations sum to {cancellations}, counter says {tx.cancelled}"
        if tx.cancelled > tx.value or tx.settled > tx.value:
            yield f"settled {tx.settled} or cancelled {tx.cancelled} above value {tx.value}"
    else:
        yield f"unknown operation {tx.operation!r}"


def card_ids(client: redis.Redis, keys: Keys) -> Iterator[str]:
    """Every card id, by SCAN (operators' tool: never on a request path)."""
    for key in client.scan_iter(match=keys.all_cards_pattern(), count=1000):
        if card_id := keys.card_id_in(key):
            yield card_id


def verify_all(client: redis.Redis, keys: Keys) -> tuple[int, list[str]]:
    """(cards checked, problems) over the whole store."""
    report = verify_store(client, keys)
    return report.checked, report.problems
