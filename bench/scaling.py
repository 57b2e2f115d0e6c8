"""Scaling: latency and throughput with few vs many cards, and with 1 vs many transactions on one card,
plus Redis memory per card and per transaction.

    python -m bench.scaling [--cards 100000] [--txs 10000] [--workers 4] [--seconds 5]

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
"""

from __future__ import annotations

import argparse
import random
import time
from decimal import Decimal

from giftcard_provider.money import Amount
from giftcard_provider.store import LedgerStore

from .common import (
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
    mem0 = used_memory(r)
    debit_ids = bulk_transactions(store, busy.id, n - 1, args.batch, "Debit", "1", busy.token)
    per_debit = (used_memory(r) - mem0) / (n - 1)
    mem0 = used_memory(r)
    bulk_transactions(store, credits.id, n - 1, args.batch, "Credit", "1")
    per_credit = (used_memory(r) - mem0) / (n - 1)
    mem0 = used_memory(r)
    settled_ids = bulk_transactions(store, settled.id, n - 1, args.batch, "Debit", "1", settled.token)
    bulk_settle(store, settled.id, settled_ids, "1", args.batch)
    per_settled = (used_memory(r) - mem0) / (n - 1)
    assert r.llen(store.keys.transactions(busy.id)) == n

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
    rows = [
        ["Credit", f"{per_credit:,.0f}"],
        ["Debit, held", f"{per_debit:,.0f}"],
        ["Debit, then settled in full", f"{per_settled:,.0f}"],
    ]
    say(f"\nRedis memory per transaction ({n - 1:,} on one card; journal entries and indexes included):")
    say(table(["transaction", "bytes per transaction (used_memory delta / count)"], rows))
    say("\nWhere a settled Debit's bytes go (MEMORY USAGE, per transaction):")
    say(table(["key", "bytes per transaction"], memory_breakdown(store, settled.id, settled_ids)))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    summary = run(parser.parse_args())
    say("\n## Summary")
    say("\n".join(summary))


if __name__ == "__main__":
    main()
