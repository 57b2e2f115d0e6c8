"""The same HTTP load on one redis-server and on a local 3-primary Redis Cluster, side by side.

    python -m bench.cluster [--seconds 5] [--workers 2] [--cards 1000] [--connections 32]

Two backends are started on free loopback ports: a single redis-server, and a
Redis Cluster of 3 primaries without replicas (tests/redis_server.LocalCluster:
redis-server processes joined by `redis-cli --cluster create`). Each is seeded
through LedgerStore (--cards cards holding 100,000.00, one held Debit of
1,000.00 each; on the cluster through a RedisCluster client) and served by its
own gunicorn (the project's gunicorn.conf.py, production environment; the
cluster's app gets REDIS_CLUSTER=1 and REDIS_URL=<one node>). wrk then drives
the scenarios of bench/http_load.py (Debit, GET card, search by code,
settlement), each on both backends in turn (single first, then cluster first
for the next scenario, and so on), so that a change in the machine's other load
hits both alike.

Before the load, --requests requests of each scenario go through the app in
this process (Flask's test client, the code gunicorn runs) while Redis counts
read events on client sockets (INFO stats total_reads_processed, summed over
the cluster's primaries): one command or one pipeline received by one node is
one read event. A ledger call is one round trip to its card's shard; a pipeline
whose keys live on several nodes is one read event on each node it touches
(redis-py writes to all of them first, then reads their replies, so it still
costs about one round trip of latency).

After the load, every card on each backend is verified from its events, its
code and owner indexes and the books (giftcard_provider.verify.verify_all: the
buckets' card lists, no SCAN), and the result is printed.

What to expect on a small machine: this is about the cluster path working under
real concurrency and what it costs per request, not a speed-up. On 2 cores,
three redis-server processes, gunicorn and wrk share the same CPUs as one
redis-server did, and Redis is not the bottleneck here (the web workers are),
so the cluster cannot be faster; a cluster pays off when one Redis's CPU,
memory or network is the limit, with its shards on their own machines. The
figures to read are errors (none), the verification (no problems), round trips
per request (a ledger call stays one) and CPU per request on each side.
A default run takes about a minute and a half.
"""

from __future__ import annotations

import argparse
import logging
import time

import redis

from giftcard_provider import create_app
from giftcard_provider.verify import verify_all

from .common import (
    AUTH,
    Cluster,
    Gunicorn,
    LoadResult,
    RedisServer,
    Request,
    Servers,
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
    wrk_binary,
)
from .http_load import requests_for

