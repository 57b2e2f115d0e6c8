"""What the bulk commands share (`issue-batch`, `load-csv`, `import-csv`: docs/bulk.md): owner-only
output files, CSV input with line numbers, and writing many cards or credits in pipelines.

Cards are written exactly as `LedgerStore.create_card` and `flask cards issue` write them, only
many at a time: gc_create_card (the card, its bucket's card list, its code index entry, the books'
card count and a "created" event in one call), then the owner index and the layout check
(store._index_owner's, once per chunk), then the initial load as a Credit through gc_authorize
(idempotent by its requestId). Each step is one pipeline per chunk of cards, so a chunk of 500 costs
three round trips instead of 1,500; on a Redis Cluster redis-py's cluster pipeline sends each
node its share of a chunk. Nothing here changes a balance outside ledger.lua.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TypeVar

from .codes import new_short_id
from .connection import is_cluster
from .errors import ProviderError, raise_for_reply
from .keys import owner_member
from .ledger_calls import layout_refusal, translated_errors
from .money import Amount
from .records import Card, card_from_read
from .store import LedgerStore

CHUNK = 500  # cards (or rows) per pipeline: three round trips per chunk when creating cards
IN_FLIGHT = 3  # chunks handled at once (in_order)
T, R = TypeVar("T"), TypeVar("R")


log = logging.getLogger(__name__)


class BulkError(ProviderError):
    """A bulk command that cannot go on: nothing (more) was written."""

    status, code = 409, "bulk_refused"


# A progress bar: bar(label, length) is a context manager whose value has update(n)
# (click.progressbar in the CLI; `no_bar` elsewhere).
Bar = Callable[[str, int], contextlib.AbstractContextManager]


class _Silent:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def no_bar(label: str, length: int):
    yield _Silent()


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_order(work: Callable[[T], R], items: Iterable[T], in_flight: int) -> Iterator[R]:
    """work(item) for every item, up to `in_flight` at once on threads, the results in the items' order.

    Why threads: a chunk's Python work (deriving codes, packing commands, parsing replies) and Redis's
    work on another chunk then overlap; redis-py releases the GIL while it waits on the socket, and its
    client is thread-safe (each chunk takes its own pipeline, hence its own connection). A failure is
    raised in order; the chunks still in flight are finished first (every chunk's work is idempotent)."""
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="bulk")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- files ----------------------------------------------------------------------------------------


