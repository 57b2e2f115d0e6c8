"""Ledger verification: recompute every card from the event log, check every cap, index and the books.

This is the proof that nothing was created or lost. For each card, its events are replayed
(from `created`, or from `imported` for a card the v1 -> v2 migration brought in, or from the
first event retention kept; a card whose events retention trimmed entirely is checked without
them): each event's recorded balances must follow from the previous ones, and the last must
equal the card's balances. Every transaction's settlements and cancellations
must add up to its counters and stay within their caps, and every hold must be in the bucket's
hold index. Then, bucket by bucket, the books must equal the sum of the bucket's cards, and the
books' own totals must agree with each other (records.Books).

Nothing here walks the keyspace: cards are found through the buckets' card lists, events in the
buckets' event logs, so the cost grows with the cards and events read.

No false reports under traffic: each card is read in one call (gc_read_ledger) and its bucket's
events after it, so every event up to the card's `seq` is there to replay; later events are left
out. Each bucket's books and the sum of its cards are read in one call (gc_read_bucket).

The owner index lives outside the cards' slots and is written after the card (store.create_card),
so it is checked both ways: a card it does not name was never handed out (its creation was
interrupted), and an entry that names no card must never exist.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from .connection import is_cluster
from .events import bucket_log
from .keys import Keys, buckets, owner_member
from .ledger_library import RELEASE, Library
from .records import EVENT_DELTAS, MARKER_EVENTS, Books, Event, LedgerSnapshot, TransactionSnapshot

READ_BATCH = 200  # cards read per pipeline


@dataclass
class Report:
    checked: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)  # card id -> its problems
    dangling: list[str] = field(default_factory=list)  # index entries that name no card
    unreachable: list[str] = field(default_factory=list)
    books: list[str] = field(default_factory=list)  # books that differ from the cards or from themselves

    @property
    def problems(self) -> list[str]:
        return [p for problems in self.failed.values() for p in problems] + self.dangling + self.books


def verify_store(client: redis.Redis, keys: Keys, card_id: str | None = None, library: Library = RELEASE) -> Report:
    """One card (without the code index and the books, which are per bucket), or every card, index
    entry and book.

    Unreachable cards are those whose creation stopped before the owner index was written (Redis
    failed in between). The caller got a 503, so the card's id and code were never handed out; it
    has no money and no transactions. Not a ledger problem: garbage of a few hundred bytes.
    """
    report = Report()
    if card_id:
        _verify_cards(client, keys, library, card_id[:2], [card_id], report, whole_bucket=False)
        return report
    used = used_buckets(client, keys)
    code_entries = _code_entries(client, keys)
    listed: set[str] = set()
    for bucket in used:
        ids = _bucket_card_ids(client, keys, bucket)
        listed.update(ids)
        _verify_cards(client, keys, library, bucket, ids, report, whole_bucket=True, code_entries=code_entries)
        report.books += _verify_books(client, keys, library, bucket)
    for digest, named_id in sorted(code_entries.items()):
        if named_id not in listed and not client.exists(keys.card(named_id)):
            report.dangling.append(f"code index entry {digest}: names card {named_id}, which does not exist")
    report.dangling += _dangling_owner_entries(client, keys)
    return report


def verify_all(client: redis.Redis, keys: Keys, library: Library = RELEASE) -> tuple[int, list[str]]:
    """(cards checked, problems) over the whole store."""
    report = verify_store(client, keys, library=library)
    return report.checked, report.problems


def verify_card(client: redis.Redis, keys: Keys, card_id: str, library: Library = RELEASE) -> list[str]:
    """Every inconsistency found on one card, as sentences; [] means the card is sound."""
    return verify_store(client, keys, card_id, library).problems


def unreachable_cards(client: redis.Redis, keys: Keys, library: Library = RELEASE) -> list[str]:
    return verify_store(client, keys, library=library).unreachable


def card_ids(client: redis.Redis, keys: Keys) -> Iterable[str]:
    """Every card id, bucket by bucket, from the buckets' card lists."""
    for bucket in used_buckets(client, keys):
        yield from _bucket_card_ids(client, keys, bucket)


