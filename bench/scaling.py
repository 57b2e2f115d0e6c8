"""Scaling: latency and throughput with few vs many cards, and with 1 vs many transactions on one card,
plus Redis memory per card and per transaction, and the liability report's cost against the card count.

    python -m bench.scaling [--cards 100000] [--txs 10000] [--workers 4] [--seconds 5]
    python -m bench.scaling --life 2000 [--warm 100000] [--txs 10000]  # memory only: a card's real life
    python -m bench.scaling --books 1000,100000                       # the liability report only

Cards: on a private redis-server, 1,000 funded cards are created and GET card,
search by code and Debit are measured (wrk, under gunicorn); then cards are
bulk-created up to --cards in total, and the same scenarios are measured again
on 1,000 cards picked at random among all of them (credited first). The bulk
cards are real: they are made by LedgerStore.create_card itself (so ids, codes,
tokens, the card hash, its bucket's card list, code index, books and event, and
the owner index are exactly what the API writes), with its FCALL gc_create_card
and then its owner-index round trip (ZADD, GET of the layout marker) queued into
one pipeline of --batch cards instead of being sent as two round trips per card.
Memory per card = INFO used_memory delta / count, with where it goes per kind of
key. The liability report (LedgerStore.books(), what `flask cards books` reads) is
timed at both sizes.

Transactions: one card with 1 transaction and one with --txs transactions
(Debits, pipelined the same way through LedgerStore.authorize); GET
transactions (first page, a deep page and the default page of 1,000 ids), GET
card, GET one transaction and Debit are measured on each. Memory per
transaction is measured for Credits, for held Debits, and for Debits after
their settlement, events and indexes included.

A card's real life (--life N, memory only: no gunicorn, no wrk): a real gift card
has one load and one or two purchases, so marginal figures on a busy card say
little about it. On a fresh private redis-server (no persistence, default
encoding thresholds, which are printed), optionally warmed with --warm W cards
that have lived their whole life already (bulk, through LedgerStore: the
bucketed keys, 256 event streams, 16,384 card-list and code-index shards and
4,096 owner shards, then exist as in a store of that size), N cards go through
the HTTP API (the Flask app in process, through its WSGI test client, calling
as the Hub double in tests/hub.py does): (a) created, (b) one Credit each, (c)
one Debit each (with the card's redemptionToken and an orderInfo, as the Hub
sends it), (d) each Debit settled once in full. Bytes per card for each step
are used_memory deltas / N (all keys included), next to the targets (600 / 450
/ 750 B; 1,800 B for the whole life). Where they go: after each step, every key
is read with MEMORY USAGE key SAMPLES 0 and OBJECT ENCODING and summed per kind
of key (a card's own hash, and its share of the bucket's card list, code index,
holds, events and books and of the owner index); what used_memory grew by
beyond those sums (the main dict's bucket array, client buffers, ...) is shown
too. Then the --txs figures for busy cards (marginal bytes per transaction, with
where they go), so both shapes are printed side by side.

The liability report (--books COUNTS): cards are bulk-created and credited up to
each count in turn, and LedgerStore.books() (one pipeline of 256 HGETALLs, what
`flask cards books` and the /metrics gauges read) is timed at each: wall time
and Redis CPU per report. Target: it does not grow with the cards.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
import time
import uuid
from collections import defaultdict
from decimal import Decimal

from giftcard_provider import create_app
from giftcard_provider.keys import Keys
from giftcard_provider.money import Amount
from giftcard_provider.store import LedgerStore
from tests.hub import Hub

from .common import (
    AUTH,
    Gunicorn,
    RedisServer,
    Request,
    Servers,
    card_args,
    credit,
    json_body,
    ledger_for,
    load_headers,
    load_row,
    machine_note,
    parse_env,
    run_wrk,
    say,
    seed_cards,
    settings_for,
    table,
    used_memory,
    wrk_binary,
)
from .http_load import requests_for

KIB = 1024
PROBES = 1000
BOOKS_REPEATS = 50  # liability reports timed per size
BUSY_TXS = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cards", type=int, default=100_000, help="cards in the big data set (default 100,000)")
    parser.add_argument(
        "--txs",
        type=int,
        default=BUSY_TXS,
        help=f"transactions on the busy card (default {BUSY_TXS:,})",
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per scenario (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--batch", type=int, default=1000, help="pipeline size for bulk writes (default 1000)")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment for the app")
    parser.add_argument(
        "--life",
        type=int,
        default=0,
        metavar="N",
        help="instead of the load runs: memory of N cards through a real card's life (create, Credit, Debit, "
        "settle) via the HTTP API, and per transaction on busy cards (--txs); e.g. --life 2000",
    )
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        metavar="W",
        help="with --life: first give W cards their whole life (bulk, through LedgerStore), so the figures are "
        "those of a store of that size (default 0: an empty store)",
    )
    parser.add_argument(
        "--books",
        default="",
        metavar="COUNTS",
        help="instead of the load runs: time the liability report (LedgerStore.books) at each card count, "
        "e.g. --books 1000,100000",
    )


class _Queued(LedgerStore):
    """A LedgerStore whose Redis calls are queued into one pipeline instead of being sent as they come.

    Everything else (ids, codes, tokens, field values, keys, arguments, the order of
    the writes) is the real LedgerStore's code: for a card, create_card's FCALL
    gc_create_card (the card hash, its bucket's card list, code index, books and
    event), then _index_owner's ZADD to the owner index and GET of the layout marker.
    The replies it hands back are stand-ins for the caller's bookkeeping; the real
    ones are checked when the pipeline runs (see _flush).
    """

    def __init__(self, store: LedgerStore):
        self.__dict__.update(store.__dict__)
        self.pipe = store.redis.pipeline(transaction=False)
        self.queued: list[str] = []  # per queued command: the function's name, or "" for a plain command

    STAND_IN = {
        "gc_create_card": lambda args: ["ok", "0", "0", "1"],  # createdMs, emissionMs, expiringMs
        "gc_authorize": lambda args: ["ok", args[0], "0"],  # txId, dateMs
        "gc_settle": lambda args: ["ok", args[1], "1", "0", "2"],  # oid, minor, dateMs, exponent
    }

    def _fcall(self, name, keys, args, *, readonly=False):
        self.pipe.fcall(self.library.function(name), len(keys), *keys, *args)
        self.queued.append(name)
        return self.STAND_IN[name](args)

    def _pipeline(self, build) -> list:
        """_index_owner's round trip: queued, answered as if it succeeded (ZADD added, the marker is "v2")."""
        before = len(self.pipe.command_stack)
        build(self.pipe)
        count = len(self.pipe.command_stack) - before
        self.queued += [""] * count
        return [1] * (count - 1) + ["v2"]


