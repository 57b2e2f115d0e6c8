"""Scaling: latency and throughput with few vs many cards, and with 1 vs many transactions on one card,
plus Redis memory per card and per transaction.

    python -m bench.scaling [--cards 100000] [--txs 10000] [--workers 4] [--seconds 5]
    python -m bench.scaling --life 500 [--txs 10000]     # memory only: a card's real life, and a busy card

Cards: on a private redis-server, 1,000 funded cards are created and GET card,
search by code and Debit are measured (wrk, under gunicorn); then cards are
bulk-created up to --cards in total, and the same scenarios are measured again
on 1,000 cards picked at random among all of them (credited first). The bulk
cards are real: they are made by LedgerStore.create_card itself (so ids,
codes, tokens, the card hash with its codeDigest, the code index and the owner
index are exactly what the API writes), with its FCALL gc_create_card and then
its index writes (SET NX of the code index, SADD to the owner index) queued
into one pipeline of --batch cards instead of being sent as two round trips per
card. Memory per card = INFO used_memory delta / count.

Transactions: one card with 1 transaction and one with --txs transactions
(Debits, pipelined the same way through LedgerStore.authorize); GET
transactions (first page, a deep page and the default page of 1,000 ids), GET
card, GET one transaction and Debit are measured on each. Memory per
transaction is measured for Credits, for held Debits, and for Debits after
their settlement, journal entries and indexes included (target <= 1 KiB).

A card's real life (--life N, memory only: no gunicorn, no wrk): a real gift card
has one load and one or two purchases, so marginal figures on a busy card say
little about it. On a fresh private redis-server (no persistence, default
encoding thresholds, which are printed), N cards go through the HTTP API (the
Flask app in process, through its WSGI test client, calling as the Hub double
in tests/hub.py does): (a) created, (b) one Credit each, (c) one Debit each
(with the card's redemptionToken and an orderInfo, as the Hub sends it), (d)
each Debit settled once in full. Bytes per card for each step are used_memory
deltas / N (all keys included), next to the targets (600 / 450 / 750 B). Where
they go: after each step, every key is read with MEMORY USAGE key SAMPLES 0 and
OBJECT ENCODING and summed per kind of key; what used_memory grew by beyond
those sums (the main dict's bucket array, client buffers, ...) is shown per key
added. Then the --txs figures for busy cards (marginal bytes per transaction),
so both shapes are printed side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import time
import uuid
from collections import defaultdict
from decimal import Decimal

from giftcard_provider import create_app
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cards", type=int, default=100_000, help="cards in the big data set (default 100,000)")
    parser.add_argument("--txs", type=int, default=10_000, help="transactions on the busy card (default 10,000)")
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
        "settle) via the HTTP API, and per transaction on busy cards (--txs); e.g. --life 500",
    )


class _Queued(LedgerStore):
    """A LedgerStore whose Redis calls are queued into one pipeline instead of being sent as they come.

    Everything else (ids, codes, tokens, field values, keys, arguments, the order of
    the writes) is the real LedgerStore's code: for a card, create_card's FCALL
    gc_create_card (the card hash, codeDigest included), then _index_card's SET NX of
    the code index and SADD to the owner index. The replies it hands back are stand-ins
    for the caller's bookkeeping; the real ones are checked when the pipeline runs (see
    _flush).
    """

    def __init__(self, store: LedgerStore):
        self.__dict__.update(store.__dict__)
        self.pipe = store.redis.pipeline(transaction=False)
        self.queued: list[str] = []  # per queued command: the function's name, or "" for a plain command

    STAND_IN = {
        "gc_create_card": lambda args: ["ok", "0", "0", "1"],  # createdMs, emissionMs, expiringMs
        "gc_authorize": lambda args: ["ok", args[0], "0"],  # txId, dateMs
        "gc_settle": lambda args: ["ok", args[0], args[1], "0", "2"],  # oid, minor, dateMs, exponent
    }

    def _fcall(self, name, keys, args, *, readonly=False):
        self.pipe.fcall(self.library.function(name), len(keys), *keys, *args)
        self.queued.append(name)
        return self.STAND_IN[name](args)

    def _pipeline(self, build) -> list:
        """The index writes of _index_card: queued, answered as if they succeeded (SET NX claimed, SADD added)."""
        before = len(self.pipe.command_stack)
        build(self.pipe)
        count = len(self.pipe.command_stack) - before
        self.queued += [""] * count
        return [True] * count


def _flush(queued: _Queued) -> int:
    replies = queued.pipe.execute()
    # A function must answer "ok"; a plain command (SET NX, SADD) must have written (a code taken: None).
    bad = [
        (name or "index write", reply)
        for name, reply in zip(queued.queued, replies, strict=True)
        if not (reply[0] == "ok" if name else reply)
    ]
    queued.queued.clear()
    if bad:
        raise RuntimeError(f"bulk write refused: {bad[:3]}")
    return len(replies)


def bulk_cards(store: LedgerStore, count: int, batch: int, keep: set[int]) -> tuple[dict[int, tuple], float]:
    """Create `count` cards; return the (id, code, token) of those whose index is in `keep`, and the seconds."""
    queued, kept, started = _Queued(store), {}, time.monotonic()
    for i in range(count):
        card, code = queued.create_card(**card_args(profile_id=f"bulk-{i}@example.com"))
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
            summary += cards_scaling(store, r, app, ours, args, kw)
            summary += transactions_scaling(store, r, app, ours, args, kw)
    return summary


def cards_scaling(store, r, app, ours, args, kw) -> list[str]:
    small = PROBES
    say(f"\n### {small:,} cards vs {args.cards:,} cards (WEB_CONCURRENCY={args.workers}, {args.connections} conn)")
    cards = seed_cards(store, small)
    results = []
    for label, reqs in list(requests_for(cards, cards[0]).items())[:3]:
        results.append(run_wrk(app.port, reqs, label=f"{label}, {small:,} cards", servers=ours, **kw))

    bulk = args.cards - small
    say(f"bulk-creating {bulk:,} more cards through LedgerStore.create_card, pipelined {args.batch} at a time ...")
    keep = set(random.sample(range(bulk), min(PROBES, bulk)))
    mem0 = used_memory(r)
    kept, seconds = bulk_cards(store, bulk, args.batch, keep)
    per_card = (used_memory(r) - mem0) / bulk
    total = r.dbsize()
    say(f"created {bulk:,} cards in {seconds:.1f} s ({bulk / seconds:,.0f}/s); {total:,} keys in Redis")
    say(f"memory per card (card hash + code index + owner index, no transactions): {per_card:,.0f} bytes")
    sample = list(kept.items())[:200]
    sizes = {
        "gc:{C}:card (hash)": [r.memory_usage(store.keys.card(c[0]), samples=0) for _, c in sample],
        "gc:code:<hmac> (string)": [
            r.memory_usage(store.keys.code_index(store.hasher.digest(c[1])), samples=0) for _, c in sample
        ],
        "gc:owner:<profile> (set of 1)": [
            r.memory_usage(store.keys.owner_index(f"bulk-{i}@example.com"), samples=0) for i, _ in sample
        ],
    }
    rows = [[name, f"{sum(v) / len(v):,.0f}"] for name, v in sizes.items()]
    say(table(["key (MEMORY USAGE, mean of 200 cards)", "bytes"], rows))

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
    lines = [f"memory per card: {per_card:,.0f} bytes ({args.cards:,} cards, {r.info('memory')['used_memory_human']})"]
    for a, b in zip(results[::2], results[1::2], strict=True):
        lines.append(
            f"{a.label.split(',')[0]}: {a.rps:,.0f} -> {b.rps:,.0f} req/s, p99 {a.p99_ms:.1f} -> {b.p99_ms:.1f} ms, "
            f"gunicorn CPU {a.web_cpu_ms:.2f} -> {b.web_cpu_ms:.2f} ms/req, redis CPU {a.redis_cpu_us:.0f} -> "
            f"{b.redis_cpu_us:.0f} us/req ({small:,} -> {args.cards:,} cards)"
        )
    return lines


def transactions_scaling(store, r, app, ours, args, kw) -> list[str]:
    n = args.txs
    say(f"\n### 1 vs {n:,} transactions on one card")
    one, busy, settled = seed_cards(store, 3, balance="1000000")
    credits = seed_cards(store, 1, balance="1")[0]
    # busy: n - 1 Debits after its seed Credit (n transactions); credits: n Credits; settled: n Debits, then settled.
    (per_credit, per_debit, per_settled), debit_ids, settled_ids = busy_card_memory(
        store, n, args.batch, busy, credits, settled
    )

    def reqs(card, path="", rng=None):
        headers = (("REST-Range", rng),) if rng else ()
        return [Request("GET", f"/giftcards/{card.id}{path}", headers=headers)]

    last = f"resources={n - 50}-{n - 1}"
    scenarios = [
        ("GET transactions 0-49, 1 tx", reqs(one, "/transactions", "resources=0-49")),
        (f"GET transactions 0-49, {n:,} txs", reqs(busy, "/transactions", "resources=0-49")),
        (f"GET transactions {n - 50}-{n - 1}, {n:,} txs", reqs(busy, "/transactions", last)),
        (f"GET transactions (no REST-Range: 1,000 ids), {n:,} txs", reqs(busy, "/transactions")),
        ("GET card, 1 tx", reqs(one)),
        (f"GET card, {n:,} txs ({n - 1:,} holds)", reqs(busy)),
        ("GET transaction, 1 tx", reqs(one, f"/transactions/{r.lindex(store.keys.transactions(one.id), 0)}")),
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
    say_busy_card_memory(store, n, (per_credit, per_debit, per_settled), settled.id, settled_ids)
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


def busy_card_memory(store: LedgerStore, n: int, batch: int, busy, credits, settled):
    """Marginal bytes per transaction on busy cards: n - 1 held Debits on `busy`, n - 1 Credits on `credits`,
    n - 1 Debits then settled in full on `settled` (each card already credited once). Returns the three
    figures (Credit, held Debit, settled Debit), the held Debits' ids and the settled Debits' ids."""
    r = store.redis
    mem0 = used_memory(r)
    debit_ids = bulk_transactions(store, busy.id, n - 1, batch, "Debit", "1", busy.token)
    per_debit = (used_memory(r) - mem0) / (n - 1)
    mem0 = used_memory(r)
    bulk_transactions(store, credits.id, n - 1, batch, "Credit", "1")
    per_credit = (used_memory(r) - mem0) / (n - 1)
    mem0 = used_memory(r)
    settled_ids = bulk_transactions(store, settled.id, n - 1, batch, "Debit", "1", settled.token)
    bulk_settle(store, settled.id, settled_ids, "1", batch)
    per_settled = (used_memory(r) - mem0) / (n - 1)
    assert r.llen(store.keys.transactions(busy.id)) == n
    return (per_credit, per_debit, per_settled), debit_ids, settled_ids


def say_busy_card_memory(store: LedgerStore, n: int, figures, settled_id: str, settled_ids: list[str]) -> None:
    per_credit, per_debit, per_settled = figures
    rows = [
        ["Credit", f"{per_credit:,.0f}"],
        ["Debit, held", f"{per_debit:,.0f}"],
        ["Debit, then settled in full", f"{per_settled:,.0f}"],
    ]
    say(f"\nRedis memory per transaction ({n - 1:,} on one card; journal entries and indexes included):")
    say(table(["transaction", "bytes per transaction (used_memory delta / count)"], rows))
    say("\nWhere a settled Debit's bytes go (MEMORY USAGE, per transaction):")
    say(table(["key", "bytes per transaction"], memory_breakdown(store, settled_id, settled_ids)))


def memory_breakdown(store: LedgerStore, card_id: str, tx_ids: list[str]) -> list[list[str]]:
    """MEMORY USAGE of each kind of key, per transaction: per-transaction keys sampled, card keys divided."""
    r, k = store.redis, store.keys
    sample = tx_ids[:: max(1, len(tx_ids) // 200)]

    def per_tx(key_of) -> float:
        sizes = [r.memory_usage(key_of(tx), samples=0) or 0 for tx in sample]
        return sum(sizes) / len(sizes)

    def shared(key: str) -> float:
        return (r.memory_usage(key, samples=0) or 0) / len(tx_ids)

    rows = [
        ("gc:{C}:tx:T (transaction hash)", per_tx(lambda tx: k.transaction(card_id, tx))),
        ("gc:{C}:tx:T:settlements (list)", per_tx(lambda tx: k.settlements(card_id, tx))),
        ("gc:{C}:tx:T:requests (hash)", per_tx(lambda tx: k.operation_requests(card_id, tx))),
        ("gc:{C}:journal (stream, 2 entries each)", shared(k.journal(card_id))),
        ("gc:{C}:txs (list)", shared(k.transactions(card_id))),
        ("gc:{C}:requests (hash)", shared(k.requests(card_id))),
        ("gc:{C}:holds (zset, empty once settled)", shared(k.holds(card_id))),
    ]
    total = sum(v for _, v in rows)
    return [[name, f"{v:,.0f}"] for name, v in rows] + [["total", f"{total:,.0f}"]]


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


def key_kind(key: str, prefix: str) -> str:
    """gc:{<card id>}:tx:<tx id>:settlements -> gc:{C}:tx:T:settlements; global indexes by their prefix."""
    if key.startswith(f"{prefix}:{{"):
        rest = key.split("}:", 1)[1]
        return f"{prefix}:{{C}}:" + re.sub(r"^tx:[^:]+", "tx:T", rest)
    for name, shown in (("code", "<hmac>"), ("owner", "<profileId>"), ("limits", "...")):
        if key.startswith(f"{prefix}:{name}:"):
            return f"{prefix}:{name}:{shown}"
    return key


def key_census(r, prefix: str) -> KeyCensus:
    r.execute_command("MEMORY PURGE")  # see run_life: it frees pages, not allocations; used_memory does not move
    memory = r.info("memory")
    keys = list(r.scan_iter(count=1000))
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.object("encoding", key)
    replies = pipe.execute()
    census = KeyCensus(memory["used_memory"], memory["mem_clients_normal"], len(keys), defaultdict(int),
                       defaultdict(int), defaultdict(set))  # fmt: skip
    for key, size, encoding in zip(keys, replies[::2], replies[1::2], strict=True):
        kind = key_kind(key, prefix)
        census.bytes[kind] += size or 0
        census.count[kind] += 1
        census.encodings[kind].add(encoding or "?")
    return census


def card_keys(r, store: LedgerStore, card_id: str, profile_id: str) -> list[str]:
    """Every key of one card: its own (hash-tagged) keys, its code index and its owner index."""
    own = sorted(r.scan_iter(match=f"{store.keys.prefix}:{{{card_id}}}:*", count=1000))
    digest = r.hget(store.keys.card(card_id), "codeDigest")
    return [*own, store.keys.code_index(digest), store.keys.owner_index(profile_id)]


def say_sample_cards(r, store: LedgerStore, samples: list[tuple[str, str]]) -> None:
    """MEMORY USAGE and OBJECT ENCODING of every key of the first sample card; the total of each sample card."""
    prefix = store.keys.prefix
    totals = []
    for n, (card_id, profile_id) in enumerate(samples):
        rows = []
        for key in card_keys(r, store, card_id, profile_id):
            size = r.memory_usage(key, samples=0) or 0
            rows.append([key_kind(key, prefix), r.object("encoding", key), f"{size:,}"])
        totals.append(sum(int(row[2].replace(",", "")) for row in rows))
        if n == 0:
            say(f"\nEvery key of sample card {card_id} (MEMORY USAGE key SAMPLES 0):")
            say(table(["key", "encoding", "bytes"], [*rows, ["total", "", f"{totals[0]:,}"]]))
    say(f"sample cards' totals (MEMORY USAGE of all their keys): {', '.join(f'{t:,}' for t in totals)} B")


def say_census_step(label: str, n: int, before: KeyCensus, after: KeyCensus) -> float:
    """Where one step's bytes went, per card; returns the used_memory delta per card."""
    delta = (after.used_memory - before.used_memory) / n
    rows = []
    kinds = set(after.bytes) | set(before.bytes)  # a kind may vanish in a step (holds, once settled)
    for kind in sorted(kinds, key=lambda k: -after.bytes.get(k, 0)):
        count = (after.count.get(kind, 0) - before.count.get(kind, 0)) / n
        grew = (after.bytes.get(kind, 0) - before.bytes.get(kind, 0)) / n
        if not count and not grew:
            continue
        encodings = after.encodings.get(kind) or {"(deleted)"}
        rows.append([kind, "/".join(sorted(encodings)), f"{count:+.2f}", f"{grew:+,.0f}"])
    accounted = (after.total - before.total) / n
    new_keys = (after.keys - before.keys) / n
    rest = delta - accounted
    per_key = f"{rest / new_keys:,.0f} B per key added" if new_keys > 0 else "no key added"
    rows.append(["sum of MEMORY USAGE", "", f"{new_keys:+.2f}", f"{accounted:+,.0f}"])
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
    n = args.life
    say(f"## A card's real life: Redis memory of {n:,} cards through the HTTP API")
    say(machine_note())
    with RedisServer() as server:
        r = server.client()
        info = r.info("server")
        config = {name: r.config_get(name)[name] for name in MEMORY_CONFIG}
        say(f"redis-server {info['redis_version']} ({r.info('memory')['mem_allocator']}), no persistence, config as "
            "shipped: " + ", ".join(f"{k} {v}" for k, v in config.items()))  # fmt: skip
        settings = dataclasses.replace(settings_for(server.url), log_level="WARNING")
        app = create_app(settings)
        store = app.extensions["giftcard_provider"]["store"]
        hub = Hub(app.test_client(), AUTH)
        prefix = store.keys.prefix

        # One card through its whole life first: the library loaded, connections made, lazy state built.
        _, warmup = life_requests(hub, 1, "warmup")
        for _, step in warmup:
            step(0)
        # used_memory counts the bytes allocated; MEMORY PURGE only hands jemalloc's dirty pages back to the OS
        # (RSS), so it cannot shrink used_memory. Each census purges anyway and reads used_memory after it. The
        # one thing a purge does move: the first one on a fresh server adds ~24 KB once (seen here; later purges
        # move it by a few bytes at most), which this first purge absorbs before any step is measured.
        reads = [used_memory(r), used_memory(r)]
        r.execute_command("MEMORY PURGE")
        reads.append(used_memory(r))
        say("used_memory, read twice, then after MEMORY PURGE: " + " / ".join(f"{x:,}" for x in reads) + " B")

        cards, steps = life_requests(hub, n, "life")
        census = key_census(r, prefix)
        deltas, started = {}, time.monotonic()
        for label, step in steps:
            for i in range(n):
                step(i)
            after = key_census(r, prefix)
            deltas[label] = say_census_step(label, n, census, after)
            say_sample_cards(r, store, [(c["id"], f"shopper-life-{i}@example.com") for i, c in
                                        enumerate(cards[:LIFE_SAMPLES])])  # fmt: skip
            census = after
        say(f"\n({n:,} cards x 4 requests in {time.monotonic() - started:.0f} s)")

        rows, total, lines = [], 0.0, []
        for label, target, covers in LIFE_TARGETS:
            got = sum(deltas[c] for c in covers)
            total += got
            verdict = "met" if got <= target else "MISSED"
            rows.append([label, f"{got:,.0f}", f"{total:,.0f}", f"{target:,}", verdict])
            lines.append(f"card life, {label}: {got:,.0f} B per card (target {target:,}: {verdict})")
        goal = sum(t for _, t, _ in LIFE_TARGETS)
        rows.append(["total", f"{total:,.0f}", "", f"{goal:,}", "met" if total <= goal else "MISSED"])
        say(f"\n### A card's real life, bytes per card (used_memory deltas over {n:,} cards, all keys included)")
        say(table(["step", "bytes per card", "cumulative", "target", ""], rows))
        lines.append(f"card life, total: {total:,.0f} B per card (target {goal:,})")

        n_txs = args.txs
        say(f"\n### A busy card: marginal bytes per transaction ({n_txs:,} on one card)")
        busy, settled = seed_cards(store, 2, balance="1000000")
        credits = seed_cards(store, 1, balance="1")[0]
        figures, _, settled_ids = busy_card_memory(store, n_txs, args.batch, busy, credits, settled)
        say_busy_card_memory(store, n_txs, figures, settled.id, settled_ids)
        lines.append(
            f"busy card, per transaction: Credit {figures[0]:,.0f} B, held Debit {figures[1]:,.0f} B, "
            f"settled Debit {figures[2]:,.0f} B ({n_txs:,} on one card)"
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