def used_buckets(client: redis.Redis, keys: Keys) -> list[str]:
    """The buckets that hold cards, in one round trip: a card's creation (or import) writes its
    bucket's events and books in the same call, and neither is ever deleted. A walk skips the
    others, so a small store does not pay for 256 x 64 shard reads."""
    everyone = buckets()
    pipe = client.pipeline(transaction=False)
    for bucket in everyone:
        pipe.exists(keys.events(bucket), keys.books(bucket))  # one slot: the bucket's
    return [b for b, n in zip(everyone, pipe.execute(), strict=True) if n]


def _bucket_card_ids(client, keys: Keys, bucket: str) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys.card_lists(bucket):
        pipe.hkeys(key)
    return sorted(card_id for ids in pipe.execute() for card_id in ids)


def _code_entries(client, keys: Keys) -> dict[str, str]:
    """Every code index entry (digest -> card id), from every code shard that exists: a moved card's
    entry may live in a bucket that holds no card, and a stray entry anywhere must be found."""
    entries: dict[str, str] = {}
    shards = _existing(client, [keys.code_indexes(bucket) for bucket in buckets()])  # a bucket's share a slot
    for start in range(0, len(shards), 256):
        pipe = client.pipeline(transaction=False)
        for key in shards[start : start + 256]:
            pipe.hgetall(key)
        for shard in pipe.execute():
            entries.update(shard)
    return entries


def _verify_cards(client, keys, library, bucket, ids, report, *, whole_bucket, code_entries=None) -> None:
    snapshots: dict[str, LedgerSnapshot | str | None] = {}
    for start in range(0, len(ids), READ_BATCH):
        batch = ids[start : start + READ_BATCH]
        function = library.function("gc_read_ledger")
        replies = library.run(
            client,
            lambda batch=batch, function=function: _read_ledgers(client, keys, function, batch),
        )
        for cid, reply in zip(batch, replies, strict=True):
            try:
                snapshots[cid] = LedgerSnapshot.from_reply(cid, reply)
            except (KeyError, ValueError, IndexError, TypeError) as exc:  # damaged by hand: what verify is for
                snapshots[cid] = f"unreadable record ({type(exc).__name__}: {exc})"
    # Read after the cards: every event up to their seq is here, unless retention trimmed it.
    events, oldest_ms = _bucket_events(client, keys, bucket)
    owners = _owner_presence(client, keys, [s for s in snapshots.values() if isinstance(s, LedgerSnapshot)])
    codes_per_card = defaultdict(int)
    for named_id in (code_entries or {}).values():
        codes_per_card[named_id] += 1
    for cid in ids:
        report.checked += 1
        snapshot = snapshots[cid]
        if snapshot is None:
            report.failed[cid] = [f"card {cid}: not found"]
            continue
        if isinstance(snapshot, str):
            report.failed[cid] = [f"card {cid}: {snapshot}"]
            continue
        # Retention trims a bucket's oldest events: a card created before the oldest one kept (or in a
        # bucket with none kept) may have lost its first events, or all of them.
        trimmed = oldest_ms is None or oldest_ms >= snapshot.card.created_ms
        problems = _check_card(snapshot, events.get(cid, []), trimmed)
        gaps = [] if owners[cid] else ["owner"]
        if code_entries is not None and codes_per_card[cid] != 1:
            gaps.append("code")
        card = snapshot.card
        unreachable = gaps == ["owner"] and card.seq == 1 and not snapshot.transactions
        if unreachable and whole_bucket:
            report.unreachable.append(cid)
        elif gaps and not unreachable:
            problems.append(f"missing from the {' and '.join(gaps)} index")
        if problems:
            report.failed[cid] = [f"card {cid}: {p}" for p in problems]


def _read_ledgers(client, keys: Keys, function: str, ids: list[str]) -> list:
    pipe = client.pipeline(transaction=False)
    for cid in ids:
        pipe.fcall_ro(function, 2, keys.card(cid), keys.holds(cid[:2]))
    return pipe.execute()


def _bucket_events(client, keys: Keys, bucket: str) -> tuple[dict[str, list[Event]], int | None]:
    """The bucket's whole event log, per card, oldest first, and the time of its oldest event."""
    per_card: dict[str, list[Event]] = defaultdict(list)
    oldest_ms = None
    for event in bucket_log(client, keys, bucket):
        per_card[event.card_id].append(event)
        oldest_ms = event.at_ms if oldest_ms is None else oldest_ms
    return per_card, oldest_ms