def _flush(queued: _Queued) -> int:
    replies = queued.pipe.execute()
    # A function must answer "ok"; a plain command (ZADD, GET of the layout marker) must have written / found it.
    bad = [
        (name or "index write", reply)
        for name, reply in zip(queued.queued, replies, strict=True)
        if not (reply[0] == "ok" if name else reply)
    ]
    queued.queued.clear()
    if bad:
        raise RuntimeError(f"bulk write refused: {bad[:3]}")
    return len(replies)


def bulk_cards(
    store: LedgerStore, count: int, batch: int, keep: set[int], *, life: str = "", prefix: str = "bulk"
) -> tuple[dict[int, tuple], float]:
    """Create `count` cards; return the (id, code, token) of those whose index is in `keep`, and the seconds.

    `life` "credit": each card also gets a Credit of 50.00; "whole": a Credit of 50.00, a Debit of
    20.00 with an orderId, and that Debit settled in full (a typical card's life, as --life measures it).
    """
    queued, kept, started = _Queued(store), {}, time.monotonic()
    fifty, twenty = Amount.from_decimal(Decimal("50")), Amount.from_decimal(Decimal("20"))
    for i in range(count):
        card, code = queued.create_card(**card_args(profile_id=f"{prefix}-{i}@example.com"))
        if life:
            queued.authorize(card.id, operation="Credit", amount=fifty, request_id=uuid.uuid4().hex, token="")
        if life == "whole":
            _, tx, _ = queued.authorize(card.id, operation="Debit", amount=twenty, request_id=uuid.uuid4().hex,
                                        token=card.token, order_id=f"{1330270536830 + i}-01")  # fmt: skip
            queued.settle(card.id, tx, twenty, uuid.uuid4().hex)
        if i in keep:
            kept[i] = (card.id, code, card.token)
        if (i + 1) % batch == 0:
            _flush(queued)
        if (i + 1) % 100_000 == 0:
            say(f"  {i + 1:,} cards created ({(i + 1) / (time.monotonic() - started):,.0f}/s)")
    _flush(queued)
    return kept, time.monotonic() - started


def bulk_transactions(
    store: LedgerStore, card_id: str, count: int, batch: int, operation: str, value: str, token: str = ""
):
    queued, ids = _Queued(store), []
    amount = Amount.from_decimal(Decimal(value))
    for i in range(count):
        _, tx, _ = queued.authorize(card_id, operation=operation, amount=amount, request_id=f"bulk-{i}", token=token)
        ids.append(tx)
        if (i + 1) % batch == 0:
            _flush(queued)
    _flush(queued)
    return ids


def bulk_settle(store: LedgerStore, card_id: str, tx_ids: list[str], value: str, batch: int) -> None:
    queued = _Queued(store)
    amount = Amount.from_decimal(Decimal(value))
    for i, tx in enumerate(tx_ids):
        queued.settle(card_id, tx, amount, f"bulk-settle-{i}")
        if (i + 1) % batch == 0:
            _flush(queued)
    _flush(queued)


