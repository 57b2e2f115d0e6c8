"""Where a request's time goes under gunicorn: pyinstrument inside every worker while wrk drives one endpoint.

    python -m bench.profile_gunicorn debit [--workers 2] [--seconds 10] [--connections 8]

Scenarios: baseline, debit, get-card, search, settlement (the requests of
bench/http_load.py). gunicorn runs with bench/gunicorn_profile_conf.py (the
benchmark settings plus a profiler started in each worker once its app is loaded);
the workers' profiles are combined and printed as pyinstrument's call tree and
as self time per package. Time the workers spend waiting for the next
connection shows up under gunicorn/selectors; time waiting for Redis's answer
under redis. pyinstrument is a dev tool: pip install -r bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .common import Gunicorn, RedisServer, Request, Servers, ledger_for, run_wrk, say, seed_cards
from .http_load import requests_for
from .profile_endpoint import by_package

SCENARIOS = {
    "baseline": None,
    "debit": "Debit",
    "get-card": "GET card",
    "search": "search by code",
    "settlement": "settlement",
}


def main() -> None:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="gc-bench-profile-") as out:
        store = ledger_for(server.url)
        cards = seed_cards(store, 200, debits_each=2)
        if args.scenario == "baseline":
            app_name, ready, reqs = "bench.baseline_app:app", "/ping", [Request("GET", "/ping")]
        else:
            app_name, ready, reqs = "wsgi:app", "/health", requests_for(cards, cards[0])[SCENARIOS[args.scenario]]
        env = {"BENCH_PROFILE_DIR": out}
        with Gunicorn(app_name, args.workers, server.url, ready, env=env, conf="gunicorn_profile_conf.py") as app:
            result = run_wrk(
                app.port,
                reqs,
                label=args.scenario,
                servers=Servers((app,), server),
                connections=args.connections,
                seconds=args.seconds,
                warmup=1,
            )
        say(f"{args.scenario}: {result.rps:,.0f} req/s, gunicorn CPU {result.web_cpu_ms:.2f} ms/req (profiler on)")
        sessions = [Session.load(str(p)) for p in sorted(Path(out).glob("worker-*.pyisession"))]
        if not sessions:
            raise SystemExit("no worker profile was written (see the gunicorn log)")
        session = sessions[0]
        for other in sessions[1:]:
            session = Session.combine(session, other)
        say(ConsoleRenderer(unicode=False, color=False, time="percent_of_total").render(session))
        say("Self time by package, built-ins counted in their caller's (% of the workers' time):")
        for package, share in by_package(session.root_frame()):
            say(f"  {share:5.1f}%  {package}")


if __name__ == "__main__":
    main()
