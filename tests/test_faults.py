"""Faults injected into real processes: the ledger never half-applies, never answers 500, never hangs.

Every test starts its own redis-server (tests/redis_server.py) so it can kill,
flush, pause or starve it without touching any other test. The app is built
with the production Redis client (connection.connect: 0.5 s socket timeouts, one
retry), so what is measured is what a deployment does.

* Redis SIGKILLed under load (AOF, appendfsync always): every request answers
  fast (200 or a JSON 503), and after a restart every 200 is in the ledger.
* SCRIPT FLUSH / FUNCTION FLUSH / FUNCTION DELETE: the next call reloads the library.
* A client that times out after its Debit reached Redis, then retries: one effect.
* A gunicorn worker SIGKILLed during a burst: every 200 is in the ledger.
* Redis out of memory: writes answer 503 and change nothing; reads still work.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app, jsonio
from giftcard_provider.keys import Keys
from giftcard_provider.ledger_library import RELEASE
from giftcard_provider.records import Operation, Transaction
from giftcard_provider.verify import verify_all

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body
from .redis_server import RedisServer, free_port
from .snapshot import snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HEADERS = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
KEYS = Keys("gc")


def private_server(*args, **options):
    def fixture():
        server = RedisServer(*args, **options).start()
        yield server
        server.close()

    return pytest.fixture(fixture)


server = private_server()
aof_server = private_server(appendonly=True)  # RedisServer runs it with appendfsync always
debug_server = private_server("--enable-debug-command", "local")  # DEBUG SLEEP


def hub_on(server: RedisServer, **overrides) -> Hub:
    """The app on `server` with the production client (short timeouts), as a Hub-like HTTP client.

    Not TESTING: an unexpected exception becomes a 500 answer, which the tests count, instead of
    escaping into the test.
    """
    app = create_app(make_settings(redis_url=server.url, **overrides))
    return Hub(app.test_client(), HEADERS)


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def assert_ledger_holds(client: redis.Redis, card_id: str, rid: str, tx_id: str, operation: str, minor: int):
    """The answered transaction is in the ledger, with its value, under its requestId."""
    card = client.hgetall(KEYS.card(card_id))
    tx = Transaction.unpack(tx_id, card[f"t:{tx_id}"], card[f"q:{tx_id}"])
    assert (tx.operation, tx.value, tx.request_id) == (operation, minor, rid), tx
    assert card[f"r:{rid}"].startswith(f"{tx_id}|"), rid


def transaction_count(client: redis.Redis, card_id: str) -> int:
    return int(client.hget(KEYS.card(card_id), "ntx") or 0)


def operation_records(client: redis.Redis, card_id: str, tx_id: str) -> list[Operation]:
    """A transaction's settlements and cancellations, oldest first, as stored."""
    card = client.hgetall(KEYS.card(card_id))
    tx = Transaction.unpack(tx_id, card[f"t:{tx_id}"])
    return [Operation.unpack(card[f"o:{tx_id}:{k}"]) for k in range(1, tx.records + 1)]