def run(args) -> list[str]:
    if getattr(args, "life", 0):  # run_all builds its own namespace, without --life
        return run_life(args)
    if getattr(args, "books", ""):
        return run_books(args)
    wrk_binary()
    say("## Scaling: many cards, many transactions on one card, memory")
    say(machine_note())
    summary: list[str] = []
    kw = {"connections": args.connections, "seconds": args.seconds, "warmup": args.warmup}
    with RedisServer() as server:
        store = ledger_for(server.url)
        r = store.redis
        with Gunicorn("wsgi:app", args.workers, server.url, "/health", env=parse_env(args.env)) as app:
            ours = Servers((app,), server)
            summary += cards_scaling(store, r, server, app, ours, args, kw)
            summary += transactions_scaling(store, r, app, ours, args, kw)
    return summary


def cards_scaling(store, r, server, app, ours, args, kw) -> list[str]:
    small = PROBES
    say(f"\n### {small:,} cards vs {args.cards:,} cards (WEB_CONCURRENCY={args.workers}, {args.connections} conn)")
    cards = seed_cards(store, small)
    books_small = time_books(store, server, BOOKS_REPEATS)
    results = []
    for label, reqs in list(requests_for(cards, cards[0]).items())[:3]:
        results.append(run_wrk(app.port, reqs, label=f"{label}, {small:,} cards", servers=ours, **kw))

    bulk = args.cards - small
    say(f"bulk-creating {bulk:,} more cards through LedgerStore.create_card, pipelined {args.batch} at a time ...")
    keep = set(random.sample(range(bulk), min(PROBES, bulk)))
    before = key_census(r, store.keys)
    kept, seconds = bulk_cards(store, bulk, args.batch, keep)
    after = key_census(r, store.keys)
    say(f"created {bulk:,} cards in {seconds:.1f} s ({bulk / seconds:,.0f}/s); {after.keys:,} keys in Redis")
    per_card = say_census_step(f"{bulk:,} cards created (no transactions)", bulk, before, after)
    books_big = time_books(store, server, BOOKS_REPEATS)

    probes = []
    for card_id, code, token in kept.values():
        credit(store, card_id, "100000", f"probe-{card_id}")
        probes.append(type(cards[0])(card_id, code, token))
    # The probes are real cards: found by their code through the API's own path.
    assert all(store.find_by_code(p.code).id == p.id for p in probes[:50])
    for label, reqs in list(requests_for(probes, probes[0]).items())[:3]:
        results.append(run_wrk(app.port, reqs, label=f"{label}, {args.cards:,} cards", servers=ours, **kw))
    results = [results[i + j] for i in range(3) for j in (0, 3)]  # pair small/big per scenario
    say(table(load_headers(False), [load_row(x) for x in results]))
    say_books([(small, books_small), (args.cards, books_big)])
    lines = [f"memory per card: {per_card:,.0f} bytes ({args.cards:,} cards, {r.info('memory')['used_memory_human']})"]
    for a, b in zip(results[::2], results[1::2], strict=True):
        lines.append(
            f"{a.label.split(',')[0]}: {a.rps:,.0f} -> {b.rps:,.0f} req/s, p99 {a.p99_ms:.1f} -> {b.p99_ms:.1f} ms, "
            f"gunicorn CPU {a.web_cpu_ms:.2f} -> {b.web_cpu_ms:.2f} ms/req, redis CPU {a.redis_cpu_us:.0f} -> "
            f"{b.redis_cpu_us:.0f} us/req ({small:,} -> {args.cards:,} cards)"
        )
    lines.append(books_line([(small, books_small), (args.cards, books_big)]))
    return lines


