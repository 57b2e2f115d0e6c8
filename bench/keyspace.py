"""Walking the keyspace: what the sweeper, verify and export cost beside many keys that are not theirs.

    python -m bench.keyspace [--cards 1000] [--other-keys 9000,1000000,5000000] [--due 0.1]
    python -m bench.keyspace --quick        # 9k and 1M other keys only

For each size in --other-keys, on a fresh private redis-server (a free loopback
port, no persistence, DEBUG allowed from loopback only):

1. --cards cards holding money are seeded through LedgerStore, as the API writes
   them (create_card, a Credit, a held Debit on every card); --due of the cards
   get a second held Debit from a store whose settings give holds a short
   lifetime, so those holds are due by the time the sweeper runs. Every card
   still holds money after the sweep (its first Debit's hold is long-lived).
2. The keyspace is filled with N other keys by `DEBUG POPULATE N gc-other` (they
   stand for other cards' keys and unrelated data); the script then waits until
   Redis has finished rehashing its main dict, so no measurement pays for it.
3. Each operator command runs through the Flask CLI runner exactly as
   `flask --app wsgi cards ...` runs it: `expire-holds` (the sweeper's pass,
   LedgerStore.expire_all_holds: one pipeline counts the due holds of all 256
   buckets, then gc_sweep_bucket releases them in the buckets that have any),
   `expire-holds` again, 20 times (nothing due: the pure pass), `verify`
   (LedgerStore.verify: every card of every bucket's card lists replayed from its
   bucket's event log, the code and owner indexes, the books), `export` of every
   event to /dev/null (LedgerStore.all_events: every bucket's event stream, merged).

Each is measured as Redis CPU seconds (INFO cpu used_cpu_sys + used_cpu_user
deltas of the private redis-server: what the operation costs Redis; far steadier
than wall time while other processes use the machine's cores, though not immune:
see "How it measures" in bench/README.md), wall seconds, this process's CPU
seconds (the CLI: Python, redis-py), the SCAN calls and the time Redis spent
inside them (INFO commandstats calls and usec: Redis's clock around each command,
so it can exceed the CPU figure when the process waits for a core), the commands
Redis executed, those run inside functions included (INFO stats, minus the
measuring INFO call), and the cores the rest of the machine kept busy meanwhile
(/proc/stat: other people's load). DBSIZE and used_memory are printed per size.

Targets (the "Ledger v2" issue): a sweeper pass with the same cards holding money
costs within 2x beside the biggest keyspace as beside the smallest; verify and
export cost grows with the cards and entries they read, not with the keyspace
(they read the same cards and entries at every size here, so they too are held
to 2x of the smallest size).

Only the store's public API (LedgerStore(client, settings), create_card,
authorize, card_ids) and the operator CLI are used. On the v2 layout nothing
here should SCAN: the "SCAN calls" column says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time
from decimal import Decimal

from giftcard_provider import create_app
from giftcard_provider.money import Amount
from giftcard_provider.store import LedgerStore

from .common import (
    TICKS,
    RedisServer,
    _machine_busy_ticks,
    card_args,
    credit,
    ledger_for,
    machine_note,
    say,
    settings_for,
    table,
    used_memory,
)

DEFAULT_SIZES = "9000,1000000,5000000"
QUICK_SIZES = "9000,1000000"
DUE_LIFETIME = 0.5  # seconds: the hold lifetime of the Debits that must be due when the sweeper runs
TARGET_RATIO = 2.0
IDLE_PASSES = 20  # a pass with nothing due costs ~1 ms of Redis CPU: timed 20 times, the mean reported
OTHER_PREFIX = "gc-other"  # DEBUG POPULATE's key prefix: matches none of the ledger's key patterns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cards", type=int, default=1000, help="cards holding money (default 1,000)")
    parser.add_argument(
        "--other-keys",
        default=DEFAULT_SIZES,
        help=f"comma-separated counts of other keys, one fresh redis-server each (default {DEFAULT_SIZES})",
    )
    parser.add_argument("--quick", action="store_true", help=f"--other-keys {QUICK_SIZES}")
    parser.add_argument(
        "--due", type=float, default=0.1, help="share of the cards with a hold due when the sweeper runs (default 0.1)"
    )


# -- one size -----------------------------------------------------------------------


def seed(store: LedgerStore, cards: int, due: int) -> None:
    """Cards holding money, made by the store as the API makes them; the first `due` get a hold that expires
    within DUE_LIFETIME seconds (a store with that hold lifetime takes the Debit), on top of a long one."""
    short = LedgerStore(store.redis, dataclasses.replace(store.settings, hold_lifetime_seconds=DUE_LIFETIME))
    ten = Amount.from_decimal(Decimal("10"))
    for i in range(cards):
        card, _code = store.create_card(**card_args(profile_id=f"keyspace-{i}@example.com"))
        credit(store, card.id, "100", f"seed-credit-{i}")
        store.authorize(card.id, operation="Debit", amount=ten, request_id="seed-hold", token=card.token)
        if i < due:
            short.authorize(card.id, operation="Debit", amount=ten, request_id="seed-due-hold", token=card.token)


def populate(client, count: int) -> float:
    """DEBUG POPULATE `count` other keys; then wait until the main dict is not rehashing. Returns seconds."""
    started = time.monotonic()
    if count:
        client.execute_command("DEBUG", "POPULATE", count, OTHER_PREFIX)
    deadline = time.monotonic() + 120
    while "rehashing" in client.execute_command("DEBUG", "HTSTATS", 0) and time.monotonic() < deadline:
        time.sleep(0.2)  # serverCron rehashes ~1 ms per tick while idle; a SCAN meanwhile walks both tables
    return time.monotonic() - started


def _counters(client) -> tuple[float, int, int, int]:
    """(Redis CPU seconds, SCAN calls, microseconds inside SCAN, commands processed) of the server so far."""
    info = client.info("all")
    cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    scan = info.get("cmdstat_scan", {})
    return cpu, int(scan.get("calls", 0)), int(scan.get("usec", 0)), int(info["total_commands_processed"])


@dataclasses.dataclass
class Measured:
    label: str
    result: str
    redis_cpu: float
    wall: float
    own_cpu: float
    scans: int
    in_scan: float  # seconds inside SCAN by Redis's clock (commandstats usec): no network I/O, but not CPU time
    commands: int
    other_cores: float


def measure(server: RedisServer, client, label: str, run, repeat: int = 1) -> Measured:
    """Run `run` `repeat` times; every figure is per run (a pass too cheap to time once is repeated)."""
    cpu0, scans0, scan_us0, commands0 = _counters(client)
    busy0, redis0, own0 = _machine_busy_ticks(), server.cpu_ticks(), time.process_time()
    started = time.monotonic()
    for _ in range(repeat):
        result = run()
    wall = time.monotonic() - started
    own = time.process_time() - own0
    busy1, redis1 = _machine_busy_ticks(), server.cpu_ticks()
    cpu1, scans1, scan_us1, commands1 = _counters(client)
    ours = (redis1 - redis0) / TICKS + own
    return Measured(
        label=label,
        result=result,
        redis_cpu=(cpu1 - cpu0) / repeat,
        wall=wall / repeat,
        own_cpu=own / repeat,
        scans=round((scans1 - scans0) / repeat),
        in_scan=(scan_us1 - scan_us0) / 1e6 / repeat,
        commands=round((commands1 - commands0 - 1) / repeat),  # the first INFO counts itself once it has run
        other_cores=max(0.0, ((busy1 - busy0) / TICKS - ours) / wall) if wall else 0.0,
    )


def cli(app, *args: str):
    result = app.test_cli_runner().invoke(args=["cards", *args])
    if result.exit_code != 0:
        raise RuntimeError(f"flask cards {' '.join(args)} exited {result.exit_code}: {result.output[-2000:]}")
    return result


def run_size(args, other_keys: int) -> dict:
    due = round(args.cards * args.due)
    with RedisServer("--enable-debug-command", "local") as server:
        client = server.client()
        store = ledger_for(server.url)
        started = time.monotonic()
        seed(store, args.cards, due)
        seeded = time.monotonic()
        say(f"  seeded {args.cards} cards ({due} with a hold due) in {seeded - started:.1f} s")
        fill = populate(client, other_keys)
        dbsize, memory = client.dbsize(), used_memory(client)
        say(f"  {other_keys:,} other keys by DEBUG POPULATE in {fill:.1f} s")
        time.sleep(max(0.0, seeded + DUE_LIFETIME + 0.2 - time.monotonic()))  # the short holds are due now
        idle = measure(server, client, "idle, 1 s", lambda: time.sleep(1) or "")

        # The app as `flask --app wsgi cards ...` builds it, with production settings (socket timeout raised
        # like the seeding store's: a timeout would end the run, not change what Redis does).
        app = create_app(dataclasses.replace(settings_for(server.url), redis_socket_timeout=30))
        logging.getLogger("giftcard_provider").setLevel(logging.WARNING)
        card_id = next(iter(app.extensions["giftcard_provider"]["store"].card_ids()))
        cli(app, "show", card_id, "--json")  # warm: connection open, library checked

        def sweep() -> str:
            done = json.loads(cli(app, "expire-holds", "--json").stdout)
            return f"released {done['holdsReleased']} in {done['bucketsWithDueHolds']} buckets"

        def verify() -> str:
            done = json.loads(cli(app, "verify", "--json").stdout)
            return f"checked {done['checked']}, {'ok' if done['ok'] else 'PROBLEMS'}"

        def export() -> str:
            out = cli(app, "export", "--output", os.devnull).output
            found = re.search(r"exported (\d+) journal entries from (\d+) card", out)
            return f"{found[1]} events from {found[2]} cards" if found else out.strip()[-80:]

        rows = [
            measure(server, client, "sweeper pass (expire-holds)", sweep),
            measure(server, client, f"sweeper pass, nothing due (mean of {IDLE_PASSES})", sweep, IDLE_PASSES),
            measure(server, client, "verify (all cards)", verify),
            measure(server, client, "export (all events)", export),
        ]
        return {"other_keys": other_keys, "dbsize": dbsize, "memory": memory, "idle": idle, "rows": rows}


# -- reporting ----------------------------------------------------------------------


def size_table(size: dict) -> str:
    headers = ["operation", "result", "Redis CPU s", "inside SCAN s", "wall s", "CLI CPU s", "SCAN calls"]
    headers += ["commands (incl. in functions)", "other load (cores)"]
    rows = [
        [m.label, m.result, f"{m.redis_cpu:.4f}", f"{m.in_scan:.3f}", f"{m.wall:.3f}", f"{m.own_cpu:.3f}",
         f"{m.scans:,}", f"{m.commands:,}", f"{m.other_cores:.2f}"]
        for m in [*size["rows"], size["idle"]]
    ]  # fmt: skip
    return table(headers, rows)


TARGETS = {
    "sweeper pass (expire-holds)": "within 2x",
    f"sweeper pass, nothing due (mean of {IDLE_PASSES})": "within 2x",
    "verify (all cards)": "grows with cards read: within 2x",
    "export (all events)": "grows with entries read: within 2x",
}


def ratio_table(sizes: list[dict]) -> tuple[str, list[str]]:
    first = sizes[0]
    headers = ["operation", *(f"Redis CPU s, {s['other_keys']:,} other" for s in sizes)]
    headers += [f"x at {s['other_keys']:,}" for s in sizes[1:]] + ["target", "verdict"]
    rows, verdicts = [], []
    for i, m0 in enumerate(first["rows"]):
        cpus = [s["rows"][i].redis_cpu for s in sizes]
        ratios = [c / cpus[0] if cpus[0] else float("inf") for c in cpus[1:]]
        met = all(r <= TARGET_RATIO for r in ratios)
        verdict = "met" if met else "MISSED"
        rows.append([m0.label, *(f"{c:.4f}" for c in cpus), *(f"{r:.1f}x" for r in ratios),
                     TARGETS.get(m0.label, ""), verdict])  # fmt: skip
        verdicts.append(f"{m0.label}: " + " / ".join(f"{c:.4f}" for c in cpus) + f" s Redis CPU ({verdict})")
    wall_headers = ["operation", *(f"wall s, {s['other_keys']:,} other" for s in sizes)]
    wall_rows = [[m0.label, *(f"{s['rows'][i].wall:.3f}" for s in sizes)] for i, m0 in enumerate(first["rows"])]
    return table(headers, rows) + "\n\n" + table(wall_headers, wall_rows), verdicts


def run(args) -> list[str]:
    sizes_arg = QUICK_SIZES if args.quick else args.other_keys
    counts = [int(v.replace("_", "")) for v in sizes_arg.split(",") if v.strip()]
    say("## Walking the keyspace: sweeper, verify and export beside N other keys (Redis CPU from INFO cpu)")
    say(machine_note())
    say(f"{args.cards:,} cards holding money, {args.due:.0%} of them with a hold due; other keys: {counts}")
    sizes = []
    for count in counts:
        say(f"\n### {count:,} other keys")
        size = run_size(args, count)
        say(f"DBSIZE {size['dbsize']:,}, used_memory {size['memory']:,} B ({size['memory'] / 2**20:,.1f} MiB)")
        say(size_table(size))
        sizes.append(size)
    say("\n### Redis CPU against the smallest keyspace (the targets)")
    ratios, verdicts = ratio_table(sizes)
    say(ratios)
    say(f"\nload average after the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return ["keyspace: " + "; ".join(verdicts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    for line in run(parser.parse_args()):
        say(line)


if __name__ == "__main__":
    main()
