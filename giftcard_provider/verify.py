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


def _sum(records: list[str]) -> int:
    return sum(int(r.split("|")[1]) for r in records)


def verify_card(client: redis.Redis, keys: Keys, card_id: str, library: Library = RELEASE) -> list[str]:
    """Every inconsistency found on one card, as sentences; [] means the card is sound."""
    return _check_card(client, keys, card_id, library)[0]


@dataclass(frozen=True)
class _Snapshot:
    """One card's ledger as gc_read_ledger read it, at one instant."""

    card: dict[str, str]
    journal: list[tuple[str, dict[str, str]]]
    holding: set[str]
    requests: dict[str, str]
    transactions: dict[str, tuple[dict[str, str], list[str], list[str]]]  # id -> (fields, settlements, cancels)

    @classmethod
    def read(cls, client, keys: Keys, card_id: str, library: Library) -> _Snapshot | None:
        call_keys = [
            keys.card(card_id),
            keys.transactions(card_id),
            keys.requests(card_id),
            keys.journal(card_id),
            keys.holds(card_id),
        ]
        reply = library.call(client, "gc_read_ledger", call_keys, [], readonly=True)
        if reply[0] == "not_found":
            return None
        _, card, journal, holding, requests, *txs = reply
        return cls(
            _pairs(card),
            [(entry_id, _pairs(fields)) for entry_id, fields in journal],
            set(holding),
            _pairs(requests),
            {tx_id: (_pairs(fields), settled, cancelled) for tx_id, fields, settled, cancelled in txs},
        )


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _check_card(client: redis.Redis, keys: Keys, card_id: str, library: Library) -> tuple[list[str], bool]:
    """(verify_card's problems, whether the card is unreachable: see unreachable_cards)."""
    snapshot = _Snapshot.read(client, keys, card_id, library)
    if snapshot is None:
        return [f"card {card_id}: not found"], False
    card = snapshot.card
    problems: list[str] = []
    available = held = 0
    for expected_seq, (entry_id, entry) in enumerate(snapshot.journal, 1):
        kind, amount = entry["kind"], int(entry["amount"])
        if kind not in DELTAS:
            problems.append(f"journal {entry_id}: unknown kind {kind!r}")
            continue
        if int(entry["seq"]) != expected_seq:
            problems.append(f"journal {entry_id}: seq {entry['seq']}, expected {expected_seq}")
        d_available, d_held = DELTAS[kind]
        available += d_available * amount
        held += d_held * amount
        if (int(entry["available"]), int(entry["held"])) != (available, held):
            problems.append(
                f"journal {entry_id}: records available={entry['available']} held={entry['held']}, "
                f"replay gives {available}/{held}"
            )
        if amount <= 0:
            problems.append(f"journal {entry_id}: non-positive amount {amount}")
    if (int(card["available"]), int(card["held"])) != (available, held):
        problems.append(
            f"balances available={card['available']} held={card['held']} differ from journal {available}/{held}"
        )
    if available < 0 or held < 0:
        problems.append(f"negative balance: available={available} held={held}")

    total_held = 0
    for tx_id, (tx, settlements, cancellations) in snapshot.transactions.items():
        problems += [
            f"transaction {tx_id}: {p}"
            for p in _verify_transaction(tx_id, tx, settlements, cancellations, snapshot.holding)
        ]
        total_held += int(tx.get("held") or 0)
    if total_held != int(card["held"]):
        problems.append(f"card held {card['held']} differs from the sum of its transactions' holds {total_held}")
    for request_id, packed in snapshot.requests.items():
        if packed.split("|")[0] not in snapshot.transactions:
            problems.append(f"requestId {request_id!r} points to a missing transaction")
    gaps = _index_gaps(client, keys, card_id, card)
    unreachable = bool(gaps) and card["seq"] == "0" and not snapshot.transactions  # an interrupted creation
    if gaps and not unreachable:
        problems.append(f"missing from the {' and '.join(gaps)} index")
    return [f"card {card_id}: {p}" for p in problems], unreachable


def _index_gaps(client, keys: Keys, card_id: str, card: dict) -> list[str]:
    """The indexes ("code", "owner") that do not name the card."""
    gaps = []
    # Cards made before codeDigest was stored cannot be checked against the code index.
    if "codeDigest" in card and client.get(keys.code_index(card["codeDigest"])) != card_id:
        gaps.append("code")
    if not client.sismember(keys.owner_index(card["profileId"]), card_id):
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


def _verify_transaction(
    tx_id: str, tx: dict[str, str], settlement_records: list[str], cancellation_records: list[str], holding: set[str]
) -> Iterator[str]:
    if not tx:
        yield "listed but missing"
        return
    value = int(tx["value"])
    settled = int(tx["settled"])
    settlements = _sum(settlement_records)
    cancellations = _sum(cancellation_records)
    if settlements != settled:
        yield f"settlements sum to {settlements}, counter says {settled}"
    if tx["operation"] == "Debit":
        held, released, refunded = int(tx["held"]), int(tx["released"]), int(tx["refunded"])
        if held + settled + released != value:
            yield f"held {held} + settled {settled} + released {released} != value {value}"
        if refunded > settled:
            yield f"refunded {refunded} more than settled {settled}"
        if cancellations != released + refunded:
            yield f"cancellations sum to {cancellations}, released + refunded is {released + refunded}"
        if min(held, settled, released, refunded) < 0:
            yield "negative counter"
        if (held > 0) != (tx_id in holding):
            yield f"hold of {held} {'missing from' if held else 'left in'} the hold deadlines"
    elif tx["operation"] == "Credit":
        cancelled = int(tx["cancelled"])
        if cancellations != cancelled:
            yield f"cancellations sum to {cancellations}, counter says {cancelled}"
        if cancelled > value or settled > value:
            yield f"settled {settled} or cancelled {cancelled} above value {value}"
    else:
        yield f"unknown operation {tx['operation']!r}"


def card_ids(client: redis.Redis, keys: Keys) -> Iterator[str]:
    """Every card id, by SCAN (operators' tool: never on a request path)."""
    for key in client.scan_iter(match=keys.all_cards_pattern(), count=1000):
        if card_id := keys.card_id_in(key):
            yield card_id


def verify_all(client: redis.Redis, keys: Keys) -> tuple[int, list[str]]:
    """(cards checked, problems) over the whole store."""
    report = verify_store(client, keys)
    return report.checked, report.problems