def assert_503(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert body(response)["code"] == "store_unavailable"
    assert response.headers["Retry-After"] == "1"


# -- Redis killed mid-load -------------------------------------------------------


def test_redis_sigkill_mid_load_loses_no_answered_write(aof_server):
    server = aof_server
    hub = hub_on(server)
    cards = [hub.funded_card(Decimal("1000"), currencyCode="BRL")["id"] for _ in range(3)]
    results, stop = [], threading.Event()

    def load(worker: int) -> None:
        client = Hub(hub.client.application.test_client(), HEADERS)
        for i in range(100_000):
            if stop.is_set():
                return
            card, operation = cards[i % len(cards)], "Credit" if i % 4 == 0 else "Debit"
            value, rid = Decimal(i % 7 + 1) / 100, f"w{worker}-{i}"
            started = time.monotonic()
            response = client.transaction(card, operation, value, rid)
            results.append((card, operation, value, rid, response, time.monotonic() - started))

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 40, "first answers")
        server.stop(kill=True)  # SIGKILL: no shutdown, no last fsync
        killed = len(results)
        wait_for(lambda: len(results) >= killed + 20, "answers while Redis is down")
        server.start()  # same port, same directory: the AOF is replayed
        restarted = len(results)
        wait_for(lambda: sum(r[4].status_code == 200 for r in results[restarted:]) >= 20, "answers after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads), "a request hung"

    statuses = [r[4].status_code for r in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) >= 20 and statuses.count(200) >= 60
    slowest = max(r[5] for r in results)
    assert slowest < 1.5, f"slowest answer took {slowest:.2f} s"
    for *_, response, _ in results:
        if response.status_code == 503:
            assert_503(response)

    client = admin(server)
    for card, operation, value, rid, response, _ in results:
        if response.status_code == 200:
            assert_ledger_holds(client, card, rid, body(response)["id"], operation, int(value * 100))
    # A 503 may have come after its change was committed (the reply was lost with the server):
    # the Hub retries with the same requestId, and gets that change back, never a second one.
    for card, operation, value, rid, response, _ in results:
        if response.status_code == 503:
            retry = hub.transaction(card, operation, value, rid)
            assert retry.status_code == 200, retry.get_data(as_text=True)
            assert_ledger_holds(client, card, rid, body(retry)["id"], operation, int(value * 100))
    for card in cards:  # one transaction per requestId, plus the funding Credit
        assert transaction_count(client, card) == 1 + sum(r[0] == card for r in results)
    assert verify_all(client, KEYS) == (len(cards), [])


def wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- lost script cache -----------------------------------------------------------


@pytest.mark.parametrize("flush", [["SCRIPT", "FLUSH"], ["FUNCTION", "FLUSH"], ["FUNCTION", "DELETE", RELEASE.name]])
def test_the_library_is_reloaded_after_a_flush(server, flush):
    hub = hub_on(server)
    card = hub.funded_card(Decimal("50"), currencyCode="BRL")["id"]
    client = admin(server)
    steps = [
        lambda: hub.transaction(card, "Debit", Decimal("10"), "d-1"),  # a write (FCALL)
        lambda: hub.get(f"/giftcards/{card}"),  # a read (FCALL_RO)
        lambda: hub.get("/ready"),  # the readiness probe runs a function, not a PING
        lambda: hub.transaction(card, "Credit", Decimal("5"), "c-1"),
    ]
    for step in steps:
        client.execute_command(*flush)
        response = step()
        assert response.status_code == 200, response.get_data(as_text=True)
    assert hub.balance(card) == Decimal("45")
    assert verify_all(client, KEYS) == (1, [])


# -- client timeout, then retry ---------------------------------------------------


def redis_asleep(server: RedisServer, seconds: float) -> socket.socket:
    """Block the server with DEBUG SLEEP and return once it is blocked (the reply comes on the socket).

    Deterministic order: the sleep is on the wire first, and we return only after a PING on
    another connection went unanswered, so every command sent afterwards waits behind it.
    """
    blocker = socket.create_connection(("127.0.0.1", server.port))
    arg = str(seconds).encode()
    blocker.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$%d\r\n%s\r\n" % (len(arg), arg))
    probe = redis.Redis(port=server.port, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    try:
        for _ in range(100):
            try:
                probe.ping()
            except redis.TimeoutError:
                return blocker
            time.sleep(0.01)
        raise AssertionError("DEBUG SLEEP did not block the server")
    finally:
        probe.close()


def woken(blocker: socket.socket) -> None:
    blocker.settimeout(10)
    assert blocker.recv(64) == b"+OK\r\n"
    blocker.close()


@pytest.mark.parametrize("operation", ["Debit", "settlement"])
def test_a_request_that_timed_out_in_flight_and_is_retried_has_one_effect(debug_server, operation):
    """The worst kind of timeout: the command reached Redis, the client gave up, Redis ran it later.

    The server sleeps (DEBUG SLEEP 1.5); the request's FCALL waits behind the sleep; the store's
    socket timeout (0.25 s, one retry that resends the same FCALL) expires and the Hub gets a 503.
    When Redis wakes it runs both queued FCALLs: the first applies the change, the second is an
    idempotent repeat. The Hub's retry with the same requestId then gets the same id back, 200,
    and the card moved once.
    """
    server = debug_server
    hub = hub_on(server, redis_socket_timeout=0.25)
    client = admin(server)
    card = hub.funded_card(Decimal("100"), currencyCode="BRL")["id"]
    held = hub.debit(card, Decimal("30"), "hold-1")
    if operation == "Debit":
        send = lambda: hub.transaction(card, "Debit", Decimal("10"), "late-1")  # noqa: E731
        expected_balance = Decimal("60")

        def applied_ids():  # the card's transactions, oldest first
            return [client.hget(KEYS.card(card), f"x:{n}") for n in range(1, transaction_count(client, card) + 1)]
    else:
        send = lambda: hub.settle(card, held, Decimal("10"), "late-1")  # noqa: E731
        expected_balance = Decimal("70")

        def applied_ids():  # the Debit's settlements and cancellations, oldest first
            return [record.oid for record in operation_records(client, card, held)]

    before = len(applied_ids())

    blocker = redis_asleep(server, 1.5)
    started = time.monotonic()
    assert_503(send())
    assert time.monotonic() - started < 1.0, "the 503 came only after Redis woke up"
    woken(blocker)

    assert len(applied_ids()) == before + 1, "the timed-out request was applied after all (as it should)"
    applied = applied_ids()[-1]
    retry = send()
    assert retry.status_code == 200, retry.get_data(as_text=True)
    assert body(retry).get("id", body(retry).get("oid")) == applied
    assert len(applied_ids()) == before + 1
    assert hub.balance(card) == expected_balance
    assert verify_all(client, KEYS) == (1, [])


# -- gunicorn worker killed -------------------------------------------------------


def children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def call(port: int, method: str, path: str, payload=None) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=json.dumps(payload) if payload is not None else None, headers=HEADERS)
        response = connection.getresponse()
        return response.status, jsonio.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.fixture
def gunicorn(server, tmp_path):
    """gunicorn with the repo's config (as the Procfile runs it), 2 workers, on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "development",  # the test's short secrets would not do for production
        "REDIS_URL": server.url,
        "PROVIDER_API_APP_KEY": APP_KEY,
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "CODE_HASH_SECRET": "fault-test-secret",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    command = [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py"]
    command += ["-w", "2", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    with open(tmp_path / "gunicorn.log", "wb") as log:
        master = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(children(master.pid)) == 2 and probe(port) == 200, "gunicorn to serve", timeout=30)
        yield master, port
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(15)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait(5)


def probe(port: int) -> int | None:
    try:
        return call(port, "GET", "/health")[0]
    except OSError:
        return None


def test_a_worker_killed_mid_burst_loses_no_answered_write(server, gunicorn):
    master, port = gunicorn
    cards, tokens = [], {}
    for _ in range(2):
        status, card = call(port, "POST", "/giftcards", {"relationName": "g", "caption": "c", "profileId": "p-1"})
        assert status == 200, card
        status, _ = call(port, "POST", f"/giftcards/{card['id']}/transactions", credit(Decimal("500"), "fund"))
        assert status == 200
        cards.append(card["id"])
        tokens[card["id"]] = card["redemptionToken"]
    results = []

    def burst(worker: int) -> None:
        for i in range(40):
            card, value, rid = cards[i % 2], Decimal(i % 5 + 1), f"b{worker}-{i}"
            try:
                status, answer = call(port, "POST", f"/giftcards/{card}/transactions", debit(value, rid, tokens[card]))
            except (OSError, http.client.HTTPException) as exc:  # the worker died under this request
                status, answer = None, repr(exc)
            results.append((card, value, rid, status, answer))

    workers_before = children(master.pid)
    threads = [threading.Thread(target=burst, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(results) >= 40, "the burst to get going")
    victim = min(workers_before)
    os.kill(victim, signal.SIGKILL)  # a child of the gunicorn this test started
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request hung"

    statuses = [r[3] for r in results]
    assert set(statuses) <= {200, None}, sorted(set(statuses), key=str)
    assert statuses.count(200) >= 200
    client = admin(server)
    for card, value, rid, status, answer in results:
        if status == 200:
            assert_ledger_holds(client, card, rid, answer["id"], "Debit", int(value * 100))
    # A request cut off with its worker is retried with the same requestId: one transaction each.
    for card, value, rid, status, _ in results:
        if status is None:
            status, answer = call(port, "POST", f"/giftcards/{card}/transactions", debit(value, rid, tokens[card]))
            assert status == 200, answer
    for card in cards:
        assert transaction_count(client, card) == 1 + sum(r[0] == card for r in results)
    assert verify_all(client, KEYS) == (2, [])
    wait_for(lambda: len(children(master.pid) - {victim}) == 2, "gunicorn to replace the worker")
    assert probe(port) == 200


def pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def credit(value: Decimal, rid: str) -> dict:
    return {"operation": "Credit", "value": int(value), "requestId": rid}


def debit(value: Decimal, rid: str, token: str) -> dict:
    return {"operation": "Debit", "value": int(value), "requestId": rid, "redemptionToken": token}


# -- out of memory ----------------------------------------------------------------


def test_out_of_memory_refuses_writes_whole_and_keeps_reads(server):
    hub = hub_on(server)
    client = admin(server)
    card = hub.funded_card(Decimal("100"), currencyCode="BRL", profileId="ana@example.com")
    card_id, code = card["id"], card["redemptionCode"]
    tx = hub.debit(card_id, Decimal("10"), "hold-1")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    before = snapshot(client)

    writes = {
        "create": lambda: hub.post("/giftcards", {"relationName": "g", "caption": "c", "profileId": "p"}),
        "credit": lambda: hub.transaction(card_id, "Credit", Decimal("5"), "oom-1"),
        "debit": lambda: hub.transaction(card_id, "Debit", Decimal("5"), "oom-2"),
        "settle": lambda: hub.settle(card_id, tx, Decimal("5"), "oom-3"),
        "cancel": lambda: hub.cancel(card_id, tx, Decimal("5"), "oom-4"),
        # A failed code look-up must be counted by the throttle (a write): it fails closed.
        "search by unknown code": lambda: hub.search("AAAA-BBBB-CCCC-DDDD-EEEE"),
    }
    for name, write in writes.items():
        response = write()
        assert response.status_code == 503, (name, response.get_data(as_text=True))
        assert_503(response)
    assert snapshot(client) == before, "a refused write changed Redis"

    base = f"/giftcards/{card_id}/transactions/{tx}"
    reads = [f"/giftcards/{card_id}", f"/giftcards/{card_id}/transactions", base, f"{base}/authorization"]
    reads += [f"{base}/settlements", f"{base}/cancellations", "/ready"]
    for path in reads:
        response = hub.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True))
    assert hub.balance(card_id) == 90
    found = hub.search(code, client={"id": "x", "email": "ana@example.com"})
    assert found.status_code == 200 and [c["id"] for c in body(found)] == [card_id]
    owned = hub.search(None, client={"id": "x", "email": "ana@example.com"})
    assert owned.status_code == 200 and [c["id"] for c in body(owned)] == [card_id]
    assert snapshot(client) == before

    # Memory back: the refused requestIds were not consumed, the same requests now succeed.
    client.config_set("maxmemory", 0)
    assert writes["debit"]().status_code == 200
    assert writes["settle"]().status_code == 200
    assert hub.balance(card_id) == 85
    assert verify_all(client, KEYS)[1] == []


def test_redis_refuses_a_function_without_no_writes_under_oom_before_it_runs(server):
    """The assumption the OOM answer rests on: Redis refuses by the function's flags, before running it.

    gc_expire_holds on a card with no expired hold would write nothing, yet it is refused;
    the read-only functions (flag no-writes) still run; no ledger function may run under OOM.
    """
    hub = hub_on(server)
    client = admin(server)
    card_id = hub.funded_card(Decimal("10"), currencyCode="BRL")["id"]
    (library,) = client.function_list(RELEASE.name)
    functions = [pairs(f) for f in pairs(library)["functions"]]
    flags = {f["name"]: set(f["flags"]) for f in functions}
    read_only = {
        "gc_read_card",
        "gc_read_transactions",
        "gc_read_transaction",
        "gc_read_ledger",
        "gc_read_bucket",
        "gc_ping",
    }
    assert {name for name, f in flags.items() if "no-writes" in f} == {RELEASE.function(n) for n in read_only}
    assert not any("allow-oom" in f for f in flags.values())

    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    before = snapshot(client)
    keys = KEYS.card_keys(card_id)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.fcall(RELEASE.function("gc_expire_holds"), len(keys), *keys, "100")
    assert client.fcall_ro(RELEASE.function("gc_read_card"), 1, KEYS.card(card_id))[0] == "ok"
    assert client.fcall_ro(RELEASE.function("gc_ping"), 0) == RELEASE.digest
    assert snapshot(client) == before
    client.config_set("maxmemory", 0)
    assert client.fcall(RELEASE.function("gc_expire_holds"), len(keys), *keys, "100") == ["ok", 0]
