"""Where a request's time goes: one endpoint, in process, profiled with pyinstrument.

    python -m bench.profile_endpoint debit [--requests 2000] [--no-tree]

Scenarios: baseline (bench/baseline_app.py's PING endpoint), debit, get-card,
search, settlement, transactions-page (GET the transaction list of a card with 1,000
transactions: the default page when the Hub sends no REST-Range). The app is
create_app() with the production settings on a private redis-server, called as a
WSGI app the way gunicorn's sync worker calls it (no HTTP parsing, no sockets
other than Redis's), with its request log silenced (it goes to gunicorn's stdout
in production: --keep-log keeps it).

It prints the CPU time per request of this process (time.process_time, which
other people's load on the machine does not inflate the way it inflates wall
time), the part of it spent in the LedgerStore call alone, and pyinstrument's
call tree. pyinstrument is a dev tool: pip install -r bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import time
from decimal import Decimal

from giftcard_provider import create_app
from giftcard_provider.money import Amount

from .common import AUTH, ROOT, RedisServer, app_env, json_body, ledger_for, say, seed_cards, settings_for

SCENARIOS = ("baseline", "debit", "get-card", "search", "settlement", "transactions-page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-tree", action="store_true", help="CPU figures only, no pyinstrument tree")
    parser.add_argument("--keep-log", action="store_true", help="keep the JSON request log (written to stdout)")
    args = parser.parse_args()
    with RedisServer() as server:
        store = ledger_for(server.url)
        if args.scenario == "transactions-page":  # one card, 1,000 Debits: a full default page
            cards = seed_cards(store, 1, debits_each=1000, debit="1")
        else:
            cards = seed_cards(store, 100, debits_each=1)
        if args.scenario == "baseline":
            os.environ.update(app_env(server.url))
            # Imported only now: bench.baseline_app builds its app at import time from the process
            # environment, and an unset APP_ENV means production, which refuses to start without secrets.
            from .baseline_app import create_app as create_baseline

            app = create_baseline()
        else:
            app = create_app(settings_for(server.url))
        if not args.keep_log:
            logging.getLogger("giftcard_provider").setLevel(logging.WARNING)
        send, direct = scenario(args.scenario, Wsgi(app), store, cards)
        for _ in range(100):
            send()
        cpu, wall = timed(send, args.requests)
        say(f"{args.scenario}: {cpu:.0f} us CPU and {wall:.0f} us wall per request, in process")
        if direct:
            cpu_d, wall_d = timed(direct, args.requests)
            say(f"  of which the LedgerStore call alone: {cpu_d:.0f} us CPU, {wall_d:.0f} us wall")
        if not args.no_tree:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            with profiler:
                for _ in range(args.requests):
                    send()
            say(profiler.output_text(unicode=False, color=False, time="percent_of_total"))
            say("Self time by package, built-ins counted in their caller's (% of profiled time;")
            say("'redis' includes the socket calls that wait for Redis's answers):")
            for package, share in by_package(profiler.last_session.root_frame()):
                say(f"  {share:5.1f}%  {package}")


def by_package(root) -> list[tuple[str, float]]:
    """Self time of every frame, summed by the package its code lives in."""
    totals: dict[str, float] = {}
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        own = frame.time - sum(c.time for c in frame.children)
        # pyinstrument keeps self time in synthetic "[self]" children: it belongs to the parent's code.
        # ... and a built-in (socket.recv_into, str.join) to the code that called it.
        source = frame
        while source.parent and (source.is_synthetic or source.file_path in (None, "", "<built-in>")):
            source = source.parent
        package = _package(source.file_path or "")
        totals[package] = totals.get(package, 0.0) + own
    total = sum(totals.values()) or 1.0
    return sorted(((k, 100 * v / total) for k, v in totals.items() if v / total >= 0.005), key=lambda kv: -kv[1])


def _package(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT)):
        return path[len(str(ROOT)) + 1 :].split("/", 1)[0].removesuffix(".py")
    if "/lib/python" in path:
        return "stdlib " + path.split("/lib/python", 1)[1].split("/", 2)[1].removesuffix(".py")
    return path or "(native)"


def timed(fn, n: int) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - cpu0) / n * 1e6, (time.perf_counter() - wall0) / n * 1e6


class Wsgi:
    """Calls the app the way gunicorn's sync worker does: one environ dict, one call, the body read.

    (Flask's test client builds each request with werkzeug's EnvironBuilder, which would
    dominate the profile and is not on the production path.)
    """

    def __init__(self, app):
        self.app = app
        self.base = {
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
            "HTTP_HOST": "127.0.0.1:8000",
            **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in AUTH.items()},
        }

    def __call__(self, method: str, path: str, body: str = "") -> None:
        data = body.encode()
        environ = {**self.base, "REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(data)}
        if data:
            environ.update(CONTENT_TYPE="application/json", CONTENT_LENGTH=str(len(data)))
        status = []
        result = self.app(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            payload = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        assert status[0].startswith("200"), (status, payload[:300])


def scenario(name: str, call: Wsgi, store, cards):
    """(one request through the app, the same work done by calling LedgerStore directly)."""
    seq = itertools.count()
    cycle = itertools.cycle(cards)
    pairs = itertools.cycle([(c, tx) for c in cards for tx in c.debits])
    cent = Amount.from_decimal(Decimal("0.01"))

    if name == "baseline":
        return lambda: call("GET", "/ping"), None
    if name == "transactions-page":
        card = cards[0]
        return lambda: call("GET", f"/giftcards/{card.id}/transactions"), lambda: store.transaction_ids(card.id, 0, 999)
    if name == "get-card":
        return lambda: call("GET", f"/giftcards/{next(cycle).id}"), lambda: store.card(next(cycle).id)
    if name == "search":

        def search():
            body = json_body(client={"id": "a", "email": "a@example.com"}, cart={"redemptionCode": next(cycle).code})
            call("POST", "/giftcards/_search", body)

        return search, lambda: store.find_by_code(next(cycle).code)
    if name == "debit":

        def debit():
            c = next(cycle)
            body = json_body(operation="Debit", value=0.01, requestId=f"p{next(seq)}", redemptionToken=c.token)
            call("POST", f"/giftcards/{c.id}/transactions", body)

        def direct():
            card = next(cycle)
            store.authorize(card.id, operation="Debit", amount=cent, request_id=f"d{next(seq)}", token=card.token)

        return debit, direct

    def settle():
        c, tx = next(pairs)
        call(
            "POST", f"/giftcards/{c.id}/transactions/{tx}/settlements", json_body(value=0.01, requestId=f"s{next(seq)}")
        )

    def settle_direct():
        c, tx = next(pairs)
        store.settle(c.id, tx, cent, f"sd{next(seq)}")

    return settle, settle_direct


if __name__ == "__main__":
    main()
