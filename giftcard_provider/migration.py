"""The v1 -> v2 layout migration: `flask cards migrate` (the Procfile's release phase runs it) and
`flask cards migrate --cleanup` (docs/ledger-v2.md, "Migration (v1 -> v2)").

`migrate` moves every v1 card into its v2 bucket while v1 processes still serve:

1. The layout marker becomes ``migrating:<cards done>`` (v1 serves under it; v2 does not yet).
2. Each v1 card, found by SCAN, is marked and read in one call in its v1 slot (gc_v1_take: from
   then on v1 refuses every write to it with ``card_moving``), converted here, and written into its
   bucket with its holds, books and an ``imported`` event by one call there (gc_import_card). Its
   code and owner index entries are written from the card's own codeDigest and profileId.
3. The v1 code and owner indexes are copied into their v2 shards (entries that name a card the
   migration did not bring are reported, not copied).
4. A rescan migrates the cards v1 processes created meanwhile; the marker becomes ``v2``. One more
   rescan then takes the cards whose creation read the marker just before it changed (a v1
   creation that reads ``v2`` withdraws its card instead). Then the whole store is verified, and
   if it is sound the time is recorded in ``gc:layout:migrated``.

Every step can be repeated: gc_v1_take marks again, gc_import_card leaves a card that is already
in its bucket as it is, index writes are idempotent. So a migration killed at any point (SIGKILL
included) resumes by running the command again. A card already marked and in its bucket is not
read again. The marker is never taken back from ``v2``, and a store of any other layout is
refused, so running `migrate` on every release is safe: once a run has finished and verified,
later runs read two keys and return (a release phase never walks the keyspace again). A store a
v2 process created (marked v2, nothing recorded) is scanned and verified once.

This module is the only reader of the v1 layout (V1Keys, and the parsing in `V1Card`); the v2
records it writes are records.py's. It uses the store's client without the layout check
(LedgerCalls.raw): the store is not one this release serves until the migration has finished.
SCAN is used here only, in a one-off operator's command.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import verify
from .codes import DIGEST_HEX
from .errors import ProviderError
from .keys import Keys, V1Keys, is_valid_card_id, owner_member
from .ledger_calls import LAYOUT, layout_refusal, translated_errors
from .records import Card, Operation, Transaction, ledger_fields

SCAN_COUNT = 1000
CHUNK = 200  # v1 cards checked per round trip, and how often the marker's progress is written
MIGRATING = "migrating"

# Writes the layout marker unless it already names a finished layout (this release's, or another):
# only an absent marker or a migration's progress is replaced. Returns the marker as it stands after.
_SET_MARKER = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[2]) ~= ARGV[2] then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class MigrationError(ProviderError):
    code = "migration_refused"


@dataclass(frozen=True)
class Progress:
    """What the migration just did, for a progress printer (and tests that stop it at a given step).

    phase: "layout" (the marker was written: `note` is its value), "taken" (a card was marked and
    read in v1), "imported" (written into its bucket: `note` "ok", or "exists" if an earlier run had),
    "skipped" (already marked and in its bucket), "vanished" (withdrawn by v1 before it was taken),
    "failed" (`note` says why), "indexes" (the v1 indexes were copied), "rescan", "verify",
    "finished" (an earlier run finished: `note` is when, epoch ms), "cleanup" (`note` says what was
    deleted).
    """

    phase: str
    done: int  # cards in their bucket so far, this run
    card_id: str = ""
    note: str = ""


ProgressCallback = Callable[[Progress], None]


# -- reading v1 ------------------------------------------------------------------


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _v1_record(kind: str, packed: str) -> Operation:
    """A v1 settlement or cancellation "oid|minor|dateMs|requestId|reason": the requestId may hold "|"
    (it is the caller's), the other parts never do."""
    head, reason = packed.rsplit("|", 1)
    oid, minor, date_ms, request_id = head.split("|", 3)
    return Operation(oid, int(minor), int(date_ms), request_id, reason, kind)


def _v1_transaction(tx_id: str, fields: dict[str, str], records: list[Operation]) -> Transaction:
    if not fields:
        raise ValueError(f"transaction {tx_id} is listed but has no record")
    common = dict(
        id=tx_id,
        value=int(fields["value"]),
        date_ms=int(fields["dateMs"]),
        request_id=fields.get("requestId", ""),
        order_id=fields.get("orderId", ""),
        description=fields.get("description", ""),
        settled=int(fields.get("settled", 0)),
        records=len(records),
    )
    if fields.get("operation") == "Debit":
        return Transaction(
            operation="Debit",
            held=int(fields.get("held", 0)),
            released=int(fields.get("released", 0)),
            refunded=int(fields.get("refunded", 0)),
            hold_deadline_ms=int(fields["holdDeadlineMs"]),
            **common,
        )
    if fields.get("operation") == "Credit":
        return Transaction(operation="Credit", cancelled=int(fields.get("cancelled", 0)), **common)
    raise ValueError(f"transaction {tx_id} has operation {fields.get('operation')!r}")


@dataclass(frozen=True)
class V1Card:
    """One v1 card as gc_v1_take read it, converted to v2 records."""

    card: Card
    code_digest: str  # the v1 code index's 64-hex digest, "" if the card does not record it
    transactions: list[tuple[Transaction, list[Operation]]]  # in the v1 list's order, records by date
    requests: dict[str, str]  # requestId -> "txId|operation|minor"

    @classmethod
    def from_take(cls, card_id: str, reply: list) -> V1Card:
        """{"ok", cardFields, journalLast, holdIds, requestFields, [txId, fields, settlements,
        cancellations]...} -> the card. Raises ValueError (or KeyError) on a record it cannot read."""
        _, flat_card, _journal_last, _holds, flat_requests, *txs = reply
        f = _pairs(flat_card)
        transactions = []
        for tx_id, flat_tx, settlements, cancellations in txs:
            # One list in the order the records happened (each v1 list is in its own order already).
            records = list(
                heapq.merge(
                    (_v1_record("s", p) for p in settlements),
                    (_v1_record("c", p) for p in cancellations),
                    key=lambda r: r.date_ms,
                )
            )
            transactions.append((_v1_transaction(tx_id, _pairs(flat_tx), records), records))
        status_changed = f.get("statusChangedMs", "")
        card = Card(
            id=card_id,
            currency=f["currency"],
            exponent=int(f["exponent"]),
            available=int(f["available"]),
            held=int(f["held"]),
            due_holds=0,
            now_ms=0,
            status=f["status"],
            status_reason=f.get("statusReason", ""),
            status_changed_ms=int(status_changed) if status_changed else None,
            profile_id=f.get("profileId", ""),
            restricted_to_owner=f.get("restrictedToOwner") == "1",
            multiple_redemptions=f.get("multipleRedemptions") == "1",
            multiple_credits=f.get("multipleCredits") == "1",
            relation_name=f.get("relationName", ""),
            caption=f.get("caption", ""),
            emission_ms=int(f["emissionMs"]),
            expiring_ms=int(f["expiringMs"]),
            created_ms=int(f["createdMs"]),
            code_last4=f.get("codeLast4", ""),
            token=f.get("token", ""),
            balance_limit=int(f.get("balanceLimit", 0)),
            seq=int(f.get("seq", 0)),  # v1 journal entries: the imported event is seq + 1
            open_debits=int(f.get("openDebits", 0)),
            credits=int(f.get("credits", 0)),
            transactions=len(transactions),
        )
        return cls(card, f.get("codeDigest", ""), transactions, _pairs(flat_requests))

    def holds(self) -> dict[str, int]:
        """Each Debit still holding money -> its deadline (the bucket's holds; due ones included:
        the sweeper or the next money call releases them)."""
        return {tx.id: tx.hold_deadline_ms for tx, _ in self.transactions if tx.debit and tx.held > 0}

    def books(self) -> dict[str, int]:
        """What the card adds to its bucket's books (records.BOOK_TOTALS), from its transactions."""
        debits = [(tx, records) for tx, records in self.transactions if tx.debit]
        credits = [tx for tx, _ in self.transactions if not tx.debit]
        return {
            "cards": 1,
            "credited": sum(tx.value for tx in credits),
            "reversed": sum(tx.cancelled for tx in credits),
            "authorized": sum(tx.value for tx, _ in debits),
            "settled": sum(tx.settled for tx, _ in debits),
            "released": sum(tx.released for tx, _ in debits),  # expired holds included
            "expired": sum(r.minor for _, records in debits for r in records if (r.kind, r.reason) == ("c", "expired")),
            "refunded": sum(tx.refunded for tx, _ in debits),
            "available": self.card.available,
            "held": self.card.held,
        }

    def import_document(self) -> str:
        """gc_import_card's ARGV[3]: the v2 card hash (every value a string), its holds and books."""
        fields = self.card.to_hash() | ledger_fields(self.transactions, self.requests)
        return json.dumps({"fields": fields, "holds": self.holds(), "books": self.books()}, ensure_ascii=False)


# -- the migration -----------------------------------------------------------------


@dataclass
class MigrationReport:
    layout_before: str | None
    layout_after: str | None = None
    cards: int = 0  # v1 cards found
    imported: int = 0  # written into their bucket by this run
    already: int = 0  # found in their bucket (an earlier run, or an interrupted one, moved them)
    vanished: int = 0  # withdrawn by v1 between SCAN and the mark
    failed: dict[str, str] = field(default_factory=dict)  # card id -> why it was not moved
    code_entries: int = 0  # v1 code index entries copied
    owner_entries: int = 0  # v1 owner index entries copied
    skipped_entries: list[str] = field(default_factory=list)  # v1 index entries naming no moved card
    verify: verify.Report | None = None
    finished_ms: int | None = None  # an earlier run finished and verified the migration then: nothing to do

    @property
    def done(self) -> int:
        return self.imported + self.already

    @property
    def ok(self) -> bool:
        if self.finished_ms is not None:
            return self.layout_after == LAYOUT
        return not self.failed and self.layout_after == LAYOUT and self.verify is not None and not self.verify.problems

    def as_dict(self) -> dict:
        report = self.verify
        return {
            "ok": self.ok,
            "layoutBefore": self.layout_before,
            "layoutAfter": self.layout_after,
            "cards": self.cards,
            "imported": self.imported,
            "already": self.already,
            "vanished": self.vanished,
            "failed": self.failed,
            "codeEntries": self.code_entries,
            "ownerEntries": self.owner_entries,
            "skippedEntries": self.skipped_entries,
            "finishedBefore": self.finished_ms,
            "verify": None
            if report is None
            else {"checked": report.checked, "problems": report.problems, "unreachable": report.unreachable},
        }


class _Run:
    def __init__(self, store, progress: ProgressCallback | None):
        self.store = store
        self.client = store.calls.raw  # no layout check: this store is not served by this release yet
        self.library = store.calls.library
        self.keys: Keys = store.keys
        self.v1 = V1Keys(store.keys.prefix)
        self.progress = progress or (lambda event: None)
        self.seen: set[str] = set()

    def say(self, report: MigrationReport, phase: str, card_id: str = "", note: str = "") -> None:
        self.progress(Progress(phase, report.done, card_id, note))

    def set_marker(self, value: str) -> str | None:
        return self.client.eval(_SET_MARKER, 1, self.keys.layout(), value, MIGRATING)

    def chunks(self, pattern: str) -> Iterator[list[str]]:
        chunk: list[str] = []
        for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):  # every primary of a cluster
            chunk.append(key)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def move_cards(self, report: MigrationReport, *, marking: bool) -> int:
        """Move every v1 card not seen yet in this run. Returns how many were new."""
        new = 0
        for chunk in self.chunks(self.v1.all_cards_pattern()):
            ids = []
            for key in chunk:
                card_id = self.v1.card_of(key)
                if card_id and card_id not in self.seen:
                    self.seen.add(card_id)
                    ids.append(card_id)
            new += len(ids)
            report.cards += len(ids)
            self.move_chunk(report, ids)
            if ids and marking:
                self.set_marker(f"{MIGRATING}:{report.done}")
        return new

    def move_chunk(self, report: MigrationReport, ids: list[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for card_id in ids:
            pipe.hmget(self.v1.card(card_id), "movedTo", "codeDigest", "profileId")
            pipe.exists(self.keys.card(card_id))
        replies = pipe.execute()
        for card_id, (moved, digest, owner), in_v2 in zip(ids, replies[::2], replies[1::2], strict=True):
            if not is_valid_card_id(card_id):
                report.failed[card_id] = "its id (not 32 lowercase hex digits) cannot name a v2 card"
                self.say(report, "failed", card_id, report.failed[card_id])
                continue
            if moved and in_v2:
                report.already += 1
                self.say(report, "skipped", card_id)
            else:
                taken = self.move_card(report, card_id)
                if taken is None:
                    continue
                digest, owner = taken.code_digest, taken.card.profile_id
            self.index_card(card_id, digest or "", owner or "")

    def move_card(self, report: MigrationReport, card_id: str) -> V1Card | None:
        reply = self.library.call(self.client, "gc_v1_take", self.v1.ledger_keys(card_id), [LAYOUT])
        if reply[0] == "not_found":
            report.vanished += 1
            self.say(report, "vanished", card_id)
            return None
        self.say(report, "taken", card_id)
        try:
            taken = V1Card.from_take(card_id, reply)
        except (KeyError, ValueError, TypeError) as exc:
            report.failed[card_id] = f"unreadable v1 record ({type(exc).__name__}: {exc})"
            self.say(report, "failed", card_id, report.failed[card_id])
            return None
        k, bucket = self.keys, card_id[:2]
        keys = [k.card(card_id), k.card_list(card_id), k.holds(bucket), k.events(bucket), k.books(bucket)]
        args = [card_id, str(taken.card.created_ms), taken.import_document()]
        status = self.library.call(self.client, "gc_import_card", keys, args)[0]
        if status == "ok":
            report.imported += 1
        else:  # "exists": an earlier run wrote it
            report.already += 1
        self.say(report, "imported", card_id, status)
        return taken

    def index_card(self, card_id: str, digest: str, owner: str) -> None:
        """The card's own index entries, from its record: the code entry is added, never replaced (the
        v1 code index, copied after, is the authority)."""
        pipe = self.client.pipeline(transaction=False)
        if digest:
            short = digest[:DIGEST_HEX]
            pipe.hsetnx(self.keys.code_index(short), short, card_id)
        pipe.zadd(self.keys.owner_index(owner), {owner_member(owner, card_id): 0})
        pipe.execute()

    def copy_indexes(self, report: MigrationReport) -> None:
        for chunk in self.chunks(self.v1.code_index_pattern()):
            digests = [(key, self.v1.code_digest_in(key)) for key in chunk]
            report.skipped_entries += [f"{key}: not a v1 code index key" for key, d in digests if d is None]
            digests = [(key, d) for key, d in digests if d]
            named = self._read(lambda pipe, digests=digests: [pipe.get(key) for key, _ in digests])
            present = self._v2_owners(named)
            pipe = self.client.pipeline(transaction=False)
            for (key, digest), card_id in zip(digests, named, strict=True):
                if card_id not in present:
                    report.skipped_entries.append(f"{key}: names card {card_id}, which was not migrated")
                    continue
                short = digest[:DIGEST_HEX]
                pipe.hset(self.keys.code_index(short), short, card_id)
                report.code_entries += 1
            pipe.execute()
        for chunk in self.chunks(self.v1.owner_index_pattern()):
            profiles = [(key, self.v1.owner_in(key)) for key in chunk]
            members = self._read(lambda pipe, profiles=profiles: [pipe.smembers(key) for key, _ in profiles])
            owners = self._v2_owners([cid for ids in members for cid in ids])
            pipe = self.client.pipeline(transaction=False)
            for (key, profile), ids in zip(profiles, members, strict=True):
                for card_id in sorted(ids):
                    if owners.get(card_id) != profile:
                        entry = f"{key}: names card {card_id}, which is not a migrated card of that owner"
                        report.skipped_entries.append(entry)
                        continue
                    pipe.zadd(self.keys.owner_index(profile), {owner_member(profile, card_id): 0})
                    report.owner_entries += 1
            pipe.execute()
        self.say(report, "indexes", note=f"{report.code_entries} code, {report.owner_entries} owner entries")

    def _read(self, build) -> list:
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        return pipe.execute()

    def _v2_owners(self, card_ids: Iterable[str | None]) -> dict[str, str]:
        """card id -> its owner, for the ids that name a card in its v2 bucket."""
        ids = sorted({cid for cid in card_ids if cid and is_valid_card_id(cid)})
        owners = self._read(lambda pipe: [pipe.hget(self.keys.card(cid), "own") for cid in ids])
        return {cid: owner for cid, owner in zip(ids, owners, strict=True) if owner is not None}


def migrate(store, *, progress: ProgressCallback | None = None) -> MigrationReport:
    """Move a v1 store to layout v2 (see the module's docstring); returns what was done. The layout
    marker becomes v2 only if every card moved; verify runs once it is v2."""
    run = _Run(store, progress)
    with translated_errors():
        before = run.client.get(run.keys.layout())
        report = MigrationReport(layout_before=before)
        if before is not None and before != LAYOUT and not before.startswith(MIGRATING):
            raise layout_refusal(before)  # another layout: deploy the release that knows it
        finished = run.client.get(run.keys.migrated()) if before == LAYOUT else None
        if finished is not None:  # every later release phase: no walk of the keyspace, no full verify
            report.layout_after, report.finished_ms = LAYOUT, int(finished)
            run.say(report, "finished", note=finished)
            return report
        marking = before != LAYOUT  # v2 already: v1 cards left behind are moved, the marker stays
        if marking:
            run.say(report, "layout", note=run.set_marker(f"{MIGRATING}:0"))
        run.move_cards(report, marking=marking)
        if marking or report.imported:
            run.copy_indexes(report)
            run.say(report, "rescan")
            run.move_cards(report, marking=marking)  # created by v1 processes meanwhile
        if report.failed:
            report.layout_after = run.client.get(run.keys.layout())
            return report
        if marking:
            report.layout_after = run.set_marker(LAYOUT)
            run.say(report, "layout", note=report.layout_after)
            run.move_cards(report, marking=False)  # created by a v1 process that read the marker just before
        else:
            report.layout_after = before
        if report.layout_after == LAYOUT:
            run.say(report, "verify")
            report.verify = store.verify()
            if report.ok:  # a v1 process can no longer create a card here: later runs need not look again
                seconds, micros = run.client.time()
                run.client.set(run.keys.migrated(), str(seconds * 1000 + micros // 1000))
    return report


# -- cleanup ------------------------------------------------------------------------


@dataclass
class CleanupReport:
    cards: int = 0  # v1 cards deleted (with their per-card keys)
    keys: int = 0  # v1 keys deleted in all
    code_keys: int = 0  # v1 code index keys deleted
    owner_keys: int = 0  # v1 owner index keys deleted
    kept: list[str] = field(default_factory=list)  # v1 cards not moved yet: left, with the v1 indexes

    @property
    def ok(self) -> bool:
        return not self.kept

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "cards": self.cards,
            "keys": self.keys,
            "codeKeys": self.code_keys,
            "ownerKeys": self.owner_keys,
            "kept": self.kept,
        }


def cleanup(store, *, progress: ProgressCallback | None = None) -> CleanupReport:
    """Delete the v1 keys a finished migration left: every v1 card marked movedTo whose v2 copy exists,
    with its per-card keys (the card hash last, so a killed cleanup finds it again), then the v1 code
    and owner indexes. Only once the marker is v2. A v1 card that is not moved yet is kept, and so
    are the v1 indexes then (run `migrate` again first: the record of a finished migration is
    dropped, so that it looks for v1 cards again). The v1 ledger library is
    `flask cards libraries --prune`'s."""
    run = _Run(store, progress)
    report = CleanupReport()
    with translated_errors():
        layout = run.client.get(run.keys.layout())
        if layout != LAYOUT:
            raise MigrationError(
                f"the store's layout is {layout or 'v1'}, not {LAYOUT}: run `flask cards migrate` first",
                code="layout_unmigrated",
            )
        for chunk in run.chunks(run.v1.all_cards_pattern()):
            ids = [cid for cid in map(run.v1.card_of, chunk) if cid]
            state = run._read(
                lambda pipe, ids=ids: [
                    c
                    for cid in ids
                    for c in (
                        pipe.hget(run.v1.card(cid), "movedTo"),
                        pipe.exists(run.keys.card(cid)),
                        pipe.lrange(run.v1.transactions(cid), 0, -1),
                    )
                ]
            )
            for cid, moved, in_v2, txs in zip(ids, state[::3], state[1::3], state[2::3], strict=True):
                if not (moved and in_v2):
                    report.kept.append(cid)
                    continue
                v1 = run.v1
                doomed = [k for tx in txs for k in v1.transaction_keys(cid, tx)]
                doomed += [v1.transactions(cid), v1.requests(cid), v1.holds(cid), v1.journal(cid), v1.card(cid)]
                report.keys += sum(run._read(lambda pipe, doomed=doomed: [pipe.delete(k) for k in doomed]))
                report.cards += 1
        if report.kept:  # the next `migrate` must look for v1 cards again, not trust its record
            run.client.delete(run.keys.migrated())
        else:
            for pattern in (run.v1.code_index_pattern(), run.v1.owner_index_pattern()):
                for chunk in run.chunks(pattern):
                    deleted = sum(run._read(lambda pipe, chunk=chunk: [pipe.delete(k) for k in chunk]))
                    report.keys += deleted
                    if pattern == run.v1.code_index_pattern():
                        report.code_keys += deleted
                    else:
                        report.owner_keys += deleted
        run.progress(
            Progress(
                "cleanup",
                report.cards,
                note=f"{report.cards} card(s), {report.keys} key(s) deleted; {len(report.kept)} kept",
            )
        )
    return report
