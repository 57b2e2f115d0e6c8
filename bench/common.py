"""What every benchmark shares: a private redis-server, gunicorn, wrk, seeding and tables.

Everything here binds to 127.0.0.1 only, on ports picked free by the kernel, and
every process started is stopped again (the context managers and an atexit
guard see to it). The machine's shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from giftcard_provider.config import Settings  # noqa: E402
from giftcard_provider.connection import connect  # noqa: E402
from giftcard_provider.money import Amount  # noqa: E402
from giftcard_provider.store import LedgerStore  # noqa: E402
from tests.redis_server import LocalCluster, free_port  # noqa: E402
from tests.redis_server import RedisServer as _TestRedisServer  # noqa: E402

BENCH = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH / "wrk" / "requests.lua"
APP_KEY, APP_TOKEN = "bench-app-key", "bench-app-token-0123456789abcdef"  # production wants 16+ characters
AUTH = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
CODE_HASH_SECRET = "bench-code-hash-secret-0123456789abcdef"  # 32+ characters
TICKS = os.sysconf("SC_CLK_TCK")

_running: list = []  # every process we started and have not stopped yet


@atexit.register
def _stop_leftovers() -> None:
    for proc in reversed(_running):
        proc.close()


def say(*parts) -> None:
    print(*parts, flush=True)


# -- redis-server ---------------------------------------------------------------


class RedisServer(_TestRedisServer):
    """tests/redis_server.RedisServer (a private redis-server on a free loopback port, in its own temp
    dir, no persistence unless asked), as the benchmarks use it: AOF (if asked) fsynced every second
    like a hosted Redis rather than on every write, stopped at exit if still running, CPU time read
    from /proc, and a context manager."""

    def __init__(self, *extra_args: str, appendonly: bool = False, port: int | None = None):
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not on PATH: apt-get install -y redis-server")
        # Later arguments win: everysec replaces the tests' appendfsync always.
        super().__init__("--appendfsync", "everysec", *extra_args, appendonly=appendonly, port=port)

    def start(self) -> RedisServer:
        _running.append(self)  # first, so that a start that fails is cleaned up too
        return super().start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_connect_timeout=1)

    def cpu_ticks(self) -> int:
        return _cpu_ticks(self.process.pid) if self.process else 0

    def close(self) -> None:
        if self in _running:
            _running.remove(self)
        super().close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class Cluster(LocalCluster):
    """tests/redis_server.LocalCluster (primaries on free loopback ports, no replicas by default) as the
    benchmarks use it: stopped at exit if still running, CPU time of all its nodes, a context manager."""

    def __init__(self, primaries: int = 3, replicas: int = 0):
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise SystemExit("redis-server and redis-cli are not on PATH: apt-get install -y redis-server")
        super().__init__(primaries=primaries, replicas=replicas)

    def start(self) -> Cluster:
        _running.append(self)
        return super().start()

    def cpu_ticks(self) -> int:
        return sum(_cpu_ticks(n.process.pid) for n in self.nodes if n.process)

    def close(self) -> None:
        if self in _running:
            _running.remove(self)
        super().close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


# -- the app's settings and store, as the gunicorn workers see them -----------------


def app_env(redis_url: str, cluster: bool = False) -> dict[str, str]:
    """The app's production environment; with `cluster`, REDIS_URL is a startup node of a Redis Cluster."""
    return {
        **os.environ,
        "APP_ENV": "production",
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": "1" if cluster else "0",
        "PROVIDER_API_APP_KEY": APP_KEY,
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "CODE_HASH_SECRET": CODE_HASH_SECRET,
        "PYTHONPATH": str(ROOT),
    }


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """--env NAME=VALUE options: extra environment for the app under test (e.g. LOG_LEVEL=WARNING)."""
    env = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def settings_for(redis_url: str, cluster: bool = False) -> Settings:
    return Settings.from_env(app_env(redis_url, cluster))


def ledger_for(redis_url: str, cluster: bool = False) -> LedgerStore:
    """The same LedgerStore the app builds (a RedisCluster client with `cluster`), for seeding at Python
    speed (no HTTP)."""
    # Seeding sends big pipelines: the app's 0.5 s socket timeout is for requests, not for bulk loads.
    settings = dataclasses.replace(settings_for(redis_url, cluster), redis_socket_timeout=30)
    store = LedgerStore(connect(settings), settings)
    store.load_library()
    return store


