"""Bulk issuance, loads, imports and export at scale (docs/bulk.md).

    python -m bench.issuance                       # 100,000 cards (about 2-4 minutes on 2 cores)
    python -m bench.issuance --cards 1000000       # the full run
    python -m bench.issuance --cards 20000 --loads 5000 --imports 5000 --no-verify   # a quick look

On a fresh private redis-server (a free loopback port, no persistence), every step runs the real
operator command in its own process, `python -m flask --app wsgi cards ...` with the production
environment (bench/common.app_env), so each figure includes what an operator's run includes
(interpreter start, the layout check, the progress bars on stderr) and each command's peak RSS is
its own (os.wait4's ru_maxrss):

1. `issue-batch` of --cards/10 cards ("warm"), each loaded with 25.00, then `export` of every event
   to /dev/null;
2. `issue-batch` of the other 9/10 ("main"), then `export` again: the two exports' peak RSS, one with
   ten times the events of the other, show whether export runs in constant memory;
3. `load-csv` of --loads rows, one Credit each onto the issued cards (a CSV written from the batch's);
4. `import-csv` of --imports cards with 16-digit codes, each its own owner, loaded with 10.00;
5. `verify` of the whole ledger (unless --no-verify).

Printed per step: rows, wall seconds, rows per second (wall, process start included), the command's
own figure where it prints one (issue-batch's cards/s without the interpreter start and without
writing the CSV is not separated: the command's "seconds" covers creation and the CSV), the Redis
CPU seconds it cost (INFO cpu deltas), and peak RSS. Redis memory per card closes the table.
The machine's 2 cores are shared with the redis-server and anything else running: the "busy"
column is the cores other processes kept busy meanwhile (bench/common.busy_cores' method).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, RedisServer, app_env, machine_note, say, table, used_memory
from giftcard_provider.keys import Keys

TICKS = os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def redis_cpu(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class Runner:
    """Popen + wait4 for each command: communicate() reaps the child, so the rusage is read by wait4 first."""

    def __init__(self, env: dict, client):
        self.env, self.client = env, client
        self.results: list[dict] = []

    def __call__(self, label: str, rows: int, *args: str) -> dict:
        cpu_before = redis_cpu(self.client)
        busy_before = _machine_ticks()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "cards", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
            )
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if process.returncode != 0:
            raise SystemExit(f"{label}: exit {process.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}")
        busy_after = _machine_ticks()
        own = (usage.ru_utime + usage.ru_stime) * TICKS  # this command's CPU, in ticks
        others = max(0.0, (busy_after[0] - busy_before[0]) - own - (redis_cpu(self.client) - cpu_before) * TICKS)
        result = {
            "label": label,
            "rows": rows,
            "seconds": seconds,
            "stdout": stdout,
            "stderr": stderr,
            "redis_cpu": redis_cpu(self.client) - cpu_before,
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
            "busy": others / TICKS / seconds,  # cores other processes kept busy
        }
        self.results.append(result)
        say(f"  {label}: {rows:,} in {seconds:.1f} s ({rows / seconds:,.0f}/s), peak RSS {result['rss_mb']:.0f} MB")
        return result


def write_loads(cards_csv: Path, path: Path, count: int) -> None:
    with open(cards_csv, newline="") as src, open(path, "w", newline="") as dst:
        out = csv.writer(dst)
        out.writerow(["card", "amount", "requestId"])
        for n, row in enumerate(csv.DictReader(src)):
            if n >= count:
                break
            out.writerow([row["cardId"], "5.00", f"bench-load-{n}"])


def write_imports(path: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    codes: set[str] = set()
    while len(codes) < count:
        codes.add("".join(rng.choice("0123456789") for _ in range(16)))
    with open(path, "w", newline="") as dst:
        out = csv.writer(dst)
        out.writerow(["code", "balance", "currency", "expiry", "owner"])
        for n, code in enumerate(sorted(codes)):
            out.writerow([f"{code[:4]}-{code[4:8]}-{code[8:12]}-{code[12:]}", "10.00", "USD", "2031-12-31",
                          f"customer-{n}@example.com"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=100_000, help="cards issued in all (warm + main batch)")
    parser.add_argument("--loads", type=int, help="rows of the load CSV [default: cards/10, at most 100,000]")
    parser.add_argument("--imports", type=int, help="cards imported [default: cards/10, at most 100,000]")
    parser.add_argument("--no-verify", action="store_true", help="skip `flask cards verify` at the end")
    parser.add_argument("--keep", action="store_true", help="keep the CSVs (in a temp directory) and print where")
    args = parser.parse_args()
    loads = args.loads if args.loads is not None else min(args.cards // 10, 100_000)
    imports = args.imports if args.imports is not None else min(args.cards // 10, 100_000)
    warm = max(args.cards // 10, 1)
    work = Path(tempfile.mkdtemp(prefix="gc-bench-issuance-"))
    say(machine_note())
    with RedisServer() as server:
        client = server.client()
        env = app_env(server.url) | {"REDIS_SOCKET_TIMEOUT": "30", "LOG_LEVEL": "WARNING"}
        runner = Runner(env, client)
        terms = ("--relation-name", "bench", "--profile-id", "printed-cards", "--currency", "USD", "--load", "25")
        version = client.info("server")["redis_version"]
        say(f"issuing {args.cards:,} cards ({warm:,} warm-up batch, then {args.cards - warm:,}), loading {loads:,} "
            f"credits, importing {imports:,} cards on redis-server {version}")  # fmt: skip
        memory_before = used_memory(client)
        runner("issue-batch warm", warm, "issue-batch", "--batch-id", "warm", "--count", str(warm),
               "-o", str(work / "warm.csv"), *terms, "--json")  # fmt: skip
        runner(f"export ({warm:,} cards)", warm * 2, "export", "-o", os.devnull)
        main_batch = runner("issue-batch main", args.cards - warm, "issue-batch", "--batch-id", "main", "--count",
                            str(args.cards - warm), "-o", str(work / "main.csv"), *terms, "--json")  # fmt: skip
        issued_memory = used_memory(client) - memory_before
        runner(f"export ({args.cards:,} cards)", args.cards * 2, "export", "-o", os.devnull)
        if loads:
            write_loads(work / "main.csv", work / "loads.csv", loads)
            runner("load-csv", loads, "load-csv", str(work / "loads.csv"), "--json")
        if imports:
            write_imports(work / "imports.csv", imports)
            runner("import-csv", imports, "import-csv", str(work / "imports.csv"), "--relation-name", "legacy",
                   "--json")  # fmt: skip
        if not args.no_verify:
            total = args.cards + imports
            runner("verify", total, "verify")
        own = json.loads(main_batch["stdout"])
        rows = [
            [r["label"], f"{r['rows']:,}", f"{r['seconds']:.1f}", f"{r['rows'] / r['seconds']:,.0f}",
             f"{r['cpu']:.1f}", f"{r['redis_cpu']:.1f}", f"{r['rss_mb']:.0f}", f"{r['busy']:.2f}"]
            for r in runner.results
        ]  # fmt: skip
        say("")
        say(table(["step", "rows", "wall s", "rows/s", "its CPU s", "Redis CPU s", "peak RSS MB", "busy"], rows))
        say("")
        count, seconds = own["count"], own["seconds"]
        say(f"issue-batch main, as the command times itself (creation and CSV, no interpreter start): "
            f"{count:,} cards in {seconds:.1f} s = {count / seconds:,.0f} cards/s")  # fmt: skip
        say(f"Redis memory for the {args.cards:,} issued cards: {issued_memory / args.cards:,.0f} B per card "
            f"(used_memory {used_memory(client) / 2**20:,.0f} MB in all)")  # fmt: skip
        owner_key = Keys(env.get("REDIS_KEY_PREFIX", "gc")).owner_index("printed-cards")
        owner_bytes = client.memory_usage(owner_key, samples=0) or 0
        say(f"of which the batches' one owner's index shard ({owner_key}, a sorted set of {args.cards:,}): "
            f"{owner_bytes / args.cards:,.0f} B per card")  # fmt: skip
        if args.keep:
            say(f"CSVs kept in {work}")
    if not args.keep:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