def _owner_presence(client, keys: Keys, snapshots: list[LedgerSnapshot]) -> dict[str, bool]:
    pipe = client.pipeline(transaction=False)
    for s in snapshots:
        pipe.zscore(keys.owner_index(s.card.profile_id), owner_member(s.card.profile_id, s.card.id))
    return defaultdict(bool, {s.card.id: score is not None for s, score in zip(snapshots, pipe.execute(), strict=True)})


def _check_card(snapshot: LedgerSnapshot, events: list[Event], trimmed: bool) -> list[str]:
    card = snapshot.card
    problems: list[str] = []
    replayed = [e for e in events if e.seq <= card.seq]  # later ones landed after the card was read
    available = held = None
    expected_seq = replayed[0].seq if replayed else None
    for event in replayed:
        where = f"event {event.id}"
        if event.seq != expected_seq:
            problems.append(f"{where}: seq {event.seq}, expected {expected_seq}")
        expected_seq = event.seq + 1
        if event.type in MARKER_EVENTS:
            if event.amount != 0:
                problems.append(f"{where}: a {event.type} event moves {event.amount}")
            if event.type == "created" and (event.seq != 1 or (event.available, event.held) != (0, 0)):
                problems.append(f"{where}: created with seq {event.seq} and balances {event.available}/{event.held}")
            if event.type == "imported" or available is None:
                available, held = event.available, event.held  # the migration's (or retention's) starting point
        elif event.type in EVENT_DELTAS:
            d_available, d_held = EVENT_DELTAS[event.type]
            if available is None:  # retention trimmed the earlier events: start from this one's
                available, held = event.available - d_available * event.amount, event.held - d_held * event.amount
            available += d_available * event.amount
            held += d_held * event.amount
            if event.amount <= 0:
                problems.append(f"{where}: non-positive amount {event.amount}")
        else:
            problems.append(f"{where}: unknown type {event.type!r}")
            continue
        if (event.available, event.held) != (available, held):
            problems.append(
                f"{where}: records available={event.available} held={event.held}, replay gives {available}/{held}"
            )
    if replayed and replayed[0].seq != 1 and replayed[0].type != "imported" and not trimmed:
        problems.append(f"events before seq {replayed[0].seq} are missing")
    if not replayed:
        if not trimmed:
            problems.append("no events")
    elif replayed[-1].seq != card.seq:
        problems.append(f"the card's seq is {card.seq}, its last event's {replayed[-1].seq}")
    elif (card.available, card.held) != (available, held):
        problems.append(f"balances available={card.available} held={card.held} differ from events {available}/{held}")
    if card.available < 0 or card.held < 0:
        problems.append(f"negative balance: available={card.available} held={card.held}")

    total_held = open_debits = credits = 0
    for tx_id, record in snapshot.transactions.items():
        problems += [f"transaction {tx_id or '?'}: {p}" for p in _verify_transaction(tx_id, record, snapshot)]
        tx = record.transaction
        if tx is not None:
            total_held += tx.held
            open_debits += tx.debit and tx.released + tx.refunded < tx.value
            credits += not tx.debit
    if total_held != card.held:
        problems.append(f"card held {card.held} differs from the sum of its transactions' holds {total_held}")
    if (card.open_debits, card.credits) != (open_debits, credits):
        problems.append(
            f"counters say {card.open_debits} open Debit(s) and {card.credits} Credit(s); "
            f"the transactions give {open_debits} and {credits}"
        )
    if len(set(snapshot.order)) != len(snapshot.order) or "" in snapshot.order:
        problems.append("the transaction list has gaps or repeats")
    for request_id, tx_id in snapshot.requests.items():
        if tx_id not in snapshot.transactions or snapshot.transactions[tx_id].transaction is None:
            problems.append(f"requestId {request_id!r} points to a missing transaction")
    return problems