SCENARIOS = ("Debit", "GET card", "search by code", "settlement")
PRIMARIES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per scenario (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per backend (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--cards", type=int, default=1000, help="cards the load spreads over (default 1000)")
    parser.add_argument("--requests", type=int, default=100, help="requests per scenario to count round trips")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment for the app")


class Backend:
    """One Redis backend (a server or a cluster), seeded, with its gunicorn and Redis clients for INFO."""

    def __init__(self, label: str, server: RedisServer | Cluster, cluster: bool, args):
        self.label, self.redis, self.cluster = label, server, cluster
        self.url = server.url
        self.store = ledger_for(self.url, cluster)
        say(f"{label}: seeding {args.cards} cards with one held Debit each through LedgerStore ...")
        self.cards = seed_cards(self.store, args.cards, debits_each=1)
        self.scenarios = requests_for(self.cards, self.cards[0])
        self.app: Gunicorn | None = None

    def node_clients(self) -> list:
        """A plain client per primary (every node of a cluster without replicas), for INFO."""
        nodes = self.redis.nodes if self.cluster else [self.redis]
        return [node_client(n.port) for n in nodes]


def node_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


def round_trips(backend: Backend, n: int) -> dict[str, tuple[float, float]]:
    """For n requests of each scenario, in process: (read events per request on Redis, summed over the
    nodes; this process's CPU time per request in us, the app and Flask's test client)."""
    app = create_app(settings_for(backend.url, backend.cluster))
    logging.getLogger("giftcard_provider").setLevel(logging.WARNING)  # the request log: stdout under gunicorn
    http = app.test_client()
    nodes = backend.node_clients()

    def send(req: Request, rid: str) -> None:
        response = http.open(
            req.path,
            method=req.method,
            data=req.body.replace("{rid}", rid) if req.body else None,
            headers={**AUTH, **dict(req.headers)},
            content_type="application/json",
        )
        assert response.status_code < 300, (req.path, response.status_code, response.get_data(as_text=True))

    def reads() -> int:  # each INFO is itself one read event on its node
        return sum(int(c.info("stats")["total_reads_processed"]) for c in nodes)

    result = {}
    for label in SCENARIOS:
        reqs = backend.scenarios[label]
        for i in range(20):  # warm: a connection open to every node (and the slot map read), lazy imports done
            send(reqs[i % len(reqs)], f"rt-warm-{label}-{i}-{time.monotonic_ns()}")
        before, cpu = reads(), time.process_time()
        for i in range(n):
            send(reqs[(i * 7) % len(reqs)], f"rt-{label}-{i}-{time.monotonic_ns()}")
        cpu = time.process_time() - cpu
        result[label] = ((reads() - before - len(nodes)) / n, 1e6 * cpu / n)
    for c in nodes:
        c.close()
    return result


def run(args) -> list[str]:
    wrk_binary()
    say(f"## One redis-server vs a local {PRIMARIES}-primary Redis Cluster, same HTTP load")
    say(machine_note())
    env = parse_env(args.env)
    kw = {"connections": args.connections, "threads": args.threads, "seconds": args.seconds, "warmup": args.warmup}
    started = time.monotonic()
    with RedisServer() as server, Cluster(primaries=PRIMARIES) as cluster:
        backends = [
            Backend("single redis-server", server, False, args),
            Backend(f"cluster ({PRIMARIES} primaries)", cluster, True, args),
        ]
        say(f"\ncounting Redis round trips: {args.requests} requests per scenario, in process ...")
        trips = {b.label: round_trips(b, args.requests) for b in backends}
        headers = ["scenario"]
        headers += [f"read events/req, {b.label}" for b in backends]
        headers += [f"app CPU us/req, {b.label}" for b in backends]
        rows = [
            [label]
            + [f"{trips[b.label][label][0]:.2f}" for b in backends]
            + [f"{trips[b.label][label][1]:,.0f}" for b in backends]
            for label in SCENARIOS
        ]
        say(table(headers, rows))
        say("('app CPU': this process per request, Flask's test client + the app with its Redis client, log off.)")
        with (
            Gunicorn("wsgi:app", args.workers, server.url, "/ready", env=env) as single_app,
            Gunicorn("wsgi:app", args.workers, cluster.url, "/ready", env=env, cluster=True) as cluster_app,
        ):
            backends[0].app, backends[1].app = single_app, cluster_app
            say(
                f"\n### WEB_CONCURRENCY={args.workers} per backend, {args.connections} connections, "
                f"{args.seconds} s each (each scenario on both backends in turn, which goes first alternating)"
            )
            results: dict[tuple[str, str], LoadResult] = {}
            for i, label in enumerate(SCENARIOS):
                for b in backends if i % 2 == 0 else backends[::-1]:  # ABBA: neither side always goes first
                    servers = Servers((b.app,), b.redis)
                    results[b.label, label] = run_wrk(
                        b.app.port, b.scenarios[label], label=f"{label}, {b.label}", servers=servers, **kw
                    )
        rows = [load_row(results[b.label, label]) for label in SCENARIOS for b in backends]
        say(table(load_headers(False), rows))
        say("('redis CPU us/req' on the cluster is the sum over its 3 redis-server processes.)")
        say("\nverifying every card from its events, its indexes and the books ...")
        verified = {}
        for b in backends:
            checked, problems = verify_all(b.store.redis, b.store.keys)
            verified[b.label] = (checked, problems)
            say(f"{b.label}: verified {checked} cards, {len(problems)} problems {problems[:3]}")
            if b.cluster:
                per_node = [int(c.dbsize()) for c in b.node_clients()]
                say(f"{b.label}: keys per primary {per_node}")
    say(f"total {time.monotonic() - started:.0f} s")

    single, clustered = backends[0].label, backends[1].label
    lines = []
    for label in SCENARIOS:
        a, c = results[single, label], results[clustered, label]
        lines.append(
            f"{label}: single {a.rps:,.0f} req/s p99 {a.p99_ms:.1f} ms, cluster {c.rps:,.0f} req/s "
            f"p99 {c.p99_ms:.1f} ms ({c.rps / a.rps:.0%}); gunicorn CPU {a.web_cpu_ms:.2f} -> {c.web_cpu_ms:.2f} "
            f"ms/req, redis CPU {a.redis_cpu_us:.0f} -> {c.redis_cpu_us:.0f} us/req; in process: round trips "
            f"{trips[single][label][0]:.2f} -> {trips[clustered][label][0]:.2f}, app CPU "
            f"{trips[single][label][1]:,.0f} -> {trips[clustered][label][1]:,.0f} us/req; "
            f"errors {a.error_count} / {c.error_count}"
        )
    for b in backends:
        checked, problems = verified[b.label]
        lines.append(f"ledger after load, {b.label}: {checked} cards verified, {len(problems)} problems")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    summary = run(parser.parse_args())
    say("\n## Summary")
    say("\n".join(summary))


if __name__ == "__main__":
    main()
