"""Redis round trips and commands per request, for every endpoint, on one Redis and on a Redis Cluster.

    python -m bench.round_trips [--requests 200] [--backends single,cluster]

The app (create_app, production settings) runs in this process behind Flask's
test client, on a private redis-server and then on a local 3-primary Redis
Cluster (REDIS_CLUSTER=1); the request path is the same code gunicorn runs.
Around N requests of one endpoint the script counts:

* client calls: each command the app's Redis client sends on its own, and each
  pipeline it executes, is one round trip of latency (a cluster pipeline whose
  keys live on several nodes is written to all of them, then read: still one).
  Counted in process, by wrapping redis-py's execute_command and Pipeline.execute.
* INFO stats `total_reads_processed`, summed over the nodes: read events on
  client sockets. One command or one pipeline received by one node is one read
  event, so on a cluster a pipeline reaching three nodes is three.
* INFO commandstats `calls`: every command executed, including the ones a
  function (FCALL) runs inside Redis.
* MONITOR (on every node): which of those commands the client sent and which
  ran inside a function (`[0 lua]`).

Targets: one round trip per write, except card creation: two (the card with its
bucket's card list, code index, books and event in one FCALL, then the owner
index, which lives in another slot, with the layout marker; see
LedgerStore.create_card); at most two per read.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import redis
from redis.cluster import ClusterPipeline, RedisCluster

from giftcard_provider import create_app
from giftcard_provider.money import Amount

from .common import (
    AUTH,
    Cluster,
    RedisServer,
    card_args,
    json_body,
    ledger_for,
    machine_note,
    say,
    seed_cards,
    settings_for,
    table,
)

IGNORED = {"info", "echo", "monitor"}  # this script's own commands on its stats connection


@dataclass
class Endpoint:
    label: str
    kind: str  # "write" | "read"
    request: object  # i -> (method, path, body, headers)
    status: int = 200
    target: int | None = None  # round trips allowed; default 1 per write, 2 per read

    @property
    def trips_allowed(self) -> int:
        return self.target if self.target is not None else (1 if self.kind == "write" else 2)


BACKENDS = ("single", "cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint (default 200)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="single (one redis-server), cluster (3 primaries), or both"
    )


def endpoints(store, n: int) -> list[Endpoint]:
    cards = seed_cards(store, 20, debits_each=2)
    # Debits with a settlement and a cancellation each, so every GET list has a record to return.
    for c in cards:
        for tx in c.debits:
            store.settle(c.id, tx, _amount("1"), f"seed-settle-{tx}")
            store.cancel(c.id, tx, _amount("1"), f"seed-cancel-{tx}")
    # A loyalty client owning 3 cards.
    owned = [store.create_card(**card_args(profile_id="loyal@example.com"))[0].id for _ in range(3)]
    for i, card_id in enumerate(owned):
        store.authorize(card_id, operation="Credit", amount=_amount("50"), request_id=f"l{i}", token="")
    pairs = [(c, tx) for c in cards for tx in c.debits]
    seq = itertools.count()
    rid = lambda: f"rt-{next(seq)}"  # noqa: E731
    pick = lambda i: cards[i % len(cards)]  # noqa: E731
    pair = lambda i: pairs[i % len(pairs)]  # noqa: E731
    debit = lambda i: json_body(  # noqa: E731
        operation="Debit", value=0.01, requestId=rid(), redemptionToken=pick(i).token, orderInfo={"orderId": "o1"}
    )
    replay = json_body(operation="Debit", value=0.01, requestId="replayed", redemptionToken=cards[0].token)
    store.authorize(cards[0].id, operation="Debit", amount=_amount("0.01"), request_id="replayed", token=cards[0].token)
    search = lambda code: json_body(  # noqa: E731
        client={"id": "loyal@example.com", "email": "loyal@example.com", "document": "1"},
        cart={"redemptionCode": code, "relationName": None, "grandTotal": 1},
    )
    card_body = json_body(relationName="gift", caption="Bench", profileId="new@example.com", currencyCode="USD")
    tx_path = lambda i: f"/giftcards/{pair(i)[0].id}/transactions/{pair(i)[1]}"  # noqa: E731
    op_body = lambda: json_body(value=0.01, requestId=rid())  # noqa: E731
    return [
        # The card with its bucket's keys (one FCALL), then the owner index and the layout marker: 2 round trips.
        Endpoint("POST /giftcards (create)", "write", lambda i: ("POST", "/giftcards", card_body, {}), target=2),
        Endpoint(
            "POST transactions (Debit)",
            "write",
            lambda i: ("POST", f"/giftcards/{pick(i).id}/transactions", debit(i), {}),
        ),
        Endpoint(
            "POST transactions (Credit)",
            "write",
            lambda i: (
                "POST",
                f"/giftcards/{pick(i).id}/transactions",
                json_body(operation="Credit", value=1, requestId=rid()),
                {},
            ),
        ),
        Endpoint(
            "POST transactions (replayed Debit)",
            "write",
            lambda i: ("POST", f"/giftcards/{cards[0].id}/transactions", replay, {}),
        ),
        Endpoint("POST settlements", "write", lambda i: ("POST", f"{tx_path(i)}/settlements", op_body(), {})),
        Endpoint("POST cancellations", "write", lambda i: ("POST", f"{tx_path(i)}/cancellations", op_body(), {})),
        Endpoint("GET /giftcards/{id}", "read", lambda i: ("GET", f"/giftcards/{pick(i).id}", None, {})),
        Endpoint("POST _search (by code)", "read", lambda i: ("POST", "/giftcards/_search", search(pick(i).code), {})),
        Endpoint(
            "POST _search (loyalty, 3 cards)",
            "read",
            lambda i: ("POST", "/giftcards/_search", search(None), {"REST-Range": "resources=0-9"}),
        ),
        Endpoint(
            "GET transactions (list)",
            "read",
            lambda i: ("GET", f"/giftcards/{pick(i).id}/transactions", None, {"REST-Range": "resources=0-49"}),
        ),
        Endpoint("GET transactions/{tid}", "read", lambda i: ("GET", tx_path(i), None, {})),
        Endpoint("GET .../authorization", "read", lambda i: ("GET", f"{tx_path(i)}/authorization", None, {})),
        Endpoint("GET .../settlements", "read", lambda i: ("GET", f"{tx_path(i)}/settlements", None, {})),
        Endpoint("GET .../cancellations", "read", lambda i: ("GET", f"{tx_path(i)}/cancellations", None, {})),
    ]


def _amount(value: str) -> Amount:
    return Amount.from_decimal(Decimal(value))


class CallCounter:
    """Round trips of latency made by Redis clients in this process: every command sent on its own
    (Redis.execute_command, RedisCluster.execute_command) and every pipeline executed."""

    def __init__(self):
        self.calls = 0
        self.on = False

    @contextlib.contextmanager
    def installed(self):
        patched = [
            (redis.Redis, "execute_command"),
            (redis.client.Pipeline, "execute"),
            (RedisCluster, "execute_command"),
            (ClusterPipeline, "execute"),
        ]
        originals = [(cls, name, cls.__dict__[name]) for cls, name in patched]
        for cls, name, original in originals:
            setattr(cls, name, self._counted(original))
        try:
            yield self
        finally:
            for cls, name, original in originals:
                setattr(cls, name, original)

    def _counted(self, original):
        counter = self

        def wrapper(*args, **kwargs):
            if counter.on:
                counter.calls += 1
            return original(*args, **kwargs)

        return wrapper


@dataclass
class Nodes:
    """Plain clients on every node (one for a single server): INFO, ECHO and MONITOR."""

    stats: list
    monitors: list

    @classmethod
    def of(cls, ports: list[int]) -> Nodes:
        client = lambda port: redis.Redis(port=port, decode_responses=True, socket_timeout=30)  # noqa: E731
        return cls([client(p) for p in ports], [client(p) for p in ports])

    def counters(self) -> tuple[dict, int]:
        calls: Counter = Counter()
        usec: Counter = Counter()
        reads = 0
        for client in self.stats:
            info = client.info("all")
            for k, v in info.items():
                if k.startswith("cmdstat_"):
                    calls[k[len("cmdstat_") :]] += v["calls"]
                    usec[k[len("cmdstat_") :]] += v["usec"]
            reads += int(info["total_reads_processed"])
        return {k: (calls[k], usec[k]) for k in calls}, reads

    def close(self) -> None:
        for client in self.stats + self.monitors:
            client.close()


def measure(http, nodes: Nodes, counter: CallCounter, ep: Endpoint, n: int) -> list:
    def send(i):
        method, path, body, headers = ep.request(i)
        response = http.open(
            path, method=method, data=body, headers={**AUTH, **headers}, content_type="application/json"
        )
        assert response.status_code == ep.status, (ep.label, response.status_code, response.get_data(as_text=True))

    for i in range(3):  # warm: connections open (to every node of a cluster), lazy imports
        send(10**6 + i)
    for client in nodes.stats:
        client.ping()  # this script's own connections are open before counting starts
    sentinel = f"bench-end-{time.monotonic_ns()}"
    with contextlib.ExitStack() as stack:
        monitors = [stack.enter_context(m.monitor()) for m in nodes.monitors]
        calls0, reads0 = nodes.counters()
        counter.calls, counter.on = 0, True
        started = time.process_time()
        for i in range(n):
            send(i)
        elapsed = time.process_time() - started
        counter.on = False
        for client in nodes.stats:
            client.echo(sentinel)
        calls1, reads1 = nodes.counters()
        sent, inside = Counter(), Counter()
        for monitor in monitors:
            while True:
                line = monitor.next_command()
                words = line["command"].split(" ")
                name = words[0].lower()
                if name == "echo" and sentinel in line["command"]:
                    break
                if name in IGNORED:
                    continue
                if line["client_type"] == "lua":
                    inside[name] += 1
                else:
                    sent[f"{name} {words[1].rsplit('_', 1)[0]}" if name.startswith("fcall") else name] += 1
    nodes_n = len(nodes.stats)
    # Minus this script's own: the first INFO on each node, then its ECHO and its second INFO.
    reads = (reads1 - reads0 - 2 * nodes_n) / n
    executed = {
        k: (v[0] - calls0.get(k, (0, 0))[0], v[1] - calls0.get(k, (0, 0))[1])
        for k, v in calls1.items()
        if k not in IGNORED
    }
    all_cmds = sum(c for c, _ in executed.values()) / n
    # Redis time per request: FCALLs (their usec include what runs inside) + the other commands the client sent.
    server_us = 0.0
    for name, (count, usec) in executed.items():
        if name.startswith("fcall"):
            server_us += usec
        elif count:
            client_sent = sum(v for k, v in sent.items() if k == name)
            server_us += usec * client_sent / count
    trips = counter.calls / n
    target = ep.trips_allowed
    return [
        ep.label,
        f"{trips:.2f}",
        f"<= {target}: met" if trips <= target + 0.01 else f"<= {target}: MISSED",
        f"{reads:.2f}",
        ", ".join(f"{k} x{v / n:g}" for k, v in sorted(sent.items())),
        f"{sum(inside.values()) / n:.1f}",
        f"{all_cmds:.1f}",
        f"{server_us / n:.0f}",
        f"{1e6 * elapsed / n:.0f}",
    ]


HEADERS = [
    "endpoint",
    "round trips/req (client calls)",
    "target",
    "read events/req (all nodes)",
    "commands sent by the app (per req)",
    "inside functions/req",
    "commandstats calls/req",
    "Redis us/req",
    "app CPU us/req",
]


def run_backend(backend: str, args, counter: CallCounter) -> list[list]:
    cluster = backend == "cluster"
    with Cluster(primaries=3) if cluster else RedisServer() as server:
        store = ledger_for(server.url, cluster)
        eps = endpoints(store, args.requests)
        app = create_app(settings_for(server.url, cluster))
        logging.getLogger("giftcard_provider").setLevel(logging.WARNING)  # the request log: stdout under gunicorn
        http = app.test_client()
        nodes = Nodes.of([node.port for node in server.nodes] if cluster else [server.port])
        try:
            return [measure(http, nodes, counter, ep, args.requests) for ep in eps]
        finally:
            nodes.close()


def run(args) -> list[str]:
    say("## Redis round trips per request (client calls, INFO stats + commandstats + MONITOR deltas)")
    say(machine_note())
    backends = [b.strip() for b in getattr(args, "backends", "single").split(",") if b.strip()]
    summary = []
    with CallCounter().installed() as counter:
        for backend in backends:
            label = "one redis-server" if backend == "single" else "a local Redis Cluster of 3 primaries"
            rows = run_backend(backend, args, counter)
            say(f"\n### {label}: {args.requests} requests per endpoint")
            say("target: 1 round trip per write (2 for card creation: the card, then its owner index), <= 2 per read.")
            say("'app CPU us/req': CPU time of this process per request (Flask's test client + the app, log off).")
            say(table(HEADERS, rows))
            missed = [r[0] for r in rows if not r[2].endswith(": met")]
            summary.append(
                f"round trips ({backend}): "
                + ", ".join(f"{r[0]} {r[1]} ({r[3]} read events)" for r in rows)
                + (f"; MISSED: {', '.join(missed)}" if missed else "; every endpoint within target")
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    for line in run(parser.parse_args()):
        say(line)


if __name__ == "__main__":
    main()