def card_args(**overrides) -> dict:
    return {
        "relation_name": "gift",
        "caption": "Bench card",
        "profile_id": "shopper@example.com",
        "currency": "USD",
        "restricted_to_owner": False,
        "multiple_redemptions": True,
        "multiple_credits": True,
        "emission_ms": None,
        "expiring_ms": None,
        **overrides,
    }


@dataclass
class SeededCard:
    id: str
    code: str
    token: str
    debits: list[str] = field(default_factory=list)


def seed_cards(store: LedgerStore, count: int, balance: str = "100000", debits_each: int = 0, debit: str = "1000"):
    """Cards created and credited through LedgerStore (the functions the API calls), optionally with held Debits."""
    cards = []
    for i in range(count):
        card, code = store.create_card(**card_args(profile_id=f"shopper-{i}@example.com"))
        seeded = SeededCard(card.id, code, card.token)
        credit(store, card.id, balance, f"seed-credit-{card.id}")
        for d in range(debits_each):
            _, tx, _ = store.authorize(
                card.id,
                operation="Debit",
                amount=Amount.from_decimal(Decimal(debit)),
                request_id=f"seed-debit-{d}",
                token=seeded.token,
            )
            seeded.debits.append(tx)
        cards.append(seeded)
    return cards


def credit(store: LedgerStore, card_id: str, value: str, request_id: str) -> str:
    _, tx, _ = store.authorize(
        card_id,
        operation="Credit",
        amount=Amount.from_decimal(Decimal(value)),
        request_id=request_id,
        token="",
    )
    return tx


