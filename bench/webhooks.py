"""Webhook delivery: throughput and latency, from the event log to a local receiver.

A private redis-server (or a local 3-primary cluster with --cluster), a receiver on loopback (a
threaded http.server answering 204 with keep-alive, recording when each POST arrived), and the
Procfile's worker process (``flask --app wsgi cards webhooks work``) as a subprocess. Two phases:

1. backlog: --events events are written first (cards created and loaded through the ledger store),
   then an endpoint is added from the beginning of the log; the worker drains it. Throughput is
   events received / time from the first receipt to the last (the worker's start-up left out).
2. steady: the worker running and caught up, events are appended at --rate per second for
   --seconds; each one's latency is its receipt time minus its append time (the event's stream id,
   Redis's clock: the same machine's clock as the receiver's). p50 / p90 / p99 / max.

Every delivery is checked: the signature verifies (standardwebhooks) and nothing is missing.

    python -m bench.webhooks [--events 20000] [--rate 200] [--seconds 10] [--threads 8] [--cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import ROOT, say
from giftcard_provider.config import Settings
from giftcard_provider.money import Amount
from giftcard_provider.store import LedgerStore
from giftcard_provider.webhooks import Webhooks
from tests.redis_server import LocalCluster, RedisServer


class Receiver:
    def __init__(self):
        self.arrivals: list[tuple[float, bytes, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrived = time.time()
                with receiver.lock:
                    receiver.arrivals.append((arrived, body, dict(self.headers)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def write_events(store: LedgerStore, count: int) -> int:
    """About `count` events: cards created (one event each) and loaded once (one more)."""
    written = 0
    while written < count:
        card, _ = store.create_card(relation_name="bench", caption="", profile_id="bench@example.com", currency="USD",
                                    restricted_to_owner=False, multiple_redemptions=True, multiple_credits=True,
                                    emission_ms=None, expiring_ms=None)  # fmt: skip
        written += 1
        if written < count:
            store.authorize(card.id, operation="Credit", amount=Amount.from_decimal(Decimal("10.5")),
                            request_id=f"b{written}", token="")  # fmt: skip
            written += 1
    return written


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="backlog size (phase 1)")
    parser.add_argument("--rate", type=float, default=200, help="events appended per second (phase 2)")
    parser.add_argument("--seconds", type=float, default=10, help="length of phase 2")
    parser.add_argument("--threads", type=int, default=8, help="the worker's --threads")
    parser.add_argument("--poll", type=float, default=0.05, help="the worker's --poll")
    parser.add_argument("--cluster", action="store_true", help="a local 3-primary Redis Cluster")
    args = parser.parse_args()

    server = (LocalCluster(primaries=3) if args.cluster else RedisServer()).start()
    receiver = Receiver()
    worker = None
    try:
        settings = Settings(redis_url=server.url, redis_cluster=args.cluster, log_level="WARNING")
        store = LedgerStore(None, settings)
        hooks = Webhooks(store)
        say(f"backend: {'3-primary cluster' if args.cluster else 'one redis-server'}; worker --threads "
            f"{args.threads} --poll {args.poll}; receiver: http.server on loopback")  # fmt: skip

        started = time.perf_counter()
        backlog = write_events(store, args.events)
        say(f"phase 1: {backlog} events written in {time.perf_counter() - started:.1f} s")
        endpoint = hooks.add(receiver.url, start="beginning")
        env = {**os.environ, "APP_ENV": "development", "REDIS_URL": server.url, "LOG_LEVEL": "WARNING",
               "REDIS_CLUSTER": "1" if args.cluster else "0"}  # fmt: skip
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "cards", "webhooks", "work",
                   "--threads", str(args.threads), "--poll", str(args.poll)]  # fmt: skip
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        wait_until(lambda: hooks.pending([endpoint])[endpoint.id] == 0 and receiver.count() >= backlog, 600,
                   "the backlog")  # fmt: skip
        with receiver.lock:
            times = [a[0] for a in receiver.arrivals]
        span = max(times) - min(times)
        say(f"phase 1: {backlog} events delivered in {span:.2f} s (first to last receipt): "
            f"{backlog / span:,.0f} events/s; the worker used {cpu_seconds(worker.pid):.1f} s of CPU "
            f"(start-up included), the bench process (receiver and writer) {cpu_seconds(os.getpid()):.1f} s, "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip

        with receiver.lock:
            duplicates = len(receiver.arrivals) - len({json.loads(a[1])["data"]["id"] for a in receiver.arrivals})
            receiver.arrivals.clear()
        say(f"phase 1: {duplicates} event(s) received twice")
        total = int(args.rate * args.seconds)
        begin = time.perf_counter()
        for n in range(total):
            target = begin + n / args.rate
            if (pause := target - time.perf_counter()) > 0:
                time.sleep(pause)
            write_events(store, 1)
        appended = time.perf_counter() - begin
        wait_until(lambda: receiver.count() >= total, 120, "the steady phase")
        with receiver.lock:
            arrivals = list(receiver.arrivals)
        latencies = []
        for arrived, body, _ in arrivals:
            at_ms = int(json.loads(body)["data"]["id"].split("-")[1])
            latencies.append((arrived * 1000 - at_ms) / 1000)
        say(f"phase 2: {total} events appended at {total / appended:,.0f}/s for {appended:.1f} s; latency from "
            f"append to receipt: p50 {percentile(latencies, 50) * 1000:.1f} ms, p90 "
            f"{percentile(latencies, 90) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms (mean {statistics.mean(latencies) * 1000:.1f} ms)")  # fmt: skip

        from standardwebhooks import Webhook

        signer = Webhook(endpoint.secret)
        for _, body, headers in arrivals[:: max(1, len(arrivals) // 200)]:
            signer.verify(body, headers, json_parse=False)
        ids = [json.loads(body)["data"]["id"] for _, body, _ in arrivals]
        assert len(set(ids)) == total, "an event is missing or came twice"
        stats = hooks.stats(endpoint.id)
        say(f"checked: signatures verify; {stats.delivered} delivered in all, failures {stats.failures or 'none'}, "
            f"pending {hooks.pending([endpoint])[endpoint.id]}")  # fmt: skip
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        receiver.close()
        server.close()


if __name__ == "__main__":
    main()