def transactions_scaling(store, r, app, ours, args, kw) -> list[str]:
    n = args.txs
    say(f"\n### 1 vs {n:,} transactions on one card")
    one, busy, settled = seed_cards(store, 3, balance="1000000")
    credits = seed_cards(store, 1, balance="1")[0]
    # busy: n - 1 Debits after its seed Credit (n transactions); credits: n Credits; settled: n Debits, then settled.
    phases, debit_ids = busy_card_memory(store, n, args.batch, busy, credits, settled)

    def reqs(card, path="", rng=None):
        headers = (("REST-Range", rng),) if rng else ()
        return [Request("GET", f"/giftcards/{card.id}{path}", headers=headers)]

    last = f"resources={n - 50}-{n - 1}"
    first_tx = store.transaction_ids(one.id, 0, 0)[0][0]
    scenarios = [
        ("GET transactions 0-49, 1 tx", reqs(one, "/transactions", "resources=0-49")),
        (f"GET transactions 0-49, {n:,} txs", reqs(busy, "/transactions", "resources=0-49")),
        (f"GET transactions {n - 50}-{n - 1}, {n:,} txs", reqs(busy, "/transactions", last)),
        (f"GET transactions (no REST-Range: 1,000 ids), {n:,} txs", reqs(busy, "/transactions")),
        ("GET card, 1 tx", reqs(one)),
        (f"GET card, {n:,} txs ({n - 1:,} holds)", reqs(busy)),
        ("GET transaction, 1 tx", reqs(one, f"/transactions/{first_tx}")),
        (f"GET transaction, {n:,} txs", reqs(busy, f"/transactions/{debit_ids[n // 2]}")),
    ]
    results = [run_wrk(app.port, q, label=label, servers=ours, **kw) for label, q in scenarios]
    for card, label in ((one, "1 tx before"), (busy, f"{n:,} txs before")):
        body = json_body(operation="Debit", value=0.01, requestId="__RID__", redemptionToken=card.token)
        results.append(
            run_wrk(
                app.port,
                [Request("POST", f"/giftcards/{card.id}/transactions", body)],
                label=f"Debit, {label}",
                servers=ours,
                **kw,
            )
        )
    say(table(load_headers(False), [load_row(x) for x in results]))
    say_busy_card_memory(n, phases)
    per_credit, per_debit, per_settled = (p.per_tx for p in phases)
    worst = max(per_credit, per_debit, per_settled)
    verdict = "met" if worst <= KIB else "MISSED"
    lines = [
        f"memory per transaction: Credit {per_credit:,.0f} B, held Debit {per_debit:,.0f} B, settled Debit "
        f"{per_settled:,.0f} B (target <= 1 KiB: {verdict})"
    ]
    by = {x.label: x for x in results}
    for a, b in (
        ("GET transactions 0-49, 1 tx", f"GET transactions 0-49, {n:,} txs"),
        ("GET card, 1 tx", f"GET card, {n:,} txs ({n - 1:,} holds)"),
        ("Debit, 1 tx before", f"Debit, {n:,} txs before"),
    ):
        x, y = by[a], by[b]
        lines.append(
            f"{a.rsplit(',', 1)[0]}: {x.rps:,.0f} -> {y.rps:,.0f} req/s, p99 {x.p99_ms:.1f} -> {y.p99_ms:.1f} ms, "
            f"gunicorn CPU {x.web_cpu_ms:.2f} -> {y.web_cpu_ms:.2f} ms/req, redis CPU {x.redis_cpu_us:.0f} -> "
            f"{y.redis_cpu_us:.0f} us/req (1 -> {n:,} transactions)"
        )
    deep = by[f"GET transactions {n - 50}-{n - 1}, {n:,} txs"]
    full = by[f"GET transactions (no REST-Range: 1,000 ids), {n:,} txs"]
    lines.append(
        f"GET transactions on {n:,} txs: deep page {deep.rps:,.0f} req/s p99 {deep.p99_ms:.1f} ms "
        f"({deep.web_cpu_ms:.2f} ms CPU/req); default 1,000-id page {full.rps:,.0f} req/s p99 {full.p99_ms:.1f} ms "
        f"({full.web_cpu_ms:.1f} ms CPU/req)"
    )
    return lines


# -- a busy card: marginal bytes per transaction ----------------------------------------


@dataclasses.dataclass
class BusyPhase:
    """One busy-card phase: `count` transactions of one kind on one card, and where their bytes went."""

    label: str
    count: int
    used: int  # used_memory delta
    keys: dict[str, tuple[int, int, str]]  # key kind -> (bytes before, bytes after, encoding after)
    seconds: float

    @property
    def per_tx(self) -> float:
        return self.used / self.count


def _bucket_sizes(r, keys: Keys, card_id: str) -> dict[str, tuple[int, str]]:
    """MEMORY USAGE (every element: SAMPLES 0) and encoding of a card's hash and its bucket's shared keys."""
    bucket = card_id[:2]
    named = {
        "card hash gc:{b}:card:<id>": keys.card(card_id),
        "bucket events gc:{b}:events": keys.events(bucket),
        "bucket holds gc:{b}:holds": keys.holds(bucket),
        "bucket books gc:{b}:books": keys.books(bucket),
    }
    pipe = r.pipeline(transaction=False)
    for key in named.values():
        pipe.memory_usage(key, samples=0)
        pipe.object("encoding", key)
    replies = pipe.execute()
    return {kind: (replies[2 * i] or 0, replies[2 * i + 1] or "-") for i, kind in enumerate(named)}


def _phase(store: LedgerStore, label: str, card_id: str, count: int, work) -> BusyPhase:
    r = store.redis
    before, mem0, started = _bucket_sizes(r, store.keys, card_id), used_memory(r), time.monotonic()
    result = work()
    seconds = time.monotonic() - started
    after, used = _bucket_sizes(r, store.keys, card_id), used_memory(r) - mem0
    sizes = {kind: (before[kind][0], after[kind][0], after[kind][1]) for kind in after}
    return BusyPhase(label, count, used, sizes, seconds), result