# -- gunicorn -----------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Gunicorn:
    """`gunicorn -c bench/gunicorn_conf.py -w N -b 127.0.0.1:PORT APP` with the app's production environment.

    bench/gunicorn_conf.py is the project's gunicorn.conf.py (as the Procfile deploys it), with the
    access log optional; the access log goes to a file, like stdout on a platform's log router.
    """

    def __init__(
        self,
        app: str,
        workers: int,
        redis_url: str,
        ready_path: str,
        access_log: bool = True,
        env: dict | None = None,
        conf: str = "gunicorn_conf.py",
        cluster: bool = False,
    ):
        self.app, self.workers, self.ready_path, self.conf = app, workers, ready_path, BENCH / conf
        self.port = free_port()
        self.env = {**app_env(redis_url, cluster), "BENCH_ACCESS_LOG": "1" if access_log else "0", **(env or {})}
        self.log = Path(tempfile.mkstemp(prefix="gc-bench-gunicorn-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self) -> Gunicorn:
        args = [sys.executable, "-m", "gunicorn", "-c", str(self.conf)]
        args += ["-w", str(self.workers), "-b", f"127.0.0.1:{self.port}", self.app]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _running.append(self)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2) as r:
                    if r.status == 200 and len(self.worker_pids()) >= self.workers:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        return _children(self.process.pid) if self.process else []

    def cpu_ticks(self) -> int:
        return _cpu_ticks(self.process.pid) + sum(_cpu_ticks(p) for p in self.worker_pids())

    def stop(self) -> None:
        if self in _running:
            _running.remove(self)
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.unlink(missing_ok=True)

    close = stop

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- wrk ----------------------------------------------------------------------------


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed. On Debian/Ubuntu: apt-get install -y wrk")
    return path


@dataclass(frozen=True)
class Request:
    """One request for wrk; "{rid}" in the body becomes a requestId unique to each request sent."""

    method: str
    path: str
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        headers = {**AUTH, "Host": "127.0.0.1", **dict(self.headers)}
        if self.body:
            headers["Content-Type"] = "application/json"
        packed = "\x1f".join(f"{k}: {v}" for k, v in headers.items())
        assert "\t" not in self.body and "\n" not in self.body
        return f"{self.method}\t{self.path}\t{packed}\t{self.body}"


def json_body(**fields) -> str:
    return json.dumps(fields, separators=(",", ":")).replace('"__RID__"', '"{rid}"')


@dataclass
class LoadResult:
    label: str
    requests: int
    seconds: float
    errors: dict[str, int]
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    connections: int
    web_cpu_ms: float  # gunicorn (master + workers) CPU time per request, ms
    redis_cpu_us: float  # redis-server CPU time per request, us
    wrk_cores: float  # cores the load generator (and this script) kept busy
    other_cores: float  # cores busy with processes that are not part of this run (other people's tests)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Servers:
    """The processes under test, whose CPU time is accounted per request."""

    web: tuple  # Gunicorn instances
    redis: RedisServer | Cluster

    def ticks(self) -> tuple[int, int]:
        return sum(g.cpu_ticks() for g in self.web), self.redis.cpu_ticks()


def _machine_busy_ticks() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return user + nice + system + irq + softirq + steal


def run_wrk(
    port: int,
    requests: list[Request],
    *,
    label: str,
    servers: Servers,
    connections: int = 32,
    threads: int = 2,
    seconds: int = 8,
    warmup: int = 2,
) -> LoadResult:
    """Closed-loop load with wrk; bounded by time (wrk -d) and by a subprocess timeout.

    Besides wrk's figures, CPU time is read from /proc around the measured run: the
    servers' per request, wrk's (this process's waited-for children), and whatever the
    machine spent outside all of them (other people's load).
    """
    wrk = wrk_binary()
    with tempfile.NamedTemporaryFile("w", prefix="gc-bench-requests-", suffix=".tsv", delete=False) as f:
        f.write("\n".join(r.line() for r in requests) + "\n")
        path = f.name
    try:
        if warmup > 0:
            _wrk(wrk, port, path, connections, threads, warmup)
        busy0, (web0, redis0), own0 = _machine_busy_ticks(), servers.ticks(), _own_ticks()
        started = time.monotonic()
        out = _wrk(wrk, port, path, connections, threads, seconds)
        wall = time.monotonic() - started
        busy1, (web1, redis1), own1 = _machine_busy_ticks(), servers.ticks(), _own_ticks()
    finally:
        os.unlink(path)
    data = json.loads(next(line[6:] for line in out.splitlines() if line.startswith("BENCH ")))
    n = max(1, data["requests"])
    errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    ours = (web1 - web0) + (redis1 - redis0) + (own1 - own0)
    return LoadResult(
        label=label,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        mean_ms=data["mean_us"] / 1000,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        connections=connections,
        web_cpu_ms=(web1 - web0) / TICKS / n * 1e3,
        redis_cpu_us=(redis1 - redis0) / TICKS / n * 1e6,
        wrk_cores=(own1 - own0) / TICKS / wall,
        other_cores=max(0.0, ((busy1 - busy0) - ours) / TICKS / wall),
    )


def _own_ticks() -> int:
    """This process plus its waited-for children (the wrk runs)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * TICKS)


def _wrk(wrk: str, port: int, path: str, connections: int, threads: int, seconds: int) -> str:
    args = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    args += ["-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}", "--", path, uuid.uuid4().hex[:12]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0 or "BENCH " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return done.stdout


# -- reporting ----------------------------------------------------------------------


def busy_cores(window: float = 5.0) -> float:
    """Cores the whole machine kept busy over the next `window` seconds (from /proc/stat)."""
    before = _machine_busy_ticks()
    time.sleep(window)
    return (_machine_busy_ticks() - before) / TICKS / window


def wait_for_quiet(limit: float, threshold: float = 0.3) -> None:
    """Wait (at most `limit` seconds) until other processes keep fewer than `threshold` cores busy."""
    deadline = time.monotonic() + limit
    busy = busy_cores()
    while busy >= threshold and time.monotonic() < deadline:
        busy = busy_cores()
    say(f"machine busy before starting: {busy:.2f} cores (waited for < {threshold:g}, at most {limit:g} s)")


def machine_note() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, redis-server {redis_version[2:]}, "
        f"load average {load}. The load generator (wrk), gunicorn and redis-server share these cores, and "
        "other engineers may be running tests on the same machine: figures are indicative, ratios are what count."
    )


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def load_row(r: LoadResult, baseline_rps: float | None = None) -> list:
    row = [r.label, f"{r.rps:,.0f}"]
    if baseline_rps is not None:
        row.append(f"{100 * r.rps / baseline_rps:.0f}%")
    row += [f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.0f}", r.requests]
    row += [", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"]
    row += [f"{r.web_cpu_ms:.2f}", f"{r.redis_cpu_us:.0f}", f"{r.wrk_cores:.2f}", f"{r.other_cores:.2f}"]
    return row


LOAD_HEADERS = [
    "scenario",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "requests",
    "errors",
    "gunicorn CPU ms/req",
    "redis CPU us/req",
    "wrk cores",
    "other load (cores)",
]


def load_headers(with_ratio: bool) -> list[str]:
    return LOAD_HEADERS[:2] + (["vs baseline"] if with_ratio else []) + LOAD_HEADERS[2:]
