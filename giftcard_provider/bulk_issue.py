"""Issue N cards in one command, idempotent by a batch id (`flask cards issue-batch`, docs/bulk.md).

Where a code lives between its card's creation and the CSV. The store keeps only a keyed digest of a
code (codes.CodeHasher), so a run killed after creating cards cannot read their codes back. Every
code of a batch is therefore *derived*: code n = HMAC-SHA256(batch secret, "code|n|attempt"), spelt
in the codes' alphabet (20 symbols of 30, 98 bits, like codes.new_code), and so is the card's id
(its code digest's two hex digits, which name its bucket, then 30 hex of HMAC(batch secret,
"card|n|attempt")). A rerun derives the same ids and codes: gc_create_card answers "card_exists" for
the cards made before the kill (never a second card), and the CSV is written from the derivation,
so the codes of cards created before a kill still reach it.

The batch secret (32 random bytes) is kept in Redis while the batch runs, *wrapped*: XORed with
HMAC-SHA256(CODE_HASH_SECRET, "batch-key|<batch id>"), a pad used by this batch id only (a batch id is
registered once and never reused). A copy of Redis alone yields no code; Redis together with
CODE_HASH_SECRET yields the codes of the batches not yet finished. The wrapped secret is deleted as
soon as the CSV is safely on disk, after which the codes exist only in that CSV. Why not a local
state file instead: a rerun would then depend on the machine and directory of the killed run, and a
lost file would leave loaded cards whose codes and ids nobody can find. Why not the codes themselves
in Redis for the duration: they would be readable from a copy of Redis without any secret.

The batch's definition (its terms), progress and, once published, the CSV's row count and SHA-256
stay in the batches hash (keys.batches(); records.Batch): a rerun with other terms is refused, and a
rerun after completion writes nothing (the codes are not kept anywhere to write them again).

The CSV is written to "<output>.<batch>.partial" (O_EXCL, 0600), fsynced, then hard-linked to the
output name, which fails if that name exists: the output is never overwritten, and never seen half
written. A run killed after the link but before it was recorded finds the output identical to what
it would write (same SHA-256) and records it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from schemas.common import iso_ms

from .bulk import (
    CHUNK,
    IN_FLIGHT,
    Bar,
    BulkError,
    Credit,
    LedgerWriter,
    NewCard,
    in_order,
    major,
    no_bar,
    owner_only,
    sync_dir,
)
from .codes import ALPHABET, CODE_LENGTH, GROUP, new_token, normalise
from .keys import is_valid_id
from .ledger_calls import translated_errors
from .money import Amount, exponent_of
from .records import Batch, BatchSpec, Published, batch_fields, card_fields
from .store import LedgerStore

CSV_HEADER = ["batchId", "n", "cardId", "redemptionCode", "currency", "load", "emissionDate", "expiringDate"]
REDRAWS = 3  # codes drawn for one card before giving up: a taken code is a 2**-98 event
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # every two-symbol string, by its value in base 30
_PAIR_COUNT = len(_PAIRS)
_CODES = len(ALPHABET) ** CODE_LENGTH


@dataclass(frozen=True)
class IssueResult:
    batch: Batch
    output: Path | None  # None: the batch was complete before this run (nothing written)
    created: int = 0  # cards this run created (the others existed: an earlier run made them)
    rows: int = 0
    sha256: str = ""


class _Derivation:
    """A batch's codes and card ids, from its secret."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, label: str, n: int, attempt: int) -> bytes:
        return hmac.digest(self._secret, f"{label}|{n}|{attempt}".encode(), "sha256")

    def code(self, n: int, attempt: int) -> str:
        """Card n's code: 20 symbols of ALPHABET (like codes.new_code), from 256 bits of HMAC taken modulo
        30**20 (bias below 2**-150), two symbols at a time."""
        value = int.from_bytes(self._mac("code", n, attempt), "big") % _CODES
        pairs = []
        for _ in range(CODE_LENGTH // 2):
            value, r = divmod(value, _PAIR_COUNT)
            pairs.append(_PAIRS[r])
        raw = "".join(pairs)
        return "-".join(raw[i : i + GROUP] for i in range(0, CODE_LENGTH, GROUP))

    def card_id(self, digest: str, n: int, attempt: int) -> str:
        """Card n's id: its code's bucket (as store.create_card), then 30 hex digits of HMAC."""
        return digest[:2] + self._mac("card", n, attempt).hex()[:30]


class BatchIssuer:
    def __init__(self, store: LedgerStore, batch_id: str, spec: BatchSpec, *, chunk: int = CHUNK, bar: Bar = no_bar):
        if not is_valid_id(batch_id):
            raise BulkError("a batch id is 1 to 64 letters, digits, '-' or '_'")
        if spec.count < 1:
            raise BulkError("a batch issues at least one card")
        self.store, self.batch_id, self.spec, self.chunk, self.bar = store, batch_id, spec, chunk, bar
        self.writer = LedgerWriter(store)
        self._redraws = threading.Lock()
        self.key = store.keys.batches()
        self.exponent = exponent_of(spec.currency)
        self.load = Amount(spec.load_minor, self.exponent) if spec.load_minor else None

    # -- the batch record ----------------------------------------------------------------------

    def read(self) -> Batch | None:
        with translated_errors():
            return Batch.from_values(self.batch_id, self.store.redis.hmget(self.key, batch_fields(self.batch_id)))

    def _pad(self) -> bytes:
        return hmac.digest(self.store.settings.code_hash_secret.encode(), f"batch-key|{self.batch_id}".encode(),
                           "sha256")  # fmt: skip

    def _register(self, now_ms: int) -> Batch:
        """Register the batch (HSETNX: the first run's terms win) and give it a secret, or find it."""
        spec = self.spec
        expiring = spec.expiring_ms
        if spec.valid_days:
            expiring = (spec.emission_ms if spec.emission_ms is not None else now_ms) + spec.valid_days * 86_400_000
        fresh = Batch(self.batch_id, spec, now_ms, expiring, None, 0, {}, None)
        name, key_field = batch_fields(self.batch_id)[:2]
        redis = self.store.redis
        with translated_errors():
            redis.hsetnx(self.key, name, fresh.definition())
            batch = self.read()
            if batch.spec != spec:
                raise BulkError(f"batch {self.batch_id} was registered with other terms ("
                                + "; ".join(batch.spec.differences(spec)) + "): rerun it with its own terms, "
                                "or choose another batch id")  # fmt: skip
            if batch.published is None and batch.wrapped_key is None:
                # No key yet: nothing of this batch can exist (cards are derived from the key, and it is
                # stored before the first card). A second run racing this one loses the HSETNX.
                if batch.done:
                    raise BulkError(f"batch {self.batch_id} has progress but no key: its record was edited")
                secret = secrets.token_bytes(32)
                wrapped = bytes(a ^ b for a, b in zip(secret, self._pad(), strict=True)).hex()
                redis.hsetnx(self.key, key_field, wrapped)
                batch = self.read()
        return batch

    def _secret(self, batch: Batch) -> bytes:
        return bytes(a ^ b for a, b in zip(bytes.fromhex(batch.wrapped_key), self._pad(), strict=True))

    # -- the run ---------------------------------------------------------------------------------

    def run(self, output: Path, now_ms: int) -> IssueResult:
        """Create what is missing of the batch, then write its CSV once. Safe to rerun after a kill."""
        batch = self.read()
        if batch is not None and batch.published is not None:
            if batch.spec != self.spec:
                raise BulkError(f"batch {self.batch_id} was issued with other terms ("
                                + "; ".join(batch.spec.differences(self.spec)) + ")")  # fmt: skip
            self._forget_key()  # a run killed between recording the CSV and dropping the key
            return IssueResult(batch, None)
        if batch is None and output.exists():
            raise BulkError(f"{output} exists: refusing to overwrite it")
        if self.load and self.spec.emission_ms is not None and self.spec.emission_ms > now_ms:
            raise BulkError("a card cannot be loaded before its emission date: leave --load out, or the emission")
        batch = self._register(now_ms)
        derive = _Derivation(self._secret(batch))
        created = self._create_all(batch, derive)
        batch = self.read()
        rows, sha = self._publish(batch, derive, output)
        return IssueResult(self.read(), output, created, rows, sha)

    def _plan(self, batch: Batch, derive: _Derivation, n: int, attempt: int | None = None) -> NewCard:
        attempt = batch.attempts.get(n, 0) if attempt is None else attempt
        code = derive.code(n, attempt)
        digest = self.store.hasher.digest(code)
        spec = self.spec
        fields = card_fields(
            currency=spec.currency, exponent=self.exponent, balance_limit=self.store.balance_limit(spec.currency),
            profile_id=spec.profile_id, relation_name=spec.relation_name, caption=spec.caption,
            restricted_to_owner=spec.restricted_to_owner, multiple_redemptions=spec.multiple_redemptions,
            multiple_credits=spec.multiple_credits, code_last4=normalise(code)[-4:], token=new_token(),
        )  # fmt: skip
        return NewCard(
            card_id=derive.card_id(digest, n, attempt), digest=digest, profile_id=spec.profile_id, fields=fields,
            emission_ms=spec.emission_ms, expiring_ms=batch.expiring_ms, load=self.load,
            request_id=f"batch:{self.batch_id}:{n}",
        )  # fmt: skip

    def _create_all(self, batch: Batch, derive: _Derivation) -> int:
        """Create the cards from the batch's progress on, IN_FLIGHT chunks at once (bulk.in_order), three
        round trips a chunk; the progress is saved as each chunk completes, in order. Returns the cards
        this run created."""
        start = batch.done - batch.done % self.chunk  # chunks below `done` are complete
        spans = self._spans(start)
        done_field = batch_fields(self.batch_id)[2]
        created = 0
        with self.bar(f"batch {self.batch_id}: creating cards", self.spec.count) as bar:
            bar.update(start)
            results = in_order(lambda numbers: self._create_chunk(batch, derive, numbers), spans, IN_FLIGHT)
            for numbers, made in zip(spans, results, strict=True):
                with translated_errors():
                    self.store.redis.hset(self.key, done_field, str(numbers.stop - 1))
                created += made
                bar.update(len(numbers))
        return created

    def _spans(self, start: int) -> list[range]:
        """The card numbers (from 1) after `start`, a chunk each."""
        count = self.spec.count
        return [range(first + 1, min(first + self.chunk, count) + 1) for first in range(start, count, self.chunk)]

    def _create_chunk(self, batch: Batch, derive: _Derivation, numbers: range) -> int:
        """Create cards `numbers` (those missing), index their owner, load them. Returns how many it created."""
        plans = [self._plan(batch, derive, n) for n in numbers]
        statuses = self.writer.create(plans)
        if "invalid_window" in statuses:
            raise BulkError("the batch's validity window is over: its expiring date is not in the future")
        fresh = [p for p, s in zip(plans, statuses, strict=True) if s == "created"]
        for i, status in enumerate(statuses):
            if status == "code_taken":
                plans[i], made = self._redraw(batch, derive, numbers[i])
                if made:
                    fresh.append(plans[i])
        self.writer.index_owners(plans, fresh)
        for outcome in self.writer.credit([Credit(p.card_id, p.load, p.request_id) for p in plans if p.load]):
            if not outcome.ok:
                raise BulkError(f"the initial load of a card of batch {self.batch_id} failed: {outcome.message}")
        return len(fresh)

    def _redraw(self, batch: Batch, derive: _Derivation, n: int) -> tuple[NewCard, bool]:
        """Card n's code is another card's (a 2**-98 event): record the next attempt, then create it, so
        a rerun derives the same code. Returns the plan and whether this call created the card."""
        attempts_field = batch_fields(self.batch_id)[3]
        for attempt in range(batch.attempts.get(n, 0) + 1, REDRAWS + 1):
            with self._redraws, translated_errors():  # chunks run on threads (in_order)
                batch.attempts[n] = attempt
                self.store.redis.hset(self.key, attempts_field, Batch.pack_attempts(batch.attempts))
            plan = self._plan(batch, derive, n, attempt)
            status = self.writer.create([plan])[0]
            if status in ("created", "exists"):
                return plan, status == "created"
        raise BulkError(f"card {n} of batch {self.batch_id}: {REDRAWS} codes drawn were all taken")

    # -- the CSV -----------------------------------------------------------------------------------

    def _publish(self, batch: Batch, derive: _Derivation, output: Path) -> tuple[int, str]:
        """Read every card back by its code, write the CSV once, record it, drop the key."""
        partial = output.with_name(f"{output.name}.{self.batch_id}.partial")
        partial.unlink(missing_ok=True)  # left by a run of this batch killed while writing it
        digest = hashlib.sha256()
        rows = 0
        cur = self.spec.currency
        load = major(self.spec.load_minor, self.exponent)
        with owner_only(partial) as f, self.bar(f"batch {self.batch_id}: writing codes", self.spec.count) as bar:
            f.write(",".join(CSV_HEADER) + "\r\n")
            digest.update((",".join(CSV_HEADER) + "\r\n").encode())
            spans = self._spans(0)
            results = in_order(lambda numbers: self._find(batch, derive, numbers), spans, IN_FLIGHT)
            for numbers, (located, found) in zip(spans, results, strict=True):
                for n, (card_id, code, _), (emission, expiring) in zip(numbers, located, found, strict=True):
                    line = f"{self.batch_id},{n},{card_id},{code},{cur},{load},{emission},{expiring}\r\n"
                    f.write(line)
                    digest.update(line.encode())
                    rows += 1
                bar.update(len(numbers))
            f.flush()
            os.fsync(f.fileno())
        sha = digest.hexdigest()
        try:
            os.link(partial, output)
        except FileExistsError:
            if _sha256(output) != sha:
                partial.unlink()
                raise BulkError(f"{output} exists and is not this batch's CSV: refusing to overwrite it; "
                                "rerun with another --output") from None  # fmt: skip
            # Identical: a run killed after linking it, before recording it.
        sync_dir(output.parent)
        partial.unlink()
        sync_dir(output.parent)
        self._record(rows, sha)
        return rows, sha

    def _record(self, rows: int, sha: str) -> None:
        """The CSV is on disk: record it (a rerun then writes nothing), then drop the batch's secret."""
        out_field = batch_fields(self.batch_id)[4]
        with translated_errors():
            seconds, micros = self.store.redis.time()
            self.store.redis.hset(self.key, out_field, Published(seconds * 1000 + micros // 1000, rows, sha).pack())
        self._forget_key()

    def _find(self, batch: Batch, derive: _Derivation, numbers: range) -> tuple[list, list[tuple[str, str]]]:
        """Cards `numbers`, each (id, code, digest), and each one's (emission, expiring), read back by its
        code. A card its code does not find (lost since it was created: a failover that dropped writes?)
        is created again, idempotently, or the batch stops there with nothing written."""
        located = [self._locate(batch, derive, n) for n in numbers]
        found = self._read_back(located)
        if any(window is None for window in found):
            self._create_chunk(batch, derive, numbers)
            found = self._read_back(located)
            if any(window is None for window in found):
                raise BulkError(f"batch {self.batch_id}: cards {numbers.start}-{numbers.stop - 1} cannot be found "
                                "by their codes after creation; no CSV was written")  # fmt: skip
        return located, found

    def _locate(self, batch: Batch, derive: _Derivation, n: int) -> tuple[str, str, str]:
        """Card n's (id, code, code digest)."""
        code = derive.code(n, batch.attempts.get(n, 0))
        digest = self.store.hasher.digest(code)
        return derive.card_id(digest, n, batch.attempts.get(n, 0)), code, digest

    def _read_back(self, located: list[tuple[str, str, str]]) -> list[tuple[str, str] | None]:
        """Per card: (emission, expiring) as ISO 8601 if its code finds it, else None. Reads what the
        shopper's search reads: the code index entry of the code's digest, then the card."""
        k = self.store.keys

        def build(pipe):
            for card_id, _, digest in located:
                pipe.hget(k.code_index(digest), digest)
                pipe.hmget(k.card(card_id), "at", "from", "to")

        replies = self.store.calls.pipeline(build)
        found = []
        for (card_id, _, _), named, (at, start, end) in zip(located, replies[::2], replies[1::2], strict=True):
            if named != card_id or at is None:
                found.append(None)
            else:
                found.append((iso_ms(int(start or at)), iso_ms(int(end))))
        return found

    def _forget_key(self) -> None:
        with translated_errors():
            self.store.redis.hdel(self.key, batch_fields(self.batch_id)[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def batches(store: LedgerStore) -> list[Batch]:
    """Every batch, oldest first (one HGETALL)."""
    with translated_errors():
        return Batch.all_from_hash(store.redis.hgetall(store.keys.batches()))