def busy_card_memory(store: LedgerStore, n: int, batch: int, busy, credits, settled):
    """Marginal bytes per transaction on busy cards: n - 1 held Debits on `busy`, n - 1 Credits on `credits`,
    n - 1 Debits then settled in full on `settled` (each card already credited once). Returns the three
    phases (Credit, held Debit, settled Debit) and the held Debits' ids."""
    m = n - 1
    credit_phase, _ = _phase(store, "Credit", credits.id, m,
                             lambda: bulk_transactions(store, credits.id, m, batch, "Credit", "1"))  # fmt: skip
    debit_phase, debit_ids = _phase(
        store, "Debit, held", busy.id, m, lambda: bulk_transactions(store, busy.id, m, batch, "Debit", "1", busy.token)
    )

    def debit_then_settle():
        ids = bulk_transactions(store, settled.id, m, batch, "Debit", "1", settled.token)
        bulk_settle(store, settled.id, ids, "1", batch)

    settled_phase, _ = _phase(store, "Debit, then settled in full", settled.id, m, debit_then_settle)
    assert store.card(busy.id).transactions == n
    return (credit_phase, debit_phase, settled_phase), debit_ids


def say_busy_card_memory(n: int, phases) -> None:
    say(f"\nRedis memory per transaction ({n - 1:,} on one card; events and indexes included):")
    rows = [[p.label, f"{p.per_tx:,.0f}", f"{p.seconds:.1f}"] for p in phases]
    say(table(["transaction", "bytes per transaction (used_memory delta / count)", "seconds to write them"], rows))
    say("\nWhere they go (MEMORY USAGE SAMPLES 0 deltas of the card's hash and its bucket's keys, per transaction;")
    say("the bucket's keys are shared with the other cards of the bucket, which did not change meanwhile):")
    kinds = list(phases[0].keys)
    rows = []
    for kind in kinds:
        rows.append([kind] + [f"{(p.keys[kind][1] - p.keys[kind][0]) / p.count:+,.0f} ({p.keys[kind][2]})"
                              for p in phases])  # fmt: skip
    accounted = [sum(v[1] - v[0] for v in p.keys.values()) / p.count for p in phases]
    rows.append(["sum of MEMORY USAGE", *(f"{a:+,.0f}" for a in accounted)])
    rows.append(["used_memory delta", *(f"{p.per_tx:+,.0f}" for p in phases)])
    say(table(["key (encoding after)", *(p.label for p in phases)], rows))


# -- the liability report -------------------------------------------------------------------


@dataclasses.dataclass
class BooksTiming:
    wall_ms: float  # median over the repeats
    redis_cpu_us: float  # per report: INFO cpu delta / repeats
    currencies: int
    cards_in_books: int


def time_books(store: LedgerStore, server: RedisServer, repeats: int) -> BooksTiming:
    """LedgerStore.books() `repeats` times: the median wall time and Redis's CPU per report."""
    r = store.redis
    store.books()  # warm: connection open
    walls = []
    cpu0 = _redis_cpu(r)
    for _ in range(repeats):
        started = time.perf_counter()
        totals = store.books()
        walls.append((time.perf_counter() - started) * 1000)
    cpu = _redis_cpu(r) - cpu0
    cards = sum(b.cards for b in totals.values())
    return BooksTiming(statistics.median(walls), cpu / repeats * 1e6, len(totals), cards)


