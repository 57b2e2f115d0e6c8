"""Run every benchmark with modest defaults and print a summary at the end.

    bench/run_all.sh [--workers 2,4] [--seconds 6] [--cards 100000] [--txs 10000] [--only http,scaling]

Parts: round_trips (Redis round trips per request, every endpoint, on one
redis-server and on a local Redis Cluster), http (throughput and latency against
the baseline, hot card), scaling (many cards, many transactions, memory, the
liability report at 1k and --cards cards), keyspace (the sweeper, verify and
export beside 9k and 1M other keys; `python -m bench.keyspace` adds 5M), cluster
(the same load on one redis-server and on a local 3-primary Redis Cluster). Each
part can also run alone: python -m bench.<module>.
"""

from __future__ import annotations

import argparse
import time

from . import cluster, http_load, keyspace, round_trips, scaling
from .common import machine_note, say, wait_for_quiet

PARTS = {"round_trips": round_trips, "http": http_load, "scaling": scaling, "keyspace": keyspace, "cluster": cluster}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run (default {','.join(PARTS)})")
    parser.add_argument("--requests", type=int, default=200, help="round_trips, cluster: requests per endpoint")
    parser.add_argument(
        "--workers", default="2,4", help="http: WEB_CONCURRENCY values (default 2,4); cluster: the first"
    )
    parser.add_argument("--scaling-workers", type=int, default=4, help="scaling: gunicorn workers (default 4)")
    parser.add_argument("--seconds", type=int, default=6, help="measured seconds per load scenario (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--cards", type=int, default=100_000, help="scaling: cards in the big set (default 100,000)")
    parser.add_argument("--txs", type=int, default=10_000, help="scaling: transactions on one card (default 10,000)")
    parser.add_argument("--no-access-log", action="store_true", help="http: gunicorn access log off")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment for the app")
    parser.add_argument(
        "--wait-quiet", type=float, default=0, help="first wait up to N s for other processes to use < 0.3 cores"
    )
    args = parser.parse_args()
    # Defaults the parts expect but run_all does not expose.
    args.debits, args.no_hot, args.batch, args.backends = 2000, False, 1000, "single,cluster"
    http_args = argparse.Namespace(**{**vars(args), "cards": 1000})
    scaling_args = argparse.Namespace(**{**vars(args), "workers": args.scaling_workers, "warmup": 1})
    first_workers = int(str(args.workers).split(",")[0])
    cluster_args = argparse.Namespace(**{**vars(args), "workers": first_workers, "cards": 1000, "warmup": 1})
    keyspace_args = argparse.Namespace(cards=1000, other_keys=keyspace.QUICK_SIZES, quick=True, due=0.1)
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    started = time.monotonic()
    summary = []
    for name in args.only.split(","):
        part = PARTS[name]
        part_args = {"http": http_args, "scaling": scaling_args, "cluster": cluster_args, "keyspace": keyspace_args}
        part_args = part_args.get(name, args)
        summary += [f"[{name}] {line}" for line in part.run(part_args)]
        say("")
    say("## Summary")
    say(machine_note())
    say(f"total {time.monotonic() - started:.0f} s")
    say("\n".join(summary))


if __name__ == "__main__":
    main()