def _verify_transaction(tx_id: str, record: TransactionSnapshot, snapshot: LedgerSnapshot):
    tx = record.transaction
    if tx is None:
        yield "listed but missing, or of an unknown operation"
        return
    if not record.listed:
        yield "missing from the transaction list"
    if any(op.kind not in ("s", "c") for op in record.settlements + record.cancellations):
        yield "a settlement or cancellation record is missing or damaged"
    settlements = sum(op.minor for op in record.settlements)
    cancellations = sum(op.minor for op in record.cancellations)
    if settlements != tx.settled:
        yield f"settlements sum to {settlements}, counter says {tx.settled}"
    if tx.debit:
        if tx.held + tx.settled + tx.released != tx.value:
            yield f"held {tx.held} + settled {tx.settled} + released {tx.released} != value {tx.value}"
        if tx.refunded > tx.settled:
            yield f"refunded {tx.refunded} more than settled {tx.settled}"
        if cancellations != tx.released + tx.refunded:
            yield f"cancellations sum to {cancellations}, released + refunded is {tx.released + tx.refunded}"
        if min(tx.held, tx.settled, tx.released, tx.refunded) < 0:
            yield "negative counter"
        score = snapshot.hold_scores.get(tx_id)  # the card's open holds are its entries there
        if tx.held > 0 and score != tx.hold_deadline_ms:
            yield f"hold missing from the bucket's hold deadlines (found {score}, deadline {tx.hold_deadline_ms})"
        elif tx.held == 0 and score is not None:
            yield f"closed hold left in the bucket's hold deadlines (deadline {score})"
    else:
        if cancellations != tx.cancelled:
            yield f"cancellations sum to {cancellations}, counter says {tx.cancelled}"
        if tx.cancelled > tx.value or tx.settled > tx.value:
            yield f"settled {tx.settled} or cancelled {tx.cancelled} above value {tx.value}"


def _verify_books(client, keys: Keys, library: Library, bucket: str) -> list[str]:
    """The bucket's books against the sum of its cards (read at one instant), and against themselves."""
    call_keys = [keys.books(bucket), *keys.card_lists(bucket)]
    reply = library.call(client, "gc_read_bucket", call_keys, [], readonly=True)
    _, flat_books, flat_sums = reply
    books = Books.total([dict(zip(flat_books[::2], flat_books[1::2], strict=True))])
    sums = dict(zip(flat_sums[::2], (int(v) for v in flat_sums[1::2]), strict=True))
    problems = []
    for currency in sorted(set(books) | {name.split(":", 1)[0] for name in sums}):
        book = books.get(currency) or Books(currency)
        cards = (
            sums.get(f"{currency}:available", 0),
            sums.get(f"{currency}:held", 0),
            sums.get(f"{currency}:cards", 0),
        )
        if (book.available, book.held, book.cards) != cards:
            problems.append(
                f"books {bucket} {currency}: available/held/cards {book.available}/{book.held}/{book.cards}, "
                f"the cards sum to {cards[0]}/{cards[1]}/{cards[2]}"
            )
        problems += [f"books {bucket} {currency}: {p}" for p in book.problems()]
    return problems


def _dangling_owner_entries(client, keys: Keys) -> list[str]:
    """Owner index entries that name a card which does not exist, or has another owner."""
    problems = []
    names = keys.owner_indexes()  # each in a slot of its own: grouped only where there are no slots
    shards = _existing(client, [[n] for n in names] if is_cluster(client) else _chunks(names, 64))
    for start in range(0, len(shards), 256):
        pipe = client.pipeline(transaction=False)
        for key in shards[start : start + 256]:
            pipe.zrange(key, 0, -1)
        for key, members in zip(shards[start : start + 256], pipe.execute(), strict=True):
            if not members:
                continue
            parsed = [m.rpartition("|") for m in members]
            check = client.pipeline(transaction=False)
            for _, _, cid in parsed:
                check.hget(keys.card(cid), "own") if len(cid) == 32 else check.echo("")
            for (owner, _, cid), found in zip(parsed, check.execute(), strict=True):
                if found != owner:
                    problems.append(f"owner index {key}: names card {cid}, which does not exist or has another owner")
    return problems


def _existing(client, groups: list[list[str]]) -> list[str]:
    """The keys that exist among `groups`, each a list of keys that one node serves (one hash slot on
    a cluster): a multi-key EXISTS per group first, so that a small store skips most groups (16,384
    code shards cost 256 commands, not 16,384), then one EXISTS per key of the larger groups that hold any."""
    pipe = client.pipeline(transaction=False)
    for members in groups:
        pipe.exists(*members)
    counted = [(members, n) for members, n in zip(groups, pipe.execute(), strict=True) if n]
    found = [members[0] for members, _ in counted if len(members) == 1]  # a group of one is answered
    names = [name for members, _ in counted if len(members) > 1 for name in members]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return found + [name for name, n in zip(names, pipe.execute(), strict=True) if n]


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]