def _redis_cpu(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def say_books(sizes: list[tuple[int, BooksTiming]]) -> None:
    say(f"\nThe liability report (LedgerStore.books(): one pipeline of 256 HGETALLs), {BOOKS_REPEATS} reports each:")
    rows = [[f"{n:,}", f"{t.cards_in_books:,}", f"{t.wall_ms:.2f}", f"{t.redis_cpu_us:,.0f}"] for n, t in sizes]
    say(table(["cards", "cards in the books", "wall ms (median)", "Redis CPU us per report"], rows))


def books_line(sizes: list[tuple[int, BooksTiming]]) -> str:
    parts = [f"{t.wall_ms:.2f} ms / {t.redis_cpu_us:,.0f} us Redis CPU at {n:,} cards" for n, t in sizes]
    return "liability report (books): " + "; ".join(parts)


def run_books(args) -> list[str]:
    counts = sorted(int(v.replace("_", "")) for v in args.books.split(",") if v.strip())
    say("## The liability report against the number of cards (LedgerStore.books, as `flask cards books`)")
    say(machine_note())
    sizes = []
    with RedisServer() as server:
        store = ledger_for(server.url)
        app = create_app(dataclasses.replace(settings_for(server.url), redis_socket_timeout=30))
        made = 0
        for count in counts:
            if count > made:
                say(f"bulk-creating and crediting {count - made:,} cards (pipelined {args.batch} at a time) ...")
                _, seconds = bulk_cards(store, count - made, args.batch, set(), life="credit", prefix=f"books-{made}")
                say(f"  done in {seconds:.1f} s")
                made = count
            timing = time_books(store, server, BOOKS_REPEATS)
            cli = app.test_cli_runner().invoke(args=["cards", "books", "--json"])
            assert cli.exit_code == 0, cli.output
            read_ms = float(re.search(r'"readMs": ([0-9.]+)', cli.output)[1])
            say(f"{count:,} cards: books() {timing.wall_ms:.2f} ms median, {timing.redis_cpu_us:,.0f} us Redis CPU "
                f"per report; `flask cards books --json` readMs {read_ms:.2f}")  # fmt: skip
            sizes.append((count, timing))
    say_books(sizes)
    return [books_line(sizes)]


# -- a card's real life ---------------------------------------------------------------

# The encoding thresholds and stream node sizes that decide what a key costs (printed with the figures).
MEMORY_CONFIG = (
    "hash-max-listpack-entries",
    "hash-max-listpack-value",
    "list-max-listpack-size",
    "set-max-intset-entries",
    "zset-max-listpack-entries",
    "zset-max-listpack-value",
    "stream-node-max-bytes",
    "stream-node-max-entries",
)
# Targets of issue "Ledger v2", bytes per card: the step's label, its target, the steps it covers.
LIFE_TARGETS = (
    ("new card", 600, ("new card",)),
    ("+ first Credit", 450, ("+ first Credit",)),
    ("+ Debit, settled once", 750, ("+ Debit (held)", "+ its settlement (in full)")),
)
LIFE_TOTAL_TARGET = 1800
LIFE_SAMPLES = 3  # cards whose every key is listed after each step


@dataclasses.dataclass
class KeyCensus:
    """Every key in the database at one moment: MEMORY USAGE (SAMPLES 0) and encodings, per kind of key."""

    used_memory: int
    clients: int  # INFO memory mem_clients_normal: client query and output buffers, part of used_memory
    keys: int
    bytes: dict[str, int]
    count: dict[str, int]
    encodings: dict[str, set[str]]

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


# A key's kind: its name with the bucket, shard, card id and window numbers replaced by placeholders
# (keys.py builds the names; this only recognises their variable parts).
_KIND_PATTERNS = (
    (re.compile(r"\{b[0-9a-f]{2}\}"), "{b}"),
    (re.compile(r"\{o[0-9a-f]{3}\}"), "{o}"),
    (re.compile(r":card:[0-9a-f]{32}$"), ":card:<id>"),
    (re.compile(r":(cards|codes):\d+$"), r":\1:<nn>"),
    (re.compile(r":limits:.*$"), ":limits:..."),
    (re.compile(r":consumers:.*$"), ":consumers:<name>"),
)
KIND_NAMES = {  # what each kind is, for the tables
    "card:<id>": "card hash (the card and its transactions)",
    "cards:<nn>": "bucket card list shard",
    "codes:<nn>": "bucket code index shard",
    "holds": "bucket holds (deadlines)",
    "events": "bucket event stream",
    "books": "bucket books",
    "owners": "owner index shard",
    "layout": "layout marker",
}


def key_kind(key: str, keys: Keys) -> str:
    """gc:{b3f}:card:<32 hex> -> "gc:{b}:card:<id> (card hash ...)"; keys outside the ledger as they are."""
    if not key.startswith(f"{keys.prefix}:"):
        return "other: " + re.sub(r"\d+$", "<n>", key)
    kind = key
    for pattern, placeholder in _KIND_PATTERNS:
        kind = pattern.sub(placeholder, kind)
    tail = kind.rsplit("}:", 1)[-1].removeprefix(f"{keys.prefix}:")
    return f"{kind} ({KIND_NAMES[tail]})" if tail in KIND_NAMES else kind


def key_census(r, keys: Keys) -> KeyCensus:
    r.execute_command("MEMORY PURGE")  # see run_life: it frees pages, not allocations; used_memory does not move
    memory = r.info("memory")
    names = list(r.scan_iter(count=1000))
    sizes, encodings = [], []
    for start in range(0, len(names), 10_000):
        pipe = r.pipeline(transaction=False)
        for key in names[start : start + 10_000]:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        replies = pipe.execute()
        sizes += replies[::2]
        encodings += replies[1::2]
    census = KeyCensus(memory["used_memory"], memory["mem_clients_normal"], len(names), defaultdict(int),
                       defaultdict(int), defaultdict(set))  # fmt: skip
    for key, size, encoding in zip(names, sizes, encodings, strict=True):
        kind = key_kind(key, keys)
        census.bytes[kind] += size or 0
        census.count[kind] += 1
        census.encodings[kind].add(encoding or "?")
    return census


def _entries(r, key: str) -> int:
    """Elements of a key of this kind: fields of a hash, members of a zset, entries of a stream."""
    rtype = r.type(key)
    return {"hash": r.hlen, "zset": r.zcard, "stream": r.xlen}.get(rtype, lambda k: 1)(key)


def card_key_rows(r, store: LedgerStore, card_id: str, code: str, profile_id: str) -> list[list[str]]:
    """Every key one card is written to: its own hash, whole; the shared keys, with its share (size / elements)."""
    k, bucket = store.keys, card_id[:2]
    named = [
        k.card(card_id),
        k.card_list(card_id),
        k.code_index(store.hasher.digest(code)),
        k.owner_index(profile_id),
        k.holds(bucket),
        k.events(bucket),
        k.books(bucket),
    ]
    rows = []
    for key in named:
        size = r.memory_usage(key, samples=0) or 0
        kind = key_kind(key, k)
        n = _entries(r, key) if size else 0
        share = size if key == k.card(card_id) else (size / n if n else 0)
        rows.append([kind, r.object("encoding", key) or "(none)", f"{n:,}", f"{size:,}", f"{share:,.0f}"])
    return rows


def say_sample_cards(r, store: LedgerStore, samples: list[tuple[str, str, str]]) -> None:
    """The keys of the first sample card (its hash whole, its share of the others); the others' hash sizes."""
    card_id, code, profile_id = samples[0]
    rows = card_key_rows(r, store, card_id, code, profile_id)
    total = sum(float(row[4].replace(",", "")) for row in rows)
    say(f"\nSample card {card_id} (MEMORY USAGE key SAMPLES 0; a shared key's share = its bytes / its elements):")
    say(table(["key", "encoding", "elements", "bytes", "this card's share"], [*rows, ["total", "", "", "",
                                                                                     f"{total:,.0f}"]]))  # fmt: skip
    hashes = [r.memory_usage(store.keys.card(c), samples=0) or 0 for c, _, _ in samples]
    fields = [r.hlen(store.keys.card(c)) for c, _, _ in samples]
    say("sample cards' hashes: " + ", ".join(f"{h:,} B ({f} fields)" for h, f in zip(hashes, fields, strict=True)))


def say_census_step(label: str, n: int, before: KeyCensus, after: KeyCensus) -> float:
    """Where one step's bytes went, per card; returns the used_memory delta per card."""
    delta = (after.used_memory - before.used_memory) / n
    rows = []
    kinds = set(after.bytes) | set(before.bytes)  # a kind may vanish in a step
    for kind in sorted(kinds, key=lambda k: -(after.bytes.get(k, 0) - before.bytes.get(k, 0))):
        count = (after.count.get(kind, 0) - before.count.get(kind, 0)) / n
        grew = (after.bytes.get(kind, 0) - before.bytes.get(kind, 0)) / n
        if not count and not grew:
            continue
        encodings = after.encodings.get(kind) or {"(deleted)"}
        rows.append([kind, "/".join(sorted(encodings)), f"{count:+.3f}", f"{grew:+,.0f}"])
    accounted = (after.total - before.total) / n
    new_keys = (after.keys - before.keys) / n
    rest = delta - accounted
    per_key = f"{rest / new_keys:,.0f} B per key added" if new_keys > 0 else "no key added"
    rows.append(["sum of MEMORY USAGE", "", f"{new_keys:+.3f}", f"{accounted:+,.0f}"])
    rows.append([f"used_memory beyond MEMORY USAGE ({per_key})", "", "", f"{rest:+,.0f}"])
    rows.append(
        ["  of which client buffers (mem_clients_normal)", "", "", f"{(after.clients - before.clients) / n:+,.0f}"]
    )
    rows.append(["used_memory delta", "", "", f"{delta:+,.0f}"])
    say(f"\n#### {label}: {delta:,.0f} B per card (used_memory delta / {n:,})")
    say(table(["key kind", "encoding", "keys per card", "bytes per card"], rows))
    return delta


def life_requests(hub: Hub, n: int, run: str):
    """The four steps of a card's life, as the Hub makes them; each a function of the card index."""
    cards: list[dict] = [{} for _ in range(n)]
    debits: list[str] = [""] * n

    def create(i: int) -> None:
        cards[i] = hub.create_card(profileId=f"shopper-{run}-{i}@example.com")

    def load(i: int) -> None:
        hub.credit(cards[i]["id"], Decimal("50.00"), rid=uuid.uuid4().hex)

    def debit(i: int) -> None:
        order = {"orderId": f"{1330270536830 + i}-01", "clientProfile": {"email": f"shopper-{run}-{i}@example.com"}}
        response = hub.transaction(
            cards[i]["id"], "Debit", Decimal("20.00"), rid=uuid.uuid4().hex, orderInfo=order, description=""
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        debits[i] = response.json["id"]

    def settle(i: int) -> None:
        response = hub.settle(cards[i]["id"], debits[i], Decimal("20.00"), rid=uuid.uuid4().hex)
        assert response.status_code == 200, response.get_data(as_text=True)

    steps = [
        ("new card", create),
        ("+ first Credit", load),
        ("+ Debit (held)", debit),
        ("+ its settlement (in full)", settle),
    ]
    return cards, steps


def run_life(args) -> list[str]:
    n, warm = args.life, getattr(args, "warm", 0)
    say(f"## A card's real life: Redis memory of {n:,} cards through the HTTP API"
        + (f", in a store of {warm:,} cards" if warm else ", in an empty store"))  # fmt: skip
    say(machine_note())
    with RedisServer() as server:
        r = server.client()
        info = r.info("server")
        config = {name: r.config_get(name)[name] for name in MEMORY_CONFIG}
        say(f"redis-server {info['redis_version']} ({r.info('memory')['mem_allocator']}), no persistence, config as "
            "shipped: " + ", ".join(f"{k} {v}" for k, v in config.items()))  # fmt: skip
        settings = dataclasses.replace(settings_for(server.url), log_level="WARNING", redis_socket_timeout=30)
        app = create_app(settings)
        store = app.extensions["giftcard_provider"]["store"]
        hub = Hub(app.test_client(), AUTH)
        keys = store.keys

        # One card through its whole life first: the library loaded, connections made, lazy state built.
        _, warmup = life_requests(hub, 1, "warmup")
        for _, step in warmup:
            step(0)
        if warm:
            say(f"warming: {warm:,} cards through their whole life (bulk, LedgerStore pipelined {args.batch} "
                "at a time) ...")  # fmt: skip
            mem0 = used_memory(r)
            _, seconds = bulk_cards(store, warm, args.batch, set(), life="whole", prefix="warm")
            say(f"  done in {seconds:.0f} s: {(used_memory(r) - mem0) / warm:,.0f} B per warm card, "
                f"{r.dbsize():,} keys, used_memory {used_memory(r) / 2**20:,.1f} MiB")  # fmt: skip
        # used_memory counts the bytes allocated; MEMORY PURGE only hands jemalloc's dirty pages back to the OS
        # (RSS), so it cannot shrink used_memory. Each census purges anyway and reads used_memory after it. The
        # one thing a purge does move: the first one on a fresh server adds ~24 KB once (seen here; later purges
        # move it by a few bytes at most), which this first purge absorbs before any step is measured.
        reads = [used_memory(r), used_memory(r)]
        r.execute_command("MEMORY PURGE")
        reads.append(used_memory(r))
        say("used_memory, read twice, then after MEMORY PURGE: " + " / ".join(f"{x:,}" for x in reads) + " B")

        cards, steps = life_requests(hub, n, "life")
        census = key_census(r, keys)
        deltas, started = {}, time.monotonic()
        for label, step in steps:
            for i in range(n):
                step(i)
            after = key_census(r, keys)
            deltas[label] = say_census_step(label, n, census, after)
            say_sample_cards(r, store, [(c["id"], c["redemptionCode"], f"shopper-life-{i}@example.com")
                                        for i, c in enumerate(cards[:LIFE_SAMPLES])])  # fmt: skip
            census = after
        say(f"\n({n:,} cards x 4 requests in {time.monotonic() - started:.0f} s)")

        rows, total, lines = [], 0.0, []
        where = f"{n:,} cards, " + (f"store of {warm:,} warm cards" if warm else "empty store")
        for label, target, covers in LIFE_TARGETS:
            got = sum(deltas[c] for c in covers)
            total += got
            verdict = "met" if got <= target else "MISSED"
            rows.append([label, f"{got:,.0f}", f"{total:,.0f}", f"{target:,}", verdict])
            lines.append(f"card life ({where}), {label}: {got:,.0f} B per card (target {target:,}: {verdict})")
        verdict = "met" if total <= LIFE_TOTAL_TARGET else "MISSED"
        rows.append(["whole life", f"{total:,.0f}", "", f"{LIFE_TOTAL_TARGET:,}", verdict])
        say(f"\n### A card's real life, bytes per card (used_memory deltas over {where}, all keys included)")
        say(table(["step", "bytes per card", "cumulative", "target", ""], rows))
        lines.append(f"card life ({where}), whole: {total:,.0f} B per card (target {LIFE_TOTAL_TARGET:,}: {verdict})")

        n_txs = args.txs
        say(f"\n### A busy card: marginal bytes per transaction ({n_txs:,} on one card)")
        busy, settled = seed_cards(store, 2, balance="1000000")
        credits = seed_cards(store, 1, balance="1")[0]
        phases, _ = busy_card_memory(store, n_txs, args.batch, busy, credits, settled)
        say_busy_card_memory(n_txs, phases)
        lines.append(
            f"busy card, per transaction: Credit {phases[0].per_tx:,.0f} B, held Debit {phases[1].per_tx:,.0f} B, "
            f"settled Debit {phases[2].per_tx:,.0f} B ({n_txs:,} on one card)"
        )
        r.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    summary = run(parser.parse_args())
    say("\n## Summary")
    say("\n".join(summary))


if __name__ == "__main__":
    main()
