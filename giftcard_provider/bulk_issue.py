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

One pass does everything, a chunk of cards at a time: create the cards still missing, index their
owner, load them, and append their lines to "<output>.<batch>.partial" (0600, under an exclusive
lock: bulk.locked_partial; a second run of the batch while one runs is refused). A card
created by the pass takes its validity window from gc_create_card's reply (which wrote its code
index entry in the same call); one an earlier run created is read back through its code, as a
search finds it. A rerun starts the pass over from card 1: what exists costs a no-op call. Once
every line is written, the file is fsynced and hard-linked to the output name, which fails if that
name exists: the output is never overwritten, and never seen half written. A run killed after the
link but before it was recorded finds the output identical to what it wrote (same SHA-256) and
records it.
"""

from __future__ import annotations

import functools
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
    Creation,
    Credit,
    LedgerWriter,
    NewCard,
    in_order,
    locked_partial,
    major,
    no_bar,
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
        self.load_text = major(spec.load_minor, self.exponent)
        self.limit = store.balance_limit(spec.currency)

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
        """Create what is missing of the batch and write its CSV once. Safe to rerun after a kill."""
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
        created, rows, sha = self._issue(batch, _Derivation(self._secret(batch)), output)
        return IssueResult(self.read(), output, created, rows, sha)

    def _issue(self, batch: Batch, derive: _Derivation, output: Path) -> tuple[int, int, str]:
        """Every chunk of the batch, IN_FLIGHT at once (bulk.in_order): its cards created (those missing),
        indexed and loaded, its CSV lines written to the partial file in order; then the file is published
        and recorded. Returns (cards this run created, rows, SHA-256 of the CSV)."""
        partial = output.with_name(f"{output.name}.{self.batch_id}.partial")
        digest = hashlib.sha256()
        created = rows = 0
        done_field = batch_fields(self.batch_id)[2]
        header = ",".join(CSV_HEADER) + "\r\n"
        # Locked from before the first line until the file is linked and its partial name removed.
        with locked_partial(partial) as f:
            with self.bar(f"batch {self.batch_id}", self.spec.count) as bar:
                f.write(header)
                digest.update(header.encode())
                spans = self._spans()
                chunks = in_order(lambda numbers: self._chunk(batch, derive, numbers), spans, IN_FLIGHT)
                for numbers, (lines, made) in zip(spans, chunks, strict=True):
                    text = "".join(lines)
                    f.write(text)
                    digest.update(text.encode())
                    rows, created = rows + len(lines), created + made
                    with translated_errors():  # progress, for `flask cards batches`
                        self.store.redis.hset(self.key, done_field, str(numbers.stop - 1))
                    bar.update(len(numbers))
            f.flush()
            os.fsync(f.fileno())
            sha = digest.hexdigest()
            try:
                os.link(partial, output)  # fails if the name exists: never an overwrite, never half a file
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
        return created, rows, sha

    def _spans(self) -> list[range]:
        """The card numbers (from 1), a chunk each."""
        count = self.spec.count
        return [range(first + 1, min(first + self.chunk, count) + 1) for first in range(0, count, self.chunk)]

    def _plan(self, batch: Batch, derive: _Derivation, n: int, attempt: int | None = None) -> tuple[NewCard, str]:
        """Card n (at its recorded attempt, or `attempt`) and its code."""
        attempt = batch.attempts.get(n, 0) if attempt is None else attempt
        code = derive.code(n, attempt)
        digest = self.store.hasher.digest(code)
        spec = self.spec
        fields = card_fields(
            currency=spec.currency, exponent=self.exponent, balance_limit=self.limit,
            profile_id=spec.profile_id, relation_name=spec.relation_name, caption=spec.caption,
            restricted_to_owner=spec.restricted_to_owner, multiple_redemptions=spec.multiple_redemptions,
            multiple_credits=spec.multiple_credits, code_last4=normalise(code)[-4:], token=new_token(),
        )  # fmt: skip
        card = NewCard(
            card_id=derive.card_id(digest, n, attempt), digest=digest, profile_id=spec.profile_id, fields=fields,
            emission_ms=spec.emission_ms, expiring_ms=batch.expiring_ms, load=self.load,
            request_id=f"batch:{self.batch_id}:{n}",
        )  # fmt: skip
        return card, code

    def _chunk(self, batch: Batch, derive: _Derivation, numbers: range) -> tuple[list[str], int]:
        """Cards `numbers`: create those missing, index their owner, load them (each step idempotent), and
        their CSV lines. Three round trips, and a fourth to read back the cards an earlier run created.
        Returns (the lines, how many cards this call created)."""
        planned = [self._plan(batch, derive, n) for n in numbers]
        plans = [p for p, _ in planned]
        done = self.writer.create(plans)
        if any(c.status == "invalid_window" for c in done):
            raise BulkError("the batch's validity window is over: its expiring date is not in the future")
        for i, creation in enumerate(done):
            if creation.status == "code_taken":
                plans[i], code, done[i] = self._redraw(batch, derive, numbers[i])
                planned[i] = (plans[i], code)
        fresh = [p for p, c in zip(plans, done, strict=True) if c.status == "created"]
        self.writer.index_owners(plans, fresh, wait=not self.load)
        for outcome in self.writer.credit([Credit(p.card_id, p.load, p.request_id) for p in plans if p.load]):
            if not outcome.ok:
                raise BulkError(f"the initial load of a card of batch {self.batch_id} failed: {outcome.message}")
        # A card created here has its window in gc_create_card's reply, and its code index entry was written
        # by that same call. One an earlier run created is read back as a search would find it.
        windows = self._read_back([p for p, c in zip(plans, done, strict=True) if c.status == "exists"])
        lines = []
        for n, (card, code), creation in zip(numbers, planned, done, strict=True):
            emission, expiring = (
                (creation.emission_ms, creation.expiring_ms) if creation.status == "created" else windows[card.card_id]
            )
            lines.append(f"{self.batch_id},{n},{card.card_id},{code},{self.spec.currency},{self.load_text},"
                         f"{_iso(emission)},{_iso(expiring)}\r\n")  # fmt: skip
        return lines, len(fresh)

    def _read_back(self, cards: list[NewCard]) -> dict[str, tuple[int, int]]:
        """Card id -> (emission, expiring ms) of cards that exist, read as the shopper's search reads them:
        the code index entry of the code's digest, then the card. A card its code does not find is a
        broken ledger (verify names it): the batch stops, its CSV unwritten."""
        if not cards:
            return {}
        k = self.store.keys

        def build(pipe):
            for c in cards:
                pipe.hget(k.code_index(c.digest), c.digest)
                pipe.hmget(k.card(c.card_id), "at", "from", "to")

        replies = self.store.calls.pipeline(build)
        found = {}
        for c, named, (at, start, end) in zip(cards, replies[::2], replies[1::2], strict=True):
            if named != c.card_id or at is None:
                raise BulkError(f"batch {self.batch_id}: card {c.card_id} is not found by its code: run "
                                "`flask cards verify`; no CSV was written")  # fmt: skip
            found[c.card_id] = (int(start or at), int(end))
        return found

    def _redraw(self, batch: Batch, derive: _Derivation, n: int) -> tuple[NewCard, str, Creation]:
        """Card n's code is another card's (a 2**-98 event): record the next attempt, then create it, so
        a rerun derives the same code."""
        attempts_field = batch_fields(self.batch_id)[3]
        for attempt in range(batch.attempts.get(n, 0) + 1, REDRAWS + 1):
            with self._redraws, translated_errors():  # chunks run on threads (in_order)
                batch.attempts[n] = attempt
                self.store.redis.hset(self.key, attempts_field, Batch.pack_attempts(batch.attempts))
            plan, code = self._plan(batch, derive, n, attempt)
            creation = self.writer.create([plan])[0]
            if creation.status in ("created", "exists"):
                return plan, code, creation
        raise BulkError(f"card {n} of batch {self.batch_id}: {REDRAWS} codes drawn were all taken")

    def _record(self, rows: int, sha: str) -> None:
        """The CSV is on disk: record it (a rerun then writes nothing), then drop the batch's secret."""
        out_field = batch_fields(self.batch_id)[4]
        with translated_errors():
            seconds, micros = self.store.redis.time()
            self.store.redis.hset(self.key, out_field, Published(seconds * 1000 + micros // 1000, rows, sha).pack())
        self._forget_key()

    def _forget_key(self) -> None:
        with translated_errors():
            self.store.redis.hdel(self.key, batch_fields(self.batch_id)[1])


@functools.lru_cache(maxsize=4096)
def _iso(ms: int) -> str:
    """iso_ms, remembered: the cards of a chunk share a few milliseconds of creation."""
    return iso_ms(ms)


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
