"""The finance reports (`flask cards report ...`) on a store of many cards: seconds and peak memory.

    python -m bench.reports [--cards 100000] [--batch 1000]

On a private redis-server, --cards cards are bulk-created through LedgerStore (the functions the
API calls, pipelined --batch at a time as bench.scaling does), in three currencies (USD, JPY,
KWD), each with a Credit; every 10th also a held Debit. A tenth of the cards (made first) expire
soon after the load (breakage), a third within 30 days (the expiring report), the rest after the default
validity. Then each report runs as the operator runs it, `flask --app wsgi cards report ... --format
csv` in its own process (stdout thrown away, the progress bar on stderr kept off the figures), and
the script prints its wall time and the process's peak RSS (ru_maxrss from wait4), next to
`flask cards books` as the baseline cost of starting the app. The liability as of a time halfway
through the load reads the events written since; as of before the first card, every event.

The figures are checked, not only timed: the liability as of now equals the books, and the
liability as of before the first card is empty.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import time
import uuid
from decimal import Decimal

from giftcard_provider.money import Amount
from schemas.common import iso_ms

from .common import ROOT, RedisServer, app_env, card_args, ledger_for, machine_note, say, table
from .scaling import _flush, _Queued

DAY_MS = 86_400_000
CURRENCIES = (("USD", "25.00"), ("JPY", "2500"), ("KWD", "7.125"))


def load(store, count: int, batch: int) -> tuple[int, int, int]:
    """Create and credit `count` cards. Returns (ms before the first card, ms halfway, ms the
    breakage cards expire at). The breakage cards (a tenth) come first, so that they expire soon
    after the load without any being created too late for their expiry."""
    queued = _Queued(store)
    start = store.now_ms()
    breakage = count // 10
    expire_soon = start + 20_000 + 4 * breakage  # created at 250 a second or faster: still in the future
    halfway = None
    debit = {c: Amount.from_decimal(Decimal(v) / 5) for c, v in CURRENCIES}
    started = time.monotonic()
    for i in range(count):
        currency, value = CURRENCIES[i % 3]
        if i < breakage:
            expiring = expire_soon
        elif i % 3 == 1:
            expiring = start + (1 + i % 29) * DAY_MS
        else:
            expiring = None
        card, _ = queued.create_card(**card_args(profile_id=f"r-{i}@example.com", currency=currency,
                                                 expiring_ms=expiring))  # fmt: skip
        amount = Amount.from_decimal(Decimal(value))
        queued.authorize(card.id, operation="Credit", amount=amount, request_id=uuid.uuid4().hex, token="")
        if i % 10 == 5:
            queued.authorize(card.id, operation="Debit", amount=debit[currency], request_id=uuid.uuid4().hex,
                             token=card.token)  # fmt: skip
        if (i + 1) % batch == 0 or i + 1 == breakage:
            _flush(queued)
        if i + 1 == count // 2:
            _flush(queued)
            halfway = store.now_ms() + 1
            while store.now_ms() < halfway:
                time.sleep(0.001)
        if (i + 1) % 20_000 == 0:
            say(f"  {i + 1:,} cards created and credited ({(i + 1) / (time.monotonic() - started):,.0f}/s)")
    _flush(queued)
    return start, halfway or store.now_ms(), expire_soon


# Runs the command and reports its peak RSS. A child started by this (large) process would inherit
# its high-water mark: Linux keeps the larger of the two across fork and exec (ru_maxrss). Started
# from this small launcher instead, the command's ru_maxrss is its own.
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(redis_url: str, *args: str) -> tuple[float, int, str]:
    """`flask --app wsgi cards ARGS` in its own process: (seconds, peak RSS in KiB, stdout)."""
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "cards", *args]
    env = {**app_env(redis_url), "LOG_LEVEL": "WARNING"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}")
    return seconds, int(done.stderr.split()[-1]), done.stdout


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=100_000, help="cards in the store (default 100,000)")
    parser.add_argument("--batch", type=int, default=1000, help="pipeline size of the bulk load (default 1000)")
    args = parser.parse_args()
    say(f"## Finance reports on {args.cards:,} cards")
    say(machine_note())
    with RedisServer() as server:
        store = ledger_for(server.url)
        say(f"bulk-creating {args.cards:,} cards with a Credit each (pipelined {args.batch} at a time) ...")
        began = time.monotonic()
        start, halfway, expire_soon = load(store, args.cards, args.batch)
        events = sum(int(store.redis.xlen(store.keys.events(b))) for b in store.log_bounds())
        memory = int(store.redis.info("memory")["used_memory"])
        say(
            f"  done in {time.monotonic() - began:.0f} s: {events:,} events, Redis used_memory {memory / 2**20:.0f} MiB"
        )
        while store.now_ms() < expire_soon:  # the breakage cards expire
            time.sleep(0.2)
        books = store.books()

        runs = [
            ("books (baseline: app start + one round trip)", ["books", "--json"]),
            ("report liability (now, from the books)", ["report", "liability", "--format", "csv"]),
            ("report liability --as-of halfway",
             ["report", "liability", "--as-of", iso_ms(halfway), "--format", "csv"]),
            ("report liability --as-of before the first card",
             ["report", "liability", "--as-of", iso_ms(start - 1), "--format", "csv"]),
            ("report liability --as-of now (every bucket, no event to undo)",
             ["report", "liability", "--as-of", iso_ms(store.now_ms()), "--format", "csv"]),
            ("report breakage", ["report", "breakage", "--format", "csv"]),
            ("report expiring --days 30", ["report", "expiring", "--days", "30", "--format", "csv"]),
            ("report activity (every event)", ["report", "activity", "--since", iso_ms(start - 1), "--format", "csv"]),
        ]  # fmt: skip
        results = []
        outputs = {}
        for label, cli_args in runs:
            seconds, rss_kib, out = run_cli(server.url, *cli_args)
            outputs[label] = out
            lines = len(rows_of(out)) if "--format" in cli_args else 1
            results.append([label, f"{seconds:.2f}", f"{rss_kib / 1024:.0f}", f"{lines:,}"])
            say(f"  {label}: {seconds:.2f} s, peak RSS {rss_kib / 1024:.0f} MiB")

        now_rows = {r["currency"]: int(r["liabilityMinor"]) for r in rows_of(outputs[runs[4][0]])}
        assert now_rows == {c: b.liability for c, b in books.items()}, (now_rows, books)
        assert rows_of(outputs[runs[3][0]]) == []
        activity = sum(int(r["count"]) for r in rows_of(outputs[runs[7][0]]))
        assert activity == events, (activity, events)
        breakage = {r["currency"]: r["balance"] for r in rows_of(outputs[runs[5][0]])}
        halfway_rows = {r["currency"]: r["liability"] for r in rows_of(outputs[runs[2][0]])}

    say("")
    say(table(["report", "seconds", "peak RSS MiB", "CSV rows"], results))
    say(f"\nliability as of now = the books: {', '.join(f'{c} {b.liability}' for c, b in books.items())} (minor units)")
    say(f"liability halfway: {halfway_rows}; breakage: {breakage}; activity counted {activity:,} events = the log")


if __name__ == "__main__":
    main()
