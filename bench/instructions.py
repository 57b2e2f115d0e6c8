"""Instructions per request under gunicorn, counted by valgrind: a CPU figure other load cannot move.

    python -m bench.instructions [--requests 200] [--scenarios Debit,"GET card"]

On a shared machine, CPU seconds per request swing with everyone else's load (cache, frequency,
scheduling): bench.http_load's ratios moved by 20% between runs minutes apart. valgrind's callgrind
counts the instructions a process executes, which is the same for the same code and inputs whatever
else runs. This script starts gunicorn as the Procfile does (bench/gunicorn_conf.py, the production
environment, one sync worker) under `valgrind --tool=callgrind --trace-children=yes`, once for
bench/baseline_app.py (Flask + one Redis PING), once for bench/floor_app.py (the same ledger calls
and answers without the web stack's features) and once for wsgi:app, on a private redis-server
seeded through LedgerStore. For each scenario it sends a few warm-up requests, zeroes the worker's
counters (callgrind_control --zero), sends --requests requests over one keep-alive connection,
dumps the counters (callgrind_control --dump) and divides: the worker's instructions per request,
HTTP parsing, the app and the Redis client included (redis-server runs outside valgrind). The
requests are bench.http_load's, the Hub's shapes, and the default transactions page (1,000 refs).

Instructions are not time (a cache miss costs more than an add), but for the same interpreter and
libraries the ratio endpoint / baseline tracks the CPU-time ratio closely, and it repeats to the
per-mille. valgrind runs Python ~50x slower: a run takes a few minutes. Needs valgrind (Debian:
apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import AUTH, BENCH, ROOT, RedisServer, Request, app_env, free_port, ledger_for, say, seed_cards, table
from .http_load import requests_for

BASELINE = "baseline (PING)"
SCENARIOS = ("Debit", "GET card", "search by code", "settlement", "transactions page")
FLOORED = ("Debit", "GET card", "search by code", "settlement")  # the routes bench/floor_app.py has


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per scenario (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS)
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian/Ubuntu: apt-get install valgrind)")
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    with RedisServer() as server:
        store = ledger_for(server.url)
        cards = seed_cards(store, 100, debits_each=2)
        hot = seed_cards(store, 1)[0]
        scenarios = requests_for(cards, hot)
        if "transactions page" in wanted:  # the default page when the Hub sends no REST-Range: 1,000 refs
            (busy,) = seed_cards(store, 1, debits_each=1000, debit="1")
            scenarios["transactions page"] = [Request("GET", f"/giftcards/{busy.id}/transactions")]
        counts = {}
        floors = {}
        with Traced("bench.baseline_app:app", server.url, "/ping") as baseline:
            counts[BASELINE] = baseline.per_request([Request("GET", "/ping")], args.warmup, args.requests)
        with Traced("bench.floor_app:create_app()", server.url, "/health") as floor:
            for name in (n for n in wanted if n in FLOORED):
                floors[name] = floor.per_request(scenarios[name], args.warmup, args.requests)
        with Traced("wsgi:app", server.url, "/health") as app:
            for name in wanted:
                counts[name] = app.per_request(scenarios[name], args.warmup, args.requests)
    base = counts[BASELINE]
    say(f"## Instructions per request under gunicorn (1 sync worker, valgrind), {args.requests} requests each")
    say("floor: bench/floor_app.py, the same ledger call and answer without the web stack's features")
    rows = []
    for name, n in counts.items():
        floor = floors.get(name)
        rows.append(
            [name, f"{n:,.0f}", f"{n / base:.2f}x"]
            + ([f"{floor:,.0f}", f"{floor / base:.2f}x", f"{n / floor:.2f}x"] if floor else ["", "", ""])
        )
    say(table(["scenario", "instructions/request", "vs baseline", "floor", "floor vs baseline", "vs floor"], rows))


class Traced:
    """gunicorn with one sync worker, under callgrind; per_request() counts the worker's instructions."""

    def __init__(self, app: str, redis_url: str, ready_path: str):
        self.app, self.ready_path, self.port = app, ready_path, free_port()
        self.env = {**app_env(redis_url), "BENCH_ACCESS_LOG": "0"}
        self.dir = Path(tempfile.mkdtemp(prefix="gc-bench-callgrind-"))
        self.process: subprocess.Popen | None = None
        self.rid = itertools.count()

    def __enter__(self) -> Traced:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            f"--callgrind-out-file={self.dir}/callgrind.out.%p",
            f"--log-file={self.dir}/valgrind.%p.log",
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(BENCH / "gunicorn_conf.py"),
            "-w",
            "1",
            "--timeout",
            "0",  # no worker timeout: under valgrind a request takes tens of milliseconds
            "-b",
            f"127.0.0.1:{self.port}",
            self.app,
        ]
        log = (self.dir / "gunicorn.log").open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if self._send("GET", self.ready_path, "", {})[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("gunicorn did not start under valgrind")
            time.sleep(1)

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        (pid,) = children  # one worker
        return int(pid)

    def per_request(self, requests, warmup: int, measured: int) -> float:
        pid = self.worker_pid()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        cycle = itertools.cycle(requests)
        try:
            for _ in range(warmup):
                self._call(connection, next(cycle))
            _control("--zero", pid)
            for _ in range(measured):
                self._call(connection, next(cycle))
            before = self._dumps(pid)
            _control("--dump", pid)
            (dump,) = self._dumps(pid) - before
        finally:
            connection.close()
        totals = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
        return int(totals[1]) / measured

    def _dumps(self, pid: int) -> set[Path]:
        """The worker's dump files: callgrind.out.<pid>.<n> (not another pid that starts with the same digits)."""
        return {p for p in self.dir.iterdir() if re.fullmatch(rf"callgrind\.out\.{pid}\.\d+", p.name)}

    def _call(self, connection: http.client.HTTPConnection, request) -> None:
        body = request.body.replace("{rid}", f"i{next(self.rid)}-{time.time_ns()}")
        headers = {**AUTH, **dict(request.headers)}
        if body:
            headers["Content-Type"] = "application/json"
        connection.request(request.method, request.path, body=body.encode() or None, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{request.method} {request.path}: {response.status} {payload[:300]!r}")

    def _send(self, method: str, path: str, body: str, headers: dict) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
