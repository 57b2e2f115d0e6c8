"""Memory of a typical card's life in the planned v2 layout (docs/ledger-v2.md), before building it.

The service does not use this. It writes exactly the keys and fields that the v2 plan gives a card,
through a small Redis Functions prototype (lua/layout_v2_prototype.lua beside this file). That
prototype moves money with no checks, because only the bytes matter here. Steps: a new card, its
first Credit, a Debit, that Debit settled in full. For each step it prints used_memory deltas per
card next to the issue's targets (600 / 450 / 750 B), and where the bytes go.

The bucketed structures (256 event streams, 4,096 code-index shards, card lists, books) cost more
per card in a small store than in a large one. So a warm-up of W cards, with their whole lives,
fills them first, and the figures are for a store of that size:

    python -m bench.layout_v2 [--warm 100000] [--cards 2000] [--lean]
    python -m bench.layout_v2 --sweep 9000,1000000,5000000   # a sweeper pass beside that many other keys

The sweep measurement: 1,000 cards holding money, 100 of their holds due, then N other keys
(DEBUG POPULATE), then one pass of the planned sweeper: one pipeline reading every bucket's due
holds, then a call per bucket that has some. It reports Redis CPU (INFO cpu deltas).

For comparison, `python -m bench.scaling --life 2000` measures today's layout through the API.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import time
from pathlib import Path

from bench.common import RedisServer, say, used_memory

PROTOTYPE = (Path(__file__).parent / "lua" / "layout_v2_prototype.lua").read_text()
TARGETS = {"new card": 600, "+ first Credit": 450, "+ Debit settled once": 750}
BATCH = 500


def bucket_of(card_id: str) -> str:
    return card_id[:2]


# Sub-shards per bucket of the card list and the code index, and shards of the owner index: enough
# that each hash stays listpack (at most zset/hash-max-listpack-entries, 128 upstream) in a store of
# the size that matters, few enough that their own key overhead stays small. Set by --shards.
SHARDS = {"cards": 64, "codes": 64, "owners": 4096}
LEAN = False  # --lean: the card hash without the fields docs/ledger-v2.md proposes to cut


def shard(hex_digits: str, count: int) -> str:
    return str(int(hex_digits, 16) % count)


class Card:
    """One card's ids, made the way the plan makes them: the id starts with its code digest's bucket."""

    def __init__(self, i: int):
        self.digest = hashlib.sha256(secrets.token_bytes(16)).hexdigest()[:32]
        self.id = self.digest[:2] + secrets.token_hex(15)
        self.owner = f"shopper-{i}@example.com"
        self.token = secrets.token_urlsafe(24)
        self.credit, self.debit = secrets.token_hex(8), secrets.token_hex(8)
        self.requests = (secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16))

    def keys(self) -> dict[str, str]:
        b = f"gc:{{b{bucket_of(self.id)}}}"
        owner_hash = hashlib.sha256(self.owner.encode()).hexdigest()
        return {
            "card": f"{b}:card:{self.id}",
            "cards": f"{b}:cards:{shard(self.id[2:6], SHARDS['cards'])}",
            "codes": f"{b}:codes:{shard(self.digest[2:6], SHARDS['codes'])}",
            "holds": f"{b}:holds",
            "events": f"{b}:events",
            "books": f"{b}:books:USD",
            "owners": f"gc:{{o{owner_hash[:2]}}}:owners:{shard(owner_hash[2:6], SHARDS['owners'] // 256 or 1)}",
        }


def create(pipe, card: Card, now: int) -> None:
    k = card.keys()
    pipe.fcall(
        "proto_create",
        5,
        k["card"],
        k["cards"],
        k["codes"],
        k["events"],
        k["books"],
        card.id,
        now,
        now + 5 * 365 * 86_400_000,
        "USD",
        "2",
        card.owner,
        "gift",
        "Gift card",
        card.digest[-4:].upper(),
        card.digest,
        card.token,
        "100000000",
        "1" if LEAN else "0",
    )
    pipe.hset(k["owners"], f"{card.owner}|{card.id}", "")  # its own slot: the second round trip


def credit(pipe, card: Card, now: int) -> None:
    k = card.keys()
    pipe.fcall("proto_credit", 3, k["card"], k["events"], k["books"], card.credit, 5000, card.requests[0], now)


def debit(pipe, card: Card, now: int) -> None:
    k = card.keys()
    args = (card.debit, 2000, card.requests[1], now, now + 7 * 86_400_000)
    pipe.fcall("proto_debit", 4, k["card"], k["holds"], k["events"], k["books"], *args)


def settle(pipe, card: Card, now: int) -> None:
    k = card.keys()
    args = (card.debit, 2000, card.requests[2], now)
    pipe.fcall("proto_settle", 4, k["card"], k["holds"], k["events"], k["books"], *args)


STEPS = [("new card", create), ("+ first Credit", credit), ("+ Debit", debit), ("+ settled", settle)]


def run_step(r, cards: list[Card], step) -> None:
    now = int(time.time() * 1000)
    for start in range(0, len(cards), BATCH):
        pipe = r.pipeline(transaction=False)
        for card in cards[start : start + BATCH]:
            step(pipe, card, now)
        pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=100_000, help="cards with a whole life written first")
    parser.add_argument("--cards", type=int, default=2_000, help="cards measured, step by step")
    parser.add_argument(
        "--shards",
        default="64,64,4096",
        help="card-list and code-index sub-shards per bucket, and owner-index shards (default 64,64,4096)",
    )
    parser.add_argument("--sweep", help="instead: a sweeper pass beside these numbers of other keys, e.g. 9000,5000000")
    parser.add_argument("--lean", action="store_true", help="the card hash without the fields the plan proposes to cut")
    args = parser.parse_args()
    SHARDS.update(zip(("cards", "codes", "owners"), map(int, args.shards.split(",")), strict=True))
    global LEAN
    LEAN = args.lean
    if args.sweep:
        measure_sweeps([int(n) for n in args.sweep.split(",")])
        return
    with RedisServer() as server:
        r = server.client()
        r.function_load(PROTOTYPE, replace=True)
        config = {k: r.config_get(k)[k] for k in ("hash-max-listpack-entries", "hash-max-listpack-value")}
        say(f"redis-server {r.info('server')['redis_version']}, {config}, shards {SHARDS}, lean card hash: {LEAN}")
        warm = [Card(i) for i in range(args.warm)]
        for _, step in STEPS:
            run_step(r, warm, step)
        say(f"warm-up: {args.warm:,} cards with a whole life; used_memory {used_memory(r):,} B, {r.dbsize():,} keys")
        measured = [Card(args.warm + i) for i in range(args.cards)]
        per_step = {}
        for label, step in STEPS:
            before = used_memory(r)
            run_step(r, measured, step)
            per_step[label] = (used_memory(r) - before) / args.cards
        debit_settled = per_step["+ Debit"] + per_step["+ settled"]
        rows = [
            ("new card", per_step["new card"]),
            ("+ first Credit", per_step["+ first Credit"]),
            ("+ Debit settled once", debit_settled),
        ]
        say(f"\n| step ({args.cards:,} cards beside {args.warm:,}) | bytes per card | target | |")
        say("|---|---|---|---|")
        for label, value in rows:
            verdict = "met" if value <= TARGETS[label] else "MISSED"
            say(f"| {label} | {value:,.0f} | {TARGETS[label]} | {verdict} |")
        total = sum(v for _, v in rows)
        say(f"| whole life | {total:,.0f} | 1,800 | {'met' if total <= 1800 else 'MISSED'} |")
        held, settled = per_step["+ Debit"], per_step["+ settled"]
        say(f"(the Debit alone, still held: {held:,.0f} B; its settlement: {settled:,.0f} B)")

        sample = measured[0]
        say("\nwhere one card's bytes are, after its life (MEMORY USAGE, SAMPLES 0):")
        k = sample.keys()
        card_bytes = r.memory_usage(k["card"], samples=0)
        say(f"  card hash: {card_bytes} B, {r.hlen(k['card'])} fields, {r.object('encoding', k['card'])}")
        for name in ("cards", "codes", "holds", "events", "books", "owners"):
            key = k[name]
            if r.exists(key):
                size = r.memory_usage(key, samples=0)
                members = r.execute_command("XLEN" if name == "events" else _count_command(r, key), key)
                encoding = r.object("encoding", key)
                say(f"  {name}: {size:,} B for {members} entries ({encoding}), shared by the bucket or shard")


def redis_cpu(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def sweep_pass(r, now: int) -> tuple[int, int]:
    """The planned sweeper: every bucket's due holds read in one pipeline, then one call per bucket with
    some. Returns (buckets swept, holds released)."""
    buckets = [f"{b:02x}" for b in range(256)]
    pipe = r.pipeline(transaction=False)
    for b in buckets:
        pipe.zrangebyscore(f"gc:{{b{b}}}:holds", "-inf", now, start=0, num=1)
    due = [b for b, found in zip(buckets, pipe.execute(), strict=True) if found]
    pipe = r.pipeline(transaction=False)
    for b in due:
        prefix = f"gc:{{b{b}}}"
        pipe.fcall("proto_sweep_bucket", 3, f"{prefix}:holds", f"{prefix}:events", f"{prefix}:books:USD", now, 1000)
    return len(due), sum(pipe.execute())


def measure_sweeps(sizes: list[int]) -> None:
    say("\n| other keys | DBSIZE | buckets swept | holds released | Redis CPU s | x smallest |")
    say("|---|---|---|---|---|---|")
    first = None
    for size in sizes:
        with RedisServer("--enable-debug-command", "local") as server:
            r = server.client()
            r.function_load(PROTOTYPE, replace=True)
            cards = [Card(i) for i in range(1000)]
            now = int(time.time() * 1000)
            for _, step in STEPS[:3]:  # created, loaded, a Debit held
                run_step(r, cards, step)
            pipe = r.pipeline(transaction=False)  # 100 holds due, as if their lifetime had passed
            for card in cards[:100]:
                pipe.zadd(card.keys()["holds"], {f"{card.id}:{card.debit}": now - 1000})
            pipe.execute()
            if size:
                r.execute_command("DEBUG", "POPULATE", size, "gc-other")
                while "rehashing" in r.execute_command("DEBUG", "HTSTATS", 0):
                    time.sleep(0.1)
            before = redis_cpu(r)
            swept, released = sweep_pass(r, now)
            cost = redis_cpu(r) - before
            first = first or cost
            say(f"| {size:,} | {r.dbsize():,} | {swept} | {released} | {cost:.3f} | {cost / first:.1f}x |")


def _count_command(r, key: str) -> str:
    return {"hash": "HLEN", "zset": "ZCARD", "set": "SCARD"}[r.type(key)]


if __name__ == "__main__":
    main()
