"""Webhooks: every event of the log delivered to each endpoint, signed, in order per card, at least once.

A real HTTP receiver (a threaded http.server on loopback) answers as each test scripts it: 2xx, a
500, a 400, a 410, a wait past the worker's timeout, a connection closed without an answer, or a
request held open while the worker is killed. The worker runs in a thread for most tests, and as
the Procfile's process (a subprocess, SIGKILLed and restarted) where a death or a second worker is
the point. Redis is a real server; the delivery path runs once on the 3-primary cluster too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from giftcard_provider import create_app
from giftcard_provider.errors import InvalidRequest, NotFound
from giftcard_provider.keys import Keys, buckets
from giftcard_provider.money import exponent_of
from giftcard_provider.records import Endpoint, LaneCursor, LogBounds, stream_order
from giftcard_provider.webhook_worker import Worker, backoff
from giftcard_provider.webhooks import Sender, Signer, Webhooks, check_url

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
# Short retries, but an attempt's deadline long enough that a loaded machine never times out a
# planned "ok" (the exact-count asserts would then see a duplicate); a planned "timeout" waits past it.
FAST = dict(
    webhook_timeout_seconds=3.0, webhook_retry_base_seconds=0.05, webhook_retry_max_seconds=0.2, webhook_max_attempts=5
)


# -- the receiver --------------------------------------------------------------------


class Receiver:
    """Records every POST (webhook-id, headers, body); answers per a plan: event id -> the answers
    of its successive attempts ("ok", "500", "400", "410", "timeout", "close", "hold"); then "ok"."""

    def __init__(self, timeout: float = FAST["webhook_timeout_seconds"]):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.plan: dict[str, list[str]] = {}
        self.every: str | None = None  # an answer for every request, whatever the plan
        self.held = threading.Event()  # set when a "hold" request arrived
        self.release = threading.Event()
        self.timeout = timeout
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self):
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    self.close_connection = True
                    return
                message_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.requests.append((message_id, dict(self.headers), body))
                    planned = receiver.plan.get(message_id)
                    answer = receiver.every or (planned.pop(0) if planned else "ok")
                if answer == "close":
                    self.close_connection = True  # no answer at all: the worker sees the connection drop
                    return
                if answer == "timeout":
                    time.sleep(receiver.timeout + 0.5)
                if answer == "hold":
                    receiver.held.set()
                    receiver.release.wait(30)
                status = {"ok": 204, "500": 500, "400": 400, "410": 410}.get(answer, 204)
                text = b"" if status == 204 else f"planned {status}".encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:
                    pass  # the worker gave up (timeout) or died meanwhile

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.requests]

    def documents(self) -> list[dict]:
        with self.lock:
            return [json.loads(r[2], parse_float=Decimal) for r in self.requests]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# -- the service under test ----------------------------------------------------------------


@pytest.fixture(params=["redis"])
def redis_client(request):
    return request.getfixturevalue("real_redis" if request.param == "redis" else "cluster_redis")


def make_app(client, **overrides):
    app = create_app(make_settings(**{**FAST, **overrides}), redis_client=client)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(redis_client):
    return make_app(redis_client)


def store_of(app):
    return app.extensions["giftcard_provider"]["store"]


def cli(app, *args):
    return app.test_cli_runner().invoke(args=["cards", "webhooks", *args])


def add_endpoint(app, url, *args) -> dict:
    result = cli(app, "add", url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def log_events(app) -> list:
    return list(store_of(app).all_events())


def run_worker(app, done, timeout=20.0, **options) -> Worker:
    """Run a worker in a thread until done() (checked between cycles) or the timeout; then stop it."""
    worker = Worker(store_of(app), **{"threads": 4, "lease_seconds": 2.0, "poll_seconds": 0.02, **options})
    deadline = time.monotonic() + timeout
    thread = threading.Thread(target=worker.run, kwargs={"until": lambda: done() or time.monotonic() > deadline})
    thread.start()
    thread.join(timeout + 10)
    assert not thread.is_alive()
    assert done(), "the worker did not finish in time"
    return worker


def pending(app, endpoint_id) -> int:
    hooks = Webhooks(store_of(app))
    return hooks.pending([hooks.endpoint(endpoint_id)])[endpoint_id]


def card_life(hub: Hub) -> list[str]:
    """Three cards with a few movements each (credit, debit, settle, cancel). Returns their ids."""
    ids = []
    for currency, load, hold, settle in (("BRL", "100.10", "40.05", "1"), ("JPY", "5000", "2500", "1"),
                                         ("KWD", "12.345", "6.001", "0.001")):  # fmt: skip
        card = hub.funded_card(Decimal(load), currencyCode=currency)["id"]
        tx = hub.debit(card, Decimal(hold))
        hub.settle(card, tx, Decimal(settle))
        hub.cancel(card, tx, Decimal("1"))
        ids.append(card)
    return ids


def check_deliveries(receiver: Receiver, events: list, secret: str) -> None:
    """Every event received, with a valid signature, its id as webhook-id, exact amounts; and per
    card, first receipts in seq order."""
    signer = Webhook(secret)
    first_seen: dict[str, int] = {}
    per_card = defaultdict(list)
    with receiver.lock:
        requests = list(receiver.requests)
    for message_id, headers, body in requests:
        signer.verify(body, headers, json_parse=False)  # raises unless signed with this secret
        document = json.loads(body, parse_float=Decimal)
        data = document["data"]
        assert data["id"] == message_id and document["type"] == f"giftcard.{data['type']}"
        exponent = exponent_of(data["currency"])
        for name in ("amount", "availableAfter", "heldAfter"):
            assert Decimal(data[name]) == Decimal(data[f"{name}Minor"]).scaleb(-exponent)
            assert isinstance(data[f"{name}Minor"], int)
        if message_id not in first_seen:
            first_seen[message_id] = data["seq"]
            per_card[data["cardId"]].append(data["seq"])
    assert set(first_seen) == {e.id for e in events}
    for card_id, seqs in per_card.items():
        assert seqs == sorted(seqs), f"card {card_id} received out of order: {seqs}"


# -- delivery --------------------------------------------------------------------------


@pytest.mark.parametrize("redis_client", ["redis", "cluster"], indirect=True)
def test_every_event_is_delivered_once_signed_in_order_with_exact_amounts(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    card_life(Hub(app.test_client(), HEADERS))
    events = log_events(app)
    assert len(events) >= 15
    assert pending(app, endpoint["id"]) == len(events)
    run_worker(app, lambda: len(receiver.ids()) >= len(events) and pending(app, endpoint["id"]) == 0)
    check_deliveries(receiver, events, endpoint["secret"])
    assert sorted(receiver.ids()) == sorted(e.id for e in events)  # no failure, so no duplicate
    _, headers, body = receiver.requests[0]
    Webhook(endpoint["secret"]).verify(body, headers)  # the library's own check, headers as received
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(body.replace(b'"seq":', b'"seq": '), headers)
    assert Webhooks(store_of(app)).stats(endpoint["id"]).delivered == len(events)


def test_failures_are_retried_with_the_same_id_until_the_receiver_recovers(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    card = hub.funded_card(Decimal("50"))["id"]
    hub.debit(card, Decimal("10"))
    events = log_events(app)  # created, credit, authorize: one card, one lane
    troubled = events[1].id
    receiver.plan[troubled] = ["500", "timeout", "close"]
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    check_deliveries(receiver, events, endpoint["secret"])
    ids = receiver.ids()
    assert ids.count(troubled) == 4  # three failures, then the success: always the same webhook-id
    assert [i for i in ids if i != troubled] == [events[0].id, events[2].id]  # the others once each
    assert ids.index(events[2].id) > max(i for i, m in enumerate(ids) if m == troubled)  # held back until then
    timestamps = [int(r[1]["webhook-timestamp"]) for r in receiver.requests if r[0] == troubled]
    assert timestamps == sorted(timestamps)  # each attempt signed anew at its own time
    stats = Webhooks(store_of(app)).stats(endpoint["id"])
    assert stats.failures == {"http_5xx": 1, "timeout": 1, "connection": 1}
    assert stats.delivered == 3 and stats.dead == 0


def test_an_attempt_ends_at_its_deadline_however_the_receiver_trickles():
    """WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt, not each network wait: a receiver sending
    its headers a line every 0.2 s (each read well inside the timeout) is cut off at 1 s."""

    class Trickle(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            try:
                self.wfile.write(b"HTTP/1.1 204 No Content\r\n")
                for _ in range(15):
                    self.wfile.flush()
                    time.sleep(0.2)
                    self.wfile.write(b"X-Slow: 1\r\n")
                self.wfile.write(b"Content-Length: 0\r\n\r\n")
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sender = Sender(1.0)
    try:
        attempt = sender.post(f"http://127.0.0.1:{server.server_port}/", "{}", {"Content-Type": "application/json"})
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
    assert (attempt.ok, attempt.kind, attempt.error) == (False, "timeout", "no answer within 1 s")
    assert 0.9 <= attempt.seconds < 1.5  # not the 3 s the trickle takes


def test_backoff_doubles_with_jitter_up_to_the_cap():
    class Fixed:
        def __init__(self, value):
            self.value = value

        def uniform(self, low, high):
            return low + (high - low) * self.value

    assert [backoff(n, 5, 3600, Fixed(1.0)) for n in (1, 2, 3, 10, 11, 50)] == [5, 10, 20, 2560, 3600, 3600]
    assert [backoff(n, 5, 3600, Fixed(0.0)) for n in (1, 2, 11)] == [2.5, 5, 1800]


def test_a_failing_event_goes_to_the_dead_letters_after_n_attempts_and_blocks_nothing(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    card = hub.funded_card(Decimal("50"))["id"]
    hub.debit(card, Decimal("10"))
    other = hub.funded_card(Decimal("7"))["id"]
    events = log_events(app)
    poison = next(e for e in events if e.card_id == card and e.type == "credit")
    receiver.plan[poison.id] = ["400"] * 5
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    ids = receiver.ids()
    assert ids.count(poison.id) == 5  # WEBHOOK_MAX_ATTEMPTS (5 here), then given up
    assert {e.id for e in events} - {poison.id} <= set(ids)  # the card's later events and the other card's
    later = next(e for e in events if e.card_id == card and e.type == "authorize")
    assert ids.index(later.id) > max(i for i, m in enumerate(ids) if m == poison.id)  # in order after it
    assert other

    result = cli(app, "failures", endpoint["id"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["retrying"] == [] and report["deadLetterCount"] == 1
    [letter] = report["deadLetters"]
    assert (letter["event"], letter["type"], letter["attempts"]) == (poison.id, "credit", 5)
    assert letter["error"] == "HTTP 400: planned 400"
    text = cli(app, "failures", endpoint["id"]).output
    assert f"{poison.id}  credit" in text and "after 5 attempt(s): HTTP 400: planned 400" in text

    # The receiver is fixed: the operator replays the dead letter, which then leaves the list.
    result = cli(app, "replay", endpoint["id"], "--event", poison.id)
    assert result.exit_code == 0, result.output
    assert f"{poison.id}: delivered (HTTP 204" in result.output
    assert receiver.ids().count(poison.id) == 6
    _, headers, body = receiver.requests[-1]
    Webhook(endpoint["secret"]).verify(body, headers)  # signed by the command, with the endpoint's secret
    assert Webhooks(store_of(app)).dead_count(endpoint["id"]) == 0
    stats = Webhooks(store_of(app)).stats(endpoint["id"])
    assert (stats.dead, stats.failures) == (1, {"http_4xx": 5})


def test_replay_of_every_dead_letter_keeps_those_still_failing(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    hub.funded_card(Decimal("5"))
    events = log_events(app)
    receiver.every = "500"
    hooks = Webhooks(store_of(app))
    run_worker(app, lambda: hooks.dead_count(endpoint["id"]) == len(events))
    result = cli(app, "replay", endpoint["id"], "--failed")
    assert result.exit_code == 1 and "0 delivered, 2 failed" in result.output
    assert hooks.dead_count(endpoint["id"]) == 2
    receiver.every = None
    result = cli(app, "replay", endpoint["id"], "--failed")
    assert result.exit_code == 0 and "2 delivered, 0 failed" in result.output
    assert hooks.dead_count(endpoint["id"]) == 0


def test_410_gone_pauses_the_endpoint_and_keeps_the_event(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    Hub(app.test_client(), HEADERS).funded_card(Decimal("5"))
    events = log_events(app)
    receiver.plan[events[0].id] = ["410"]
    hooks = Webhooks(store_of(app))
    run_worker(app, lambda: hooks.endpoint(endpoint["id"]).paused)
    assert "410 Gone" in hooks.endpoint(endpoint["id"]).paused_reason
    assert receiver.ids() == [events[0].id] and pending(app, endpoint["id"]) == len(events)
    assert cli(app, "resume", endpoint["id"]).exit_code == 0
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids() == [events[0].id, *(e.id for e in events)]


def test_filters_pause_and_resume(app, receiver):
    credits = add_endpoint(app, receiver.url, "--types", "credit,settle")
    hooks = Webhooks(store_of(app))
    assert cli(app, "pause", credits["id"], "--reason", "receiver maintenance").exit_code == 0
    hub = Hub(app.test_client(), HEADERS)
    card = hub.funded_card(Decimal("30"))["id"]
    tx = hub.debit(card, Decimal("10"))
    hub.settle(card, tx, Decimal("10"))
    events = log_events(app)
    # 25 full cycles (until() is checked once before each): unpaused, the first two would deliver
    checks = iter(range(10**6))
    run_worker(app, lambda: next(checks) >= 25)
    time.sleep(0.2)
    assert receiver.ids() == [] and pending(app, credits["id"]) == len(events)
    listed = cli(app, "list").output
    assert "paused (receiver maintenance)" in listed and f"pending {len(events)}" in listed
    assert cli(app, "resume", credits["id"]).exit_code == 0
    run_worker(app, lambda: pending(app, credits["id"]) == 0)
    wanted = [e.id for e in events if e.type in ("credit", "settle")]
    assert receiver.ids() == wanted and len(wanted) == 2  # the rest filtered out, and passed
    assert hooks.stats(credits["id"]).delivered == 2


def test_replay_from_an_event_or_a_date_delivers_again_in_order(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    card = hub.funded_card(Decimal("30"))["id"]
    hub.debit(card, Decimal("10"))
    events = log_events(app)
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids() == [e.id for e in events]

    result = cli(app, "replay", endpoint["id"], "--from", events[1].id)
    assert result.exit_code == 0, result.output
    assert pending(app, endpoint["id"]) <= len(events)  # an upper bound until the lane catches up
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids() == [e.id for e in events] + [e.id for e in events[1:]]

    receiver.requests.clear()
    assert cli(app, "replay", endpoint["id"], "--from", "beginning").exit_code == 0
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids() == [e.id for e in events]

    receiver.requests.clear()
    later = hub.funded_card(Decimal("1"))["id"]
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    new = [e for e in log_events(app) if e.card_id == later]
    receiver.requests.clear()
    from schemas.common import iso_ms

    assert cli(app, "replay", endpoint["id"], "--from", iso_ms(new[0].at_ms)).exit_code == 0
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids() == [e.id for e in new]

    for bad in ("yesterday", "zz-1-1"):
        result = cli(app, "replay", endpoint["id"], "--from", bad)
        assert result.exit_code == 2 and "event id" in result.output
    result = cli(app, "replay", endpoint["id"], "--from", "1900-01-01")
    assert result.exit_code == 2 and "Invalid value for '--from': '1900-01-01' is before 1970" in result.output
    assert cli(app, "replay", endpoint["id"]).exit_code == 2
    result = cli(app, "replay", endpoint["id"], "--event", "1e-1-0")
    assert result.exit_code == 1 and "no event 1e-1-0" in result.output


def test_a_retry_noted_against_a_cursor_since_moved_holds_nothing_back(app, receiver):
    """The race replay_from closes with a MULTI (a lane's retry step landing between deleting the
    retries and moving the cursor), written by hand: a retry an hour away for the old head event,
    noted against the old cursor. The worker must ignore it and deliver the replayed lane now."""
    endpoint = add_endpoint(app, receiver.url)
    Hub(app.test_client(), HEADERS).funded_card(Decimal("30"))
    events = log_events(app)  # created, credit: one card, one lane
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    hooks = Webhooks(store_of(app))
    hooks.replay_from(endpoint["id"], "beginning")
    store = store_of(app)
    hour_later = store.now_ms() + 3_600_000
    stale = f"{events[-1].stream_id}|1|{hour_later}|{events[-2].stream_id}|HTTP 500: planned 500"
    store.redis.hset(Keys(store.keys.prefix).webhook(endpoint["id"])["retry"], events[0].bucket, stale)
    assert hooks.retrying(endpoint["id"]) == {}  # stale: not shown as retrying either
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0, timeout=5)
    assert receiver.ids() == [e.id for e in events] * 2


def test_events_trimmed_before_delivery_are_counted_and_logged(app, receiver, caplog):
    """Retention trimming events an endpoint has not had yet loses them for it: the lane passes over
    them once, with a warning and giftcard_webhook_events_trimmed_total, and goes on."""
    from giftcard_provider import events as event_log

    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    card = hub.funded_card(Decimal("30"))["id"]  # created, credit
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)  # the cursor's ordinal is known now
    assert cli(app, "pause", endpoint["id"]).exit_code == 0
    for _ in range(3):
        hub.debit(card, Decimal("1"))  # three authorize events, of which retention keeps the last
    store = store_of(app)
    assert event_log.trim(store.redis, store.keys, now_ms=store.now_ms(), max_age_days=0, max_per_bucket=1) == 4
    kept = log_events(app)
    assert [e.type for e in kept] == ["authorize"]
    assert cli(app, "resume", endpoint["id"]).exit_code == 0
    with caplog.at_level("WARNING", logger="giftcard_provider.webhooks"):
        run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    assert receiver.ids()[2:] == [kept[0].id]  # the two trimmed authorizations never came
    assert Webhooks(store).stats(endpoint["id"]).trimmed == 2
    assert [r.getMessage() for r in caplog.records if "trimmed" in r.getMessage()] == [
        f"webhook events trimmed before delivery: 2 event(s) of bucket {kept[0].bucket} never reach {endpoint['id']}"
    ]
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert f'giftcard_webhook_events_trimmed_total{{endpoint="{endpoint["id"]}"}} 2.0' in text


def test_a_new_endpoint_starts_now_unless_told_otherwise(app, receiver):
    hub = Hub(app.test_client(), HEADERS)
    hub.funded_card(Decimal("3"))
    before = log_events(app)
    now = add_endpoint(app, receiver.url)
    everything = add_endpoint(app, receiver.url, "--start", "beginning")
    assert pending(app, now["id"]) == 0 and pending(app, everything["id"]) == len(before)
    hub.funded_card(Decimal("4"))
    after = [e for e in log_events(app) if e.id not in {b.id for b in before}]
    assert pending(app, now["id"]) == len(after)
    run_worker(app, lambda: pending(app, now["id"]) == 0 and pending(app, everything["id"]) == 0)
    ids = receiver.ids()
    assert sorted(ids) == sorted([e.id for e in after] * 2 + [e.id for e in before])


# -- operator commands -----------------------------------------------------------------


def test_add_shows_the_secret_once_and_list_never(app, receiver):
    result = cli(app, "add", receiver.url, "--description", "CRM")
    assert result.exit_code == 0, result.output
    secret = re.search(r"secret  (whsec_\S+)", result.output)[1]
    assert len(__import__("base64").b64decode(secret.removeprefix("whsec_"))) == 32
    endpoint_id = re.search(r"added endpoint (we_[0-9a-f]{12})", result.output)[1]
    for args in (("list",), ("list", "--json"), ("failures", endpoint_id)):
        shown = cli(app, *args)
        assert shown.exit_code == 0 and secret not in shown.output and secret[6:20] not in shown.output
    listed = json.loads(cli(app, "list", "--json").output)["endpoints"]
    assert [(e["id"], e["url"], e["description"], e["paused"]) for e in listed] == [
        (endpoint_id, receiver.url, "CRM", False)
    ]
    assert "secret" not in listed[0]
    hooks = Webhooks(store_of(app))  # what lists, pauses or scrapes never reads the secret at all
    assert hooks.endpoint(endpoint_id).secret == "" and [e.secret for e in hooks.endpoints()] == [""]
    assert [e.secret for e in hooks.endpoints(with_secret=True)] == [secret]  # the worker's reading
    assert cli(app, "remove", endpoint_id).output == f"removed endpoint {endpoint_id} ({receiver.url})\n"
    assert json.loads(cli(app, "list", "--json").output) == {"endpoints": []}
    result = cli(app, "remove", endpoint_id)
    assert result.exit_code == 1 and f"no webhook endpoint {endpoint_id}" in result.output
    keys = Keys(store_of(app).keys.prefix).webhook(endpoint_id)
    assert not any(store_of(app).redis.exists(k) for k in keys.values())


def test_a_pause_racing_a_remove_recreates_nothing(app, receiver, monkeypatch):
    """The worker pauses an endpoint on a 410 while an operator removes it: the pause must not
    write a URL-less hash that nothing lists or removes."""
    endpoint_id = add_endpoint(app, receiver.url)["id"]
    hooks = Webhooks(store_of(app))
    read_before = hooks.endpoint(endpoint_id)
    hooks.remove(endpoint_id)
    monkeypatch.setattr(hooks, "endpoint", lambda _: read_before)  # the pause read it just before the remove
    with pytest.raises(NotFound, match=f"no webhook endpoint {endpoint_id}"):
        hooks.set_paused(endpoint_id, True, "the receiver answered 410 Gone")
    keys = Keys(store_of(app).keys.prefix).webhook(endpoint_id)
    assert not any(store_of(app).redis.exists(k) for k in keys.values())


def signatures(headers: dict) -> list[str]:
    return headers["webhook-signature"].split(" ")


def test_a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends(app, receiver):
    """A receiver moves to the new secret whenever it likes within the overlap, and no delivery is
    refused meanwhile: every one verifies with either secret. After it, only the new one signs."""
    endpoint = add_endpoint(app, receiver.url)
    old = endpoint["secret"]
    key = Keys(store_of(app).keys.prefix).webhook(endpoint["id"])["endpoint"]
    store_of(app).redis.hdel(key, "previous_secret", "previous_until")  # as the previous release wrote it
    result = cli(app, "rotate-secret", endpoint["id"], "--overlap", "2", "--json")
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_") and rotated["previousSecretSignsUntil"]
    listed = cli(app, "list").output
    assert f"secret rotated: the previous one signs too until {rotated['previousSecretSignsUntil']}" in listed
    assert old not in listed and new not in listed

    hub = Hub(app.test_client(), HEADERS)
    hub.funded_card(Decimal("5"))
    events = log_events(app)
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0 and len(receiver.ids()) >= len(events))
    for _, headers, body in receiver.requests:
        assert len(signatures(headers)) == 2
        Webhook(old).verify(body, headers)  # the receiver that has not switched yet
        Webhook(new).verify(body, headers)  # and the one that has
    check_deliveries(receiver, events, new)

    # A second rotation, with no overlap: the first secret stops at once, and so does the second.
    third = json.loads(cli(app, "rotate-secret", endpoint["id"], "--overlap", "0", "--json").output)
    assert third["previousSecretSignsUntil"] is None
    signing = Webhooks(store_of(app)).endpoints(with_secret=True)
    assert [(e.secret, e.previous_secret, e.previous_until_ms) for e in signing] == [(third["secret"], "", 0)]
    assert "secret rotated" not in cli(app, "list").output
    seen = len(receiver.requests)
    hub.funded_card(Decimal("6"))
    total = len(log_events(app))
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0 and len(receiver.ids()) >= total)
    for _, headers, body in receiver.requests[seen:]:
        assert len(signatures(headers)) == 1
        Webhook(third["secret"]).verify(body, headers)
        for retired in (old, new):
            with pytest.raises(WebhookVerificationError):
                Webhook(retired).verify(body, headers)


def test_the_previous_secret_stops_signing_when_its_overlap_ends():
    moment = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    until_ms = int(moment.timestamp() * 1000) + 1000
    current, previous = "whsec_" + "A" * 43 + "=", "whsec_" + "B" * 43 + "="
    endpoint = Endpoint("we_0", "https://x.example/", current, (), False, "", "", 0, previous, until_ms)
    signer = Signer(endpoint)
    both = signer.sign("m1", moment, "{}").split(" ")
    assert both == [Webhook(current).sign("m1", moment, "{}"), Webhook(previous).sign("m1", moment, "{}")]
    assert signer.sign("m1", moment + timedelta(seconds=1), "{}") == Webhook(current).sign(
        "m1", moment + timedelta(seconds=1), "{}"
    )
    never_rotated = Endpoint("we_0", "https://x.example/", current, (), False, "", "", 0)
    assert Signer(never_rotated).sign("m1", moment, "{}") == Webhook(current).sign("m1", moment, "{}")


def test_a_running_worker_signs_with_the_secrets_it_read_last(app):
    """The worker reads the endpoints every cycle: a rotation changes its Signer at the next one."""
    worker = Worker(store_of(app))
    first, second = "whsec_" + "A" * 43 + "=", "whsec_" + "B" * 43 + "="
    before = Endpoint("we_0", "https://x.example/", first, (), False, "", "", 0)
    after = dataclasses.replace(before, secret=second, previous_secret=first, previous_until_ms=2**62)
    signer = worker.signer(before)
    assert worker.signer(before) is signer  # made once per secret, not per delivery
    moment = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    assert worker.signer(after).sign("m1", moment, "{}") == " ".join(
        Webhook(s).sign("m1", moment, "{}") for s in (second, first)
    )


def test_a_replayed_event_is_signed_like_the_workers_deliveries(app, receiver):
    endpoint = add_endpoint(app, receiver.url, "--start", "beginning")
    Hub(app.test_client(), HEADERS).funded_card(Decimal("5"))
    event_id = log_events(app)[0].id
    new = json.loads(cli(app, "rotate-secret", endpoint["id"], "--json").output)["secret"]
    result = cli(app, "replay", endpoint["id"], "--event", event_id)
    assert result.exit_code == 0, result.output
    ((_, headers, body),) = receiver.requests
    assert len(signatures(headers)) == 2
    Webhook(endpoint["secret"]).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_rotate_secret_refuses_bad_input_and_changes_nothing(app, receiver, monkeypatch):
    endpoint = add_endpoint(app, receiver.url)
    store = store_of(app)
    key = Keys(store.keys.prefix).webhook(endpoint["id"])["endpoint"]
    before = store.redis.hgetall(key)
    for overlap in ("-1", "721", "1.5", "x"):
        result = cli(app, "rotate-secret", endpoint["id"], "--overlap", overlap)
        assert result.exit_code == 2 and "--overlap" in result.output, result.output
    result = cli(app, "rotate-secret", "we_000000000000")
    assert result.exit_code == 1 and "no webhook endpoint we_000000000000" in result.output
    assert store.redis.hgetall(key) == before

    # A rotation racing a remove recreates nothing (webhook_rotate.lua checks the URL is still there).
    hooks = Webhooks(store)
    read_before = hooks.endpoint(endpoint["id"])
    hooks.remove(endpoint["id"])
    monkeypatch.setattr(hooks, "endpoint", lambda _: read_before)
    with pytest.raises(NotFound, match=f"no webhook endpoint {endpoint['id']}"):
        hooks.rotate_secret(endpoint["id"])
    assert not store.redis.exists(key)


@pytest.mark.parametrize(
    ("url", "production", "message"),
    [
        ("http://receiver.example.com/hooks", True, "https:// URLs only"),
        ("ftp://receiver.example.com/", False, "must start with https://"),
        ("https:///hooks", False, "no host"),
        ("https://user:pw@receiver.example.com/", False, "no credentials in the URL"),
        ("https://receiver.example.com/#x", False, "#fragment"),
        ("https://receiver.example.com:99999/", False, "not a valid URL"),
        ("https://receiver.example.com/a b", False, "spaces"),
    ],
)
def test_urls_are_checked(url, production, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        check_url(url, production=production)


def test_bad_input_is_refused_and_changes_nothing(app, receiver):
    for args, message in (
        (("add", "ftp://x.example/"), "must start with https://"),
        (("add", receiver.url, "--types", "credit,refunds"), "unknown refunds"),
        (("add", receiver.url, "--start", "soon"), "now, beginning, an event id"),
        (("add", receiver.url, "--description", "x" * 201), "Invalid value for '--description': the description"),
        (("add", receiver.url, "--start", "1969-12-31"), "Invalid value for '--start': '1969-12-31' is before 1970"),
    ):
        result = cli(app, *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert json.loads(cli(app, "list", "--json").output) == {"endpoints": []}
    for command in ("pause", "resume", "failures", "remove"):
        result = cli(app, command, "we_000000000000")
        assert result.exit_code == 1 and "no webhook endpoint we_000000000000" in result.output
    production = make_app(store_of(app).redis, app_env="production")
    result = cli(production, "add", "http://x.example/")
    assert result.exit_code == 2 and "https:// URLs only" in result.output
    assert check_url(receiver.url, production=False) == receiver.url  # http is development's


def test_a_node_failure_is_not_read_as_an_empty_log(app, receiver, monkeypatch):
    """XINFO STREAM of a missing stream answers "no such key" (no log yet); a cluster pipeline puts a
    node's connection error in the same reply list. `add --start now` must fail, not start that
    bucket at its beginning (which would send the endpoint the bucket's whole history)."""
    import redis

    Hub(app.test_client(), HEADERS).funded_card(Decimal("3"))
    hooks = Webhooks(store_of(app))
    assert sum(t is None for t in hooks.tails().values()) >= 250  # the real "no such key" is read as None
    assert LogBounds.from_info(redis.ResponseError("no such key")) is None
    for error in (
        redis.ConnectionError("node down"),
        redis.TimeoutError("timed out"),
        redis.ResponseError("WRONGTYPE"),
    ):
        with pytest.raises(type(error)):
            LogBounds.from_info(error)

    execute = redis.client.Pipeline.execute

    def node_down(self, raise_on_error=True):
        replies = execute(self, raise_on_error)
        return [redis.ConnectionError("node down"), *replies[1:]] if len(replies) == 256 else replies

    monkeypatch.setattr(redis.client.Pipeline, "execute", node_down)
    result = cli(app, "add", receiver.url)
    assert result.exit_code == 1 and "unavailable" in result.output, result.output
    monkeypatch.undo()
    assert json.loads(cli(app, "list", "--json").output) == {"endpoints": []}


# -- workers: killed, restarted, several at once ---------------------------------------------


def start_worker(redis_url: str, *extra: str, lease: str = "5") -> subprocess.Popen:
    """The Procfile's worker line, as a process of its own. Leases long enough that a loaded machine
    never lets one lapse by mistake (a lane would then change hands mid-test)."""
    env = {
        **os.environ,
        "APP_ENV": "development",
        "REDIS_URL": redis_url,
        "PROVIDER_API_APP_KEY": APP_KEY,
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "WEBHOOK_RETRY_MAX_SECONDS": "0.2",
        "LOG_LEVEL": "WARNING",
    }
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    command = procfile["worker"].split()
    assert command[0] == "flask"
    args = [sys.executable, "-m", "flask", *command[1:], "--lease", lease, "--poll", "0.05", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_worker_killed_mid_delivery_loses_nothing_and_repeats_only_that_event(real_redis, redis_server, receiver):
    app = make_app(real_redis)
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    cards = [hub.funded_card(Decimal("20"))["id"] for _ in range(4)]
    for card in cards:
        hub.debit(card, Decimal("5"))
    events = log_events(app)
    in_flight = next(e for e in events if e.card_id == cards[0] and e.type == "credit")
    receiver.plan[in_flight.id] = ["hold"]

    first = start_worker(redis_server.url, lease="2.5")  # its lanes pass on 2.5 s after the kill
    try:
        assert receiver.held.wait(30), "the held event never arrived"
        first.kill()  # SIGKILL while the receiver holds that POST: no answer recorded, lease not given back
    finally:
        stop(first)
    # What the receiver got that the dead worker had not recorded: the events it had in flight, at
    # most one per delivery thread (8). Only these may come twice.
    received = set(receiver.ids())
    flat = store_of(app).redis.hgetall(Keys(store_of(app).keys.prefix).webhook(endpoint["id"])["cursor"])
    cursors = {b: LaneCursor.parse(flat.get(b)) for b in buckets()}
    unrecorded = {
        e.id for e in events
        if e.id in received and (cursors[e.bucket] is None or stream_order(cursors[e.bucket].stream_id)
                                 < stream_order(e.stream_id))
    }  # fmt: skip
    assert in_flight.id in unrecorded and len(unrecorded) <= 8
    receiver.release.set()
    second = start_worker(redis_server.url, lease="2.5")
    try:
        wait_for(lambda: pending(app, endpoint["id"]) == 0 and set(receiver.ids()) >= {e.id for e in events})
    finally:
        output = stop(second)
    assert "stopped" in output, output
    check_deliveries(receiver, events, endpoint["secret"])
    ids = receiver.ids()
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert in_flight.id in duplicates and duplicates <= unrecorded, (duplicates, unrecorded)
    assert Webhooks(store_of(app)).stats(endpoint["id"]).delivered == len(events)


def test_two_workers_share_the_lanes_and_deliver_each_event_once(real_redis, redis_server, receiver):
    app = make_app(real_redis)
    endpoint = add_endpoint(app, receiver.url)
    workers = [start_worker(redis_server.url, "--threads", "2") for _ in range(2)]
    leases_key = Keys().webhook(endpoint["id"])["leases"]

    def owners():
        return Counter(lease.split("|")[0] for lease in store_of(app).redis.hvals(leases_key))

    try:
        wait_for(lambda: sorted(owners().values()) == [128, 128])  # once both are up: 128 lanes each
        hub = Hub(app.test_client(), HEADERS)
        for _ in range(12):
            card = hub.funded_card(Decimal("9"))["id"]
            hub.debit(card, Decimal("2"))
            time.sleep(0.05)
        events = log_events(app)
        wait_for(lambda: pending(app, endpoint["id"]) == 0 and len(receiver.ids()) >= len(events))
        assert sorted(owners().values()) == [128, 128]
    finally:
        outputs = [stop(w) for w in workers]
    assert all("stopped" in out for out in outputs), outputs
    check_deliveries(receiver, events, endpoint["secret"])
    assert sorted(receiver.ids()) == sorted(e.id for e in events)  # no failure: none twice
    assert owners() == {}  # given back on SIGTERM


# -- metrics and docs ---------------------------------------------------------------------


def test_metrics_show_pending_deliveries_failures_latency_and_workers(app, receiver):
    endpoint = add_endpoint(app, receiver.url)
    hub = Hub(app.test_client(), HEADERS)
    hub.funded_card(Decimal("5"))
    events = log_events(app)
    receiver.plan[events[0].id] = ["500"]

    def scrape() -> str:
        response = app.test_client().get("/metrics")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    text = scrape()
    label = f'endpoint="{endpoint["id"]}"'
    assert f"giftcard_webhook_events_pending{{{label}}} {len(events)}.0" in text
    assert "giftcard_webhook_workers 0.0" in text
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    text = scrape()
    assert f"giftcard_webhook_events_pending{{{label}}} 0.0" in text
    assert f"giftcard_webhook_deliveries_total{{{label}}} {len(events)}.0" in text
    assert f'giftcard_webhook_failed_attempts_total{{{label},kind="http_5xx"}} 1.0' in text
    assert f"giftcard_webhook_delivery_latency_seconds_count{{{label}}} {len(events)}.0" in text
    assert f'giftcard_webhook_delivery_latency_seconds_bucket{{{label},le="+Inf"}} {len(events)}.0' in text
    assert f"giftcard_webhook_dead_letters{{{label}}} 0.0" in text


def test_the_receiver_in_the_docs_verifies_a_real_delivery(app, receiver):
    """The README's receiver (docs/webhooks.md points at it), run as written, on a request the worker really sent."""
    doc = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(# receiver\.py.*?)```", doc, re.S)[1]
    endpoint = add_endpoint(app, receiver.url)
    Hub(app.test_client(), HEADERS).funded_card(Decimal("12.5"), currencyCode="BRL")
    run_worker(app, lambda: pending(app, endpoint["id"]) == 0)
    namespace = {"__name__": "receiver"}
    os.environ["WEBHOOK_SECRET"] = endpoint["secret"]
    try:
        exec(compile(snippet, "README.md", "exec"), namespace)
        handled = [namespace["handle"](body, headers) for _, headers, body in receiver.requests]
        credit = next(h for h in handled if h["type"] == "giftcard.credit")
        assert credit["data"]["amount"] == Decimal("12.5")
        _, headers, body = receiver.requests[0]
        with pytest.raises(WebhookVerificationError):
            namespace["handle"](body + b" ", headers)
    finally:
        del os.environ["WEBHOOK_SECRET"]


def test_webhook_settings_are_read_and_checked():
    from giftcard_provider.config import ConfigError, Settings

    env = {"APP_ENV": "development", "WEBHOOK_MAX_ATTEMPTS": "3", "WEBHOOK_TIMEOUT_SECONDS": "2.5",
           "WEBHOOK_RETRY_BASE_SECONDS": "1", "WEBHOOK_RETRY_MAX_SECONDS": "60"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.webhook_max_attempts, s.webhook_timeout_seconds, s.webhook_retry_base_seconds,
            s.webhook_retry_max_seconds) == (3, 2.5, 1.0, 60.0)  # fmt: skip
    assert Settings.from_env({"APP_ENV": "development"}).webhook_max_attempts == 12
    for name, value in (("WEBHOOK_MAX_ATTEMPTS", "0"), ("WEBHOOK_TIMEOUT_SECONDS", "-1"),
                        ("WEBHOOK_MAX_ATTEMPTS", "2.5")):  # fmt: skip
        with pytest.raises(ConfigError, match=name if value != "2.5" else "invalid setting"):
            Settings.from_env({"APP_ENV": "development", name: value})