def owner_only(path: Path) -> IO[str]:
    """A new text file readable and writable by its owner only (0600), for CSV.

    Created with O_EXCL: an existing file (or a symlink planted in its place) is never
    overwritten or followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BulkError(f"{path} exists: refusing to overwrite it") from None
    except OSError as exc:
        raise BulkError(f"cannot create {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", newline="", encoding="utf-8")


def locked_partial(path: Path) -> IO[str]:
    """The partial file of a run, opened for writing (0600) under an exclusive lock held until it is
    closed: the kernel drops the lock of a process that dies, even by SIGKILL. A file a killed run left
    is taken over and emptied; one that another live run holds is refused, so two runs of one batch
    never write, link or remove each other's file. The file must be a regular one of this user, mode
    0600, with no other name: anything else at that path (a symlink, another user's file) is refused,
    never written."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise BulkError(f"cannot create {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BulkError(f"another process is running this batch now (it holds {path}): let it finish") from None
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != 0o600
            or (st.st_nlink != 1)
        ):
            raise BulkError(f"{path} is not a file this command made: remove it, then rerun")
        os.ftruncate(fd, 0)
        return os.fdopen(fd, "w", newline="", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def sync_dir(path: Path) -> None:
    """fsync a directory, so that a file created, linked or removed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Problem:
    """Why an input row is refused: its line in the file, and what is wrong with it."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


AMOUNT_TEXT = re.compile(r"\d+(\.\d+)?")  # major units, exact: "25", "12.50" (no sign, exponent or separators)


def major(minor: int, exponent: int) -> str:
    """Minor units -> an exact major-unit string with the currency's decimals: 1250, 2 -> "12.50"
    (cli.major's rule, for the files these commands write)."""
    return str(Decimal(minor).scaleb(-exponent))


def parse_amount(text: str, *, zero: bool = False) -> Amount:
    """A cell in major units -> an exact Amount; ValueError says why not. With `zero`, "0" and "0.00"
    give Amount(0, 0) (an imported card may hold nothing)."""
    if not AMOUNT_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not an amount in major units, like 25 or 12.50")
    value = Decimal(text)
    if value.is_zero():
        if zero:
            return Amount(0, 0)
        raise ValueError("the amount must be positive")
    return Amount.from_decimal(value)


@dataclass(frozen=True)
class Row:
    """One data row of an input CSV: its line number in the file (1 is the header) and its cells by
    column name (names as the header spells them, stripped; cells stripped)."""

    line: int
    cells: dict[str, str]

    def get(self, name: str) -> str:
        return self.cells.get(name, "")


def read_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> list[Row]:
    """Every data row of a CSV with a header, blank lines skipped. Column names are matched case-
    insensitively and returned as spelt in `required`/`optional`. An unknown or missing column is
    refused before anything is read (a misspelt optional column would otherwise be ignored)."""
    known = {name.lower(): name for name in (*required, *optional)}
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below; BOM of Excel exports)
    except OSError as exc:
        raise BulkError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise BulkError(f"{path} is empty: expected a header line ({', '.join(required)})") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BulkError(f"{path}, line 1: {exc}") from None
        names = [known.get(h.strip().lower()) for h in header]
        unknown = [h for h, n in zip(header, names, strict=True) if n is None]
        if unknown:
            raise BulkError(f"{path}, line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
                            f"expected {', '.join(required)}" + (f" and optionally {', '.join(optional)}"
                                                                 if optional else ""))  # fmt: skip
        missing = [n for n in required if n not in names]
        if missing:
            raise BulkError(f"{path}, line 1: missing column(s) {', '.join(missing)}")
        if len(set(names)) != len(names):
            raise BulkError(f"{path}, line 1: a column is named twice")
        rows = []
        line = 1
        try:
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(names):
                    rows.append(Row(line, {"": f"{len(cells)} cells, the header has {len(names)}"}))
                    continue
                rows.append(Row(line, {n: c.strip() for n, c in zip(names, cells, strict=True)}))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BulkError(f"{path}, after line {line}: {exc}") from None
    return rows


# -- writing cards and credits in pipelines -----------------------------------------------------------


@dataclass(frozen=True)
class NewCard:
    """A card to create: what gc_create_card takes (records.card_fields' fields), its owner, and its
    initial load, a Credit made idempotent by `request_id` (None: no load)."""

    card_id: str
    digest: str
    profile_id: str
    fields: dict[str, str]
    emission_ms: int | None
    expiring_ms: int | None
    load: Amount | None
    request_id: str
    description: str = ""


@dataclass(frozen=True)
class Creation:
    """What gc_create_card did: "created" (with the card's validity window, epoch ms), "exists" (the
    card's id names a card already: an earlier run made it), "code_taken" (another card has its
    code) or "invalid_window" (its expiring date is not after its emission date and now)."""

    status: str
    emission_ms: int = 0
    expiring_ms: int = 0


@dataclass(frozen=True)
class Credit:
    card_id: str
    amount: Amount
    request_id: str
    description: str = ""


@dataclass(frozen=True)
class CreditOutcome:
    """What gc_authorize answered for one Credit: "credited" or "replayed" with the transaction, or
    "conflict" / "refused" / "not_found" with the error's code and message."""

    status: str
    transaction_id: str = ""
    date_ms: int = 0
    code: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("credited", "replayed")


class LedgerWriter:
    """Writes cards and Credits through this release's ledger functions, a chunk per pipeline."""

    def __init__(self, store: LedgerStore):
        self.store = store
        self.keys = store.keys
        self.calls = store.calls
        self._validity_ms = str(store.settings.card_validity_days * 86_400_000)
        self._hold_ms = str(round(store.settings.hold_lifetime_seconds * 1000))
        self._library_ready = False
        self._library_lock = threading.Lock()

    def _ensure_library(self) -> None:
        """This release's library on every primary before the first pipeline. Chunks run on threads
        (in_order), and a pipeline that meets a missing library is loaded and run again whole: had one
        chunk's load landed while another chunk's pipeline was half done, the rerun would find that
        chunk's first cards already made and report them as made by an earlier run."""
        with self._library_lock:
            if not self._library_ready:
                self.store.ping()  # loads the library where a primary lacks it, as any ledger call does
                self._library_ready = True

    def _fcalls(self, name: str, calls: list[tuple[list[str], list[str]]], extra=None) -> list:
        """One pipeline of FCALLs of `name` (loading the library if Redis lacks it), then extra(pipe)."""
        self._ensure_library()
        function = self.calls.library.function(name)

        def build(pipe):
            for keys, args in calls:
                pipe.fcall(function, len(keys), *keys, *args)
            if extra:
                extra(pipe)

        return self.calls.run(lambda: self.calls.pipeline(build))

    def read_cards(self, card_ids: list[str]) -> dict[str, Card | None]:
        """Cards by id (None: no such card), gc_read_card in one pipeline per CHUNK ids."""
        function = self.calls.library.function("gc_read_card")
        found: dict[str, Card | None] = {}
        for ids in chunks(card_ids, CHUNK):

            def build(pipe, ids=ids):
                for i in ids:
                    pipe.fcall_ro(function, 2, self.keys.card(i), self.keys.holds(i[:2]))

            replies = self.calls.run(lambda build=build: self.calls.pipeline(build))
            found.update((i, card_from_read(i, r)) for i, r in zip(ids, replies, strict=True))
        return found

    def code_owners(self, digests: list[str]) -> dict[str, str | None]:
        """The card id each code digest names in the code index (None: no card), one pipeline per CHUNK."""
        found: dict[str, str | None] = {}
        for part in chunks(digests, CHUNK):
            replies = self.calls.pipeline(lambda pipe, part=part: [pipe.hget(self.keys.code_index(d), d) for d in part])
            found.update(zip(part, replies, strict=True))
        return found

    def create(self, cards: list[NewCard]) -> list[Creation]:
        """gc_create_card for each card, in one pipeline (Creation says what each call did)."""
        calls = []
        for c in cards:
            args = [c.card_id, c.digest, "" if c.emission_ms is None else str(c.emission_ms),
                    "" if c.expiring_ms is None else str(c.expiring_ms), self._validity_ms,
                    *(item for pair in c.fields.items() for item in pair)]  # fmt: skip
            calls.append((self.store._creation_keys(c.card_id, c.digest), args))
        done = []
        for reply in self._fcalls("gc_create_card", calls):
            if reply[0] == "ok":
                done.append(Creation("created", int(reply[2]), int(reply[3])))
            elif reply[0] in ("card_exists", "code_taken", "invalid_window"):
                done.append(Creation({"card_exists": "exists"}.get(reply[0], reply[0])))
            else:
                raise_for_reply(reply)
                raise ProviderError(f"unexpected reply to card creation: {reply!r}")
        return done

    def _durability(self, pipe) -> None:
        """With REDIS_WAIT_* set (one server only: config.py refuses them on a cluster), end the pipeline
        with the WAIT / WAITAOF a single write carries (ledger_calls.LedgerCalls._write). It is sent in
        the chunk's last pipeline, after its writes on the same connection, and replicas and the AOF
        take writes in the server's order: it covers the chunk's earlier writes too."""
        s = self.store.settings
        if not (s.redis_wait_local_aof or s.redis_wait_replicas) or is_cluster(self.store.redis):
            return
        if s.redis_wait_local_aof:
            pipe.execute_command("WAITAOF", s.redis_wait_local_aof, s.redis_wait_replicas, s.redis_wait_timeout_ms)
        else:
            pipe.execute_command("WAIT", s.redis_wait_replicas, s.redis_wait_timeout_ms)

    def _confirm(self, what: str, acked) -> None:
        """The WAIT / WAITAOF reply, if any: short of what was asked, the writes stand (committed) and the
        log says so, as ledger_calls.LedgerCalls._write does for a single write."""
        s = self.store.settings
        wanted = [s.redis_wait_local_aof, s.redis_wait_replicas] if s.redis_wait_local_aof else [s.redis_wait_replicas]
        got = acked if isinstance(acked, list) else [acked]
        if any(g < w for g, w in zip(got, wanted, strict=True)):
            log.warning("bulk %s not confirmed durable within %d ms: %r", what, s.redis_wait_timeout_ms, acked)

    def index_owners(self, cards: list[NewCard], created: list[NewCard], *, wait: bool = False) -> None:
        """Point the owner index at `cards` (ZADD: a repeat changes nothing), then read the layout
        marker again, as store._index_owner does for one card: if a migration to another layout has
        finished meanwhile, the cards this run just created (`created`) are withdrawn and the
        refusal raised (cards an earlier run made are left to that migration, like any other card).
        With `wait` (the chunk's last pipeline: nothing to load), it ends with _durability's WAIT."""
        if not cards:
            return
        k, layout_key = self.keys, self.calls.layout_key

        members: dict[str, dict[str, int]] = {}  # one ZADD per owner shard: a batch has one owner
        for c in cards:
            members.setdefault(k.owner_index(c.profile_id), {})[owner_member(c.profile_id, c.card_id)] = 0

        def build(pipe):
            for key, entries in members.items():
                pipe.zadd(key, entries)
            pipe.get(layout_key)
            if wait:
                self._durability(pipe)

        replies = self.calls.pipeline(build)
        layout = replies[len(members)]
        for acked in replies[len(members) + 1 :]:
            self._confirm("card creation", acked)
        if layout is None:  # flushed since this process checked: mark it again (store._index_owner)
            with translated_errors():
                layout = self.calls.mark_new_store(self.store.redis)
        refusal = layout_refusal(layout)
        if refusal is None:
            return
        if created:

            def unindex(pipe):  # the index goes before the cards it names
                for c in created:
                    pipe.zrem(k.owner_index(c.profile_id), owner_member(c.profile_id, c.card_id))

            self.calls.pipeline(unindex)
            discards = [(self.store._creation_keys(c.card_id, c.digest), [c.card_id, c.digest]) for c in created]
            self._fcalls("gc_discard_card", discards)
        raise refusal

    def credit(self, credits: list[Credit]) -> list[CreditOutcome]:
        """A Credit per entry through gc_authorize, in one pipeline (entries of one card stay in their
        order: one card is one slot), ended by _durability's WAIT when configured. Each is idempotent
        by its requestId: a repeat answers "replayed" with the original transaction, changing nothing."""
        calls = []
        for c in credits:
            amount = c.amount.ledger_args()
            args = [new_short_id(), "Credit", *amount, c.request_id, "", self._hold_ms, "", c.description]
            calls.append((self.keys.card_keys(c.card_id), args))
        if not calls:
            return []
        replies = self._fcalls("gc_authorize", calls, self._durability)
        for acked in replies[len(calls) :]:
            self._confirm("credits", acked)
        replies = replies[: len(calls)]
        outcomes = []
        for c, reply in zip(credits, replies, strict=True):
            if reply[0] == "id_taken":  # a new transaction id collided with one of the card's (2**-64): again
                try:
                    replayed, tx_id, date_ms = self.store.authorize(
                        c.card_id, operation="Credit", amount=c.amount, request_id=c.request_id, token="",
                        description=c.description,
                    )  # fmt: skip
                    outcomes.append(CreditOutcome("replayed" if replayed else "credited", tx_id, date_ms))
                except ProviderError as exc:
                    outcomes.append(CreditOutcome(_failure(exc), code=exc.code, message=exc.message))
                continue
            try:
                replayed, (tx_id, date_ms) = raise_for_reply(reply)
            except ProviderError as exc:
                outcomes.append(CreditOutcome(_failure(exc), code=exc.code, message=exc.message))
                continue
            outcomes.append(CreditOutcome("replayed" if replayed else "credited", tx_id, int(date_ms)))
        return outcomes


def _failure(exc: ProviderError) -> str:
    if exc.code == "request_id_conflict":
        return "conflict"
    return "not_found" if exc.code == "not_found" else "refused"
