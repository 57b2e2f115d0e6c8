"""Operator commands (`flask cards ...`) on both backends, the clock process, and the deploy files."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import signal
import ssl
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from giftcard_provider import create_app
from giftcard_provider.config import ConfigError, Settings
from giftcard_provider.connection import connect
from giftcard_provider.ledger_library import RELEASE, Library
from giftcard_provider.verify import card_ids

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub
from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CODE = re.compile(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){4}")
HEADERS = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}


def cli(app, *args: str, input: str | None = None):
    return app.test_cli_runner().invoke(args=["cards", *args], input=input)


def ok_json(app, *args: str):
    result = cli(app, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def issue(app, *args: str) -> dict:
    return ok_json(app, "issue", "--relation-name", "loyalty", "--profile-id", "Shopper@Example.com", *args)


def store_of(app):
    return app.extensions["giftcard_provider"]["store"]


# -- issue, load, show, find --------------------------------------------------


def test_issue_prints_the_full_code_once_and_loads_exactly(app):
    issued = issue(app, "--currency", "brl", "--caption", "Welcome", "--load", "12.50", "--request-id", "first-load")
    card = issued["card"]
    assert CODE.fullmatch(issued["redemptionCode"])
    assert issued["load"]["requestId"] == "first-load"
    assert (card["currency"], card["balance"], card["balanceMinor"], card["held"]) == ("BRL", "12.50", 1250, "0.00")
    assert (card["status"], card["profileId"], card["caption"]) == ("active", "shopper@example.com", "Welcome")
    assert card["redemptionCode"].endswith(issued["redemptionCode"][-4:])
    assert issued["redemptionCode"] not in json.dumps(card)

    # The load is a Credit transaction like the Hub's: the HTTP API sees it.
    response = Hub(app.test_client(), HEADERS).get(f"/giftcards/{card['id']}")
    assert response.json["balance"] == Decimal("12.5")

    # A person reads the code in the text output; later reads only ever show it masked.
    text = cli(app, "issue", "--relation-name", "r", "--profile-id", "p", "--load", "1")
    assert text.exit_code == 0, text.output
    code = CODE.search(text.output)[0]
    assert "loaded 1.00 USD" in text.output
    shown = cli(app, "show", re.search(r"issued card ([0-9a-f]+)", text.output)[1])
    assert shown.exit_code == 0 and code not in shown.output and code[-4:] in shown.output


def test_issue_with_window_and_flags(app):
    card = issue(
        app,
        "--currency", "JPY",
        "--emission", "2020-01-01",
        "--valid-days", "36500",
        "--restricted-to-owner",
        "--single-redemption",
        "--single-credit",
        "--load", "1500",
    )["card"]  # fmt: skip
    assert card["emissionDate"] == "2020-01-01T00:00:00.000Z"
    assert card["expiringDate"] == "2119-12-08T00:00:00.000Z"  # 36500 days later
    assert (card["restrictedToOwner"], card["multipleRedemptions"], card["multipleCredits"]) == (True, False, False)
    assert (card["balance"], card["balanceMinor"]) == ("1500", 1500)
    dated = issue(app, "--emission", "2030-01-01T10:00:00-03:00", "--expiring", "2031-01-01T00:00:00Z")["card"]
    assert (dated["emissionDate"], dated["expiringDate"]) == ("2030-01-01T13:00:00.000Z", "2031-01-01T00:00:00.000Z")
    assert dated["usable"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--currency", "XYZ"], "unknown ISO 4217 currency code 'XYZ'"),
        (["--currency", "BRL", "--load", "1.234"], "BRL has 2 decimal places"),
        (["--currency", "JPY", "--load", "1.5"], "JPY has 0 decimal places"),
        (["--load", "abc"], "'abc' is not an amount"),
        (["--load", "-5"], "'-5' is not an amount"),
        (["--load", "0"], "positive"),
        (["--load", "1000001"], "MAX_TRANSACTION_AMOUNT"),
        (["--expiring", "someday"], "--expiring: Not a valid datetime."),
        (["--expiring", "2031-01-01", "--valid-days", "3"], "not both"),
        (["--emission", "2031-01-01", "--expiring", "2030-01-01"], "--expiring: Must be later than emissionDate."),
        (["--relation-name", "  "], "--relation-name: Must not be blank."),
        (["--valid-days", "0"], "--valid-days"),
        (["--request-id", "r-1"], "give --load too"),
    ],
)
def test_issue_refuses_bad_input_and_creates_nothing(app, args, message):
    result = cli(app, "issue", "--relation-name", "loyalty", "--profile-id", "p", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(card_ids(store_of(app).redis, store_of(app).keys)) == []


def test_issue_refuses_a_window_already_over(app):
    result = cli(app, "issue", "--relation-name", "r", "--profile-id", "p", "--expiring", "2001-01-01")
    assert result.exit_code == 1
    assert "expiringDate must be later than emissionDate and in the future" in result.output


def test_load_is_idempotent_by_request_id(app):
    card_id = issue(app, "--currency", "BRL")["card"]["id"]
    first = ok_json(app, "load", card_id, "10", "--request-id", "r-1")
    again = ok_json(app, "load", card_id, "10.00", "--request-id", "r-1")
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert first["transactionId"] == again["transactionId"]
    assert (again["balance"], again["balanceMinor"], again["amount"]) == ("10.00", 1000, "10.00")

    conflict = cli(app, "load", card_id, "11", "--request-id", "r-1")
    assert conflict.exit_code == 1
    assert "requestId was already used with a different value" in conflict.output

    text = cli(app, "load", card_id, "0.05")
    assert text.exit_code == 0, text.output
    generated = re.search(r"requestId (cli-[0-9a-f]+)", text.output)[1]
    assert "balance 10.05 BRL" in text.output
    replay = cli(app, "load", card_id, "0.05", "--request-id", generated)
    assert "already applied" in replay.output and "balance 10.05 BRL" in replay.output


def test_load_uses_the_cards_currency_exponent(app):
    card_id = issue(app, "--currency", "KWD")["card"]["id"]
    loaded = ok_json(app, "load", card_id, "1.234")
    assert (loaded["balance"], loaded["balanceMinor"], loaded["currency"]) == ("1.234", 1234, "KWD")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["load", "{card}", "1.234"], 2, "BRL has 2 decimal places; this amount has 3"),
        (["load", "{card}", "abc"], 2, "'abc' is not an amount"),
        (["load", "{card}", "1e3"], 2, "is not an amount"),
        (["load", "{card}", "NaN"], 2, "is not an amount"),
        (["load", "{card}", "1", "--request-id", " "], 2, "--request-id"),
        (["load", "ffff0000ffff0000", "1"], 1, "no card ffff0000ffff0000"),
        (["load", "../x", "1"], 2, "is not a card id"),
        (["show", "ffff0000ffff0000"], 1, "no card ffff0000ffff0000"),
        (["transactions", "ffff0000ffff0000"], 1, "no card ffff0000ffff0000"),
        (["block", "ffff0000ffff0000", "--reason", "x"], 1, "no card ffff0000ffff0000"),
        (["find", "AAAA-BBBB-CCCC-DDDD-EEEE"], 1, "no card has that redemption code"),
        (["find", " - "], 2, "the code is empty"),
    ],
)
def test_refuses_bad_input_without_changing_anything(app, args, code, message):
    card_id = issue(app, "--currency", "BRL", "--load", "5")["card"]["id"]
    before = ok_json(app, "show", card_id)
    result = cli(app, *(a.format(card=card_id) for a in args))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert ok_json(app, "show", card_id) == before


def test_show_find_and_transactions(app):
    hub = Hub(app.test_client(), HEADERS)
    issued = issue(app, "--currency", "BRL", "--load", "100")
    card_id, code = issued["card"]["id"], issued["redemptionCode"]
    debit = hub.debit(card_id, Decimal("40"))
    assert hub.settle(card_id, debit, Decimal("25")).status_code == 200
    assert hub.cancel(card_id, debit, Decimal("5")).status_code == 200  # releases 5 of the 15 still held

    shown = ok_json(app, "show", card_id, "--entries", "2")
    assert (shown["balance"], shown["held"], shown["heldMinor"]) == ("65.00", "10.00", 1000)
    assert [(e["kind"], e["amount"], e["availableAfter"], e["heldAfter"]) for e in shown["journal"]] == [
        ("settle", "25.00", "60.00", "15.00"),
        ("release", "5.00", "65.00", "10.00"),
    ]
    assert [e["seq"] for e in shown["journal"]] == [4, 5]  # seq 1 is the card's "created" event

    # Any spelling of the code finds the card.
    found = ok_json(app, "find", code.lower().replace("-", " "), "--entries", "0")
    assert found["id"] == card_id and found["journal"] == []
    prompted = cli(app, "find", input=code + "\n")
    assert prompted.exit_code == 0 and f"card {card_id}" in prompted.output and code not in prompted.output

    listed = ok_json(app, "transactions", card_id)
    assert listed["total"] == 2
    credit, held = listed["transactions"]
    assert (credit["operation"], credit["value"]) == ("Credit", "100.00")
    assert (credit["settled"], credit["cancelled"]) == ("0.00", "0.00")
    assert (held["id"], held["operation"], held["valueMinor"]) == (debit, "Debit", 4000)
    assert (held["held"], held["settled"], held["released"], held["refunded"]) == ("10.00", "25.00", "5.00", "0.00")
    assert [t["id"] for t in ok_json(app, "transactions", card_id, "--last", "1")["transactions"]] == [debit]

    text = cli(app, "transactions", card_id)
    assert text.exit_code == 0 and "Debit" in text.output and "held 10.00 settled 25.00" in text.output
    human = cli(app, "show", card_id)
    assert human.exit_code == 0 and "65.00 BRL available" in human.output and "release" in human.output


def test_log_lines_go_to_stderr_while_a_command_prints_json(app, monkeypatch):
    store = store_of(app)
    card_id = issue(app, "--load", "1")["card"]["id"]
    read = store.card

    def logged_read(card_id):
        logging.getLogger("giftcard_provider.store").warning("slow read of %s", card_id)
        return read(card_id)

    monkeypatch.setattr(store, "card", logged_read)
    result = cli(app, "show", card_id, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == card_id
    assert f"slow read of {card_id}" in result.stderr
    handlers = logging.getLogger("giftcard_provider").handlers
    assert any(type(h).__name__ == "StdoutHandler" for h in handlers)  # given back afterwards
    assert not any(type(h) is logging.StreamHandler for h in handlers)


# -- status ---------------------------------------------------------------------


def test_block_unblock_deactivate_record_a_reason_and_move_no_money(app):
    hub = Hub(app.test_client(), HEADERS)
    card_id = issue(app, "--currency", "BRL", "--load", "50")["card"]["id"]
    hold = hub.debit(card_id, Decimal("20"))
    journal_before = ok_json(app, "show", card_id, "--entries", "100")["journal"]

    blocked = ok_json(app, "block", card_id, "--reason", "chargeback review")
    assert (blocked["changed"], blocked["previousStatus"]) == (True, "active")
    assert (blocked["card"]["status"], blocked["card"]["statusReason"]) == ("blocked", "chargeback review")
    assert blocked["card"]["statusChangedAt"].endswith("Z")
    refused = hub.transaction(card_id, "Debit", Decimal("1"))
    assert (refused.status_code, refused.json["code"]) == (422, "card_blocked")
    assert hub.transaction(card_id, "Credit", Decimal("1")).json["code"] == "card_blocked"
    assert cli(app, "load", card_id, "1").exit_code == 1
    # Money already held stays settleable on a blocked card.
    assert hub.settle(card_id, hold, Decimal("20")).status_code == 200
    again = cli(app, "block", card_id, "--reason", "twice")
    assert again.exit_code == 0 and "already blocked" in again.output
    assert ok_json(app, "show", card_id)["statusReason"] == "chargeback review"

    unblocked = ok_json(app, "unblock", card_id, "--reason", "cleared")
    assert (unblocked["previousStatus"], unblocked["card"]["status"]) == ("blocked", "active")
    hub.debit(card_id, Decimal("1"))

    aborted = cli(app, "deactivate", card_id, "--reason", "closed", input="n\n")
    assert aborted.exit_code == 1 and "Aborted" in aborted.output
    assert ok_json(app, "show", card_id)["status"] == "active"
    text = cli(app, "deactivate", card_id, "--reason", "account closed", input="y\n")
    assert text.exit_code == 0, text.output
    assert "active -> inactive (account closed" in text.output and "29.00 BRL available" in text.output
    for command in ("unblock", "block"):
        final = cli(app, command, card_id, "--reason", "oops")
        assert final.exit_code == 1 and "deactivated, and that is final" in final.output
    shown = ok_json(app, "show", card_id, "--entries", "100")
    assert (shown["status"], shown["statusReason"], shown["balance"], shown["held"]) == (
        "inactive",
        "account closed",
        "29.00",
        "1.00",
    )
    # Status changes moved no money: each is an event of its own (amount 0, balances unchanged), between
    # the settle and the second debit; a refused or repeated change wrote none.
    since = shown["journal"][len(journal_before) :]
    assert [(e["kind"], e["ref"]) for e in since] == [
        ("status", "blocked"),
        ("settle", since[1]["ref"]),
        ("status", "active"),
        ("authorize", since[3]["ref"]),
        ("status", "inactive"),
    ]
    assert all(e["amountMinor"] == 0 for e in since if e["kind"] == "status")

    blank = cli(app, "block", card_id, "--reason", "  ")
    assert blank.exit_code == 2 and "--reason" in blank.output
    missing = cli(app, "block", card_id)
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.output


# -- verify and export ------------------------------------------------------------


def test_verify_names_a_corrupted_card(app):
    store = store_of(app)
    good = issue(app, "--load", "5")["card"]["id"]
    bad = issue(app, "--load", "7")["card"]["id"]
    clean = ok_json(app, "verify")
    assert (clean["checked"], clean["ok"], clean["failed"]) == (2, True, {})
    assert "verified 2 card(s)" in cli(app, "verify").output

    key = store.keys.card(bad)
    store.redis.hset(key, "av", "900")
    try:
        result = cli(app, "verify")
        assert result.exit_code == 1
        assert f"ledger verification failed on 1 of 2 card(s): {bad}" in result.output
        assert f"card {bad}: balances available=900" in result.output
        as_json = cli(app, "verify", "--json")
        assert as_json.exit_code == 1
        report = json.loads(as_json.stdout)
        assert (report["ok"], list(report["failed"])) == (False, [bad])
        assert cli(app, "verify", bad).exit_code == 1
        assert cli(app, "verify", good).exit_code == 0
    finally:
        store.redis.hset(key, "av", "700")
    assert cli(app, "verify", bad).exit_code == 0
    unknown = cli(app, "verify", "ffff0000ffff0000ffff0000ffff0000")
    assert unknown.exit_code == 1 and "card ffff0000ffff0000ffff0000ffff0000: not found" in unknown.output


def test_export_writes_exact_ndjson(app, tmp_path):
    hub = Hub(app.test_client(), HEADERS)
    brl = issue(app, "--currency", "BRL", "--load", "10.10")["card"]["id"]
    jpy = issue(app, "--currency", "JPY", "--load", "300")["card"]["id"]
    hub.debit(brl, Decimal("0.30"))

    result = app.test_cli_runner().invoke(args=["cards", "export"])
    assert result.exit_code == 0, result.output
    assert "exported 3 journal entries from 2 card(s)" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_card = {card: [e for e in lines if e["cardId"] == card] for card in (brl, jpy)}
    assert [(e["kind"], e["amount"], e["amountMinor"], e["currency"]) for e in by_card[brl]] == [
        ("credit", "10.10", 1010, "BRL"),
        ("authorize", "0.30", 30, "BRL"),
    ]
    assert [(e["kind"], e["amount"], e["availableAfter"]) for e in by_card[jpy]] == [("credit", "300", "300")]
    for entry in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["at"])
        exponent = 2 if entry["currency"] == "BRL" else 0
        for name in ("amount", "availableAfter", "heldAfter"):
            assert Decimal(entry[name]) == Decimal(entry[f"{name}Minor"]).scaleb(-exponent)
    assert by_card[brl][-1]["availableAfter"] == "9.80" and by_card[brl][-1]["heldAfter"] == "0.30"

    out = tmp_path / "brl.ndjson"
    one = app.test_cli_runner().invoke(args=["cards", "export", brl, "--output", str(out)])
    assert one.exit_code == 0, one.output
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [2, 3]  # 1: "created"
    later = app.test_cli_runner().invoke(args=["cards", "export", "--since", "2999-01-01"])
    assert later.stdout == "" and "exported 0 journal entries from 2 card(s)" in later.stderr
    earlier = app.test_cli_runner().invoke(args=["cards", "export", "--until", "2000-01-01T00:00:00+00:00"])
    assert earlier.stdout == ""
    bad = app.test_cli_runner().invoke(args=["cards", "export", "--since", "yesterday"])
    assert bad.exit_code == 2 and "not an ISO 8601 date" in bad.output


# -- holds ----------------------------------------------------------------------


@pytest.fixture
def short_app(backend):
    """An app on the same backend whose holds live 0.2 s."""
    app = create_app(make_settings(hold_lifetime_seconds=0.2), redis_client=backend)
    app.config["TESTING"] = True
    return app


def test_expire_holds_releases_only_due_holds(app, short_app):
    short_hub, long_hub = Hub(short_app.test_client(), HEADERS), Hub(app.test_client(), HEADERS)
    due = issue(short_app, "--currency", "BRL", "--load", "10")["card"]["id"]
    kept = issue(app, "--currency", "BRL", "--load", "10")["card"]["id"]
    short_hub.debit(due, Decimal("4"))
    settled = short_hub.debit(due, Decimal("1"))
    assert short_hub.settle(due, settled, Decimal("1")).status_code == 200
    long_hub.debit(kept, Decimal("3"))
    time.sleep(0.3)

    result = ok_json(short_app, "expire-holds")
    assert result == {"bucketsWithDueHolds": 1, "holdsReleased": 1, "errors": {}, "moving": 0, "eventsTrimmed": 0}
    card = ok_json(app, "show", due)
    assert (card["balance"], card["held"], card["journal"][-1]["kind"]) == ("9.00", "0.00", "expire")
    assert ok_json(app, "show", kept)["held"] == "3.00"
    text = cli(short_app, "expire-holds")
    assert text.exit_code == 0
    assert "released 0 expired hold(s) (0 bucket(s) had holds due)" in text.output


def test_sweep_releases_holds_until_sigterm(short_app):
    hub = Hub(short_app.test_client(), HEADERS)
    card_id = issue(short_app, "--load", "10")["card"]["id"]
    hub.debit(card_id, Decimal("6"))

    # If the signal came after the command restored its handlers, this one would catch it.
    def absorb(*_):
        pass

    previous, sigint = signal.signal(signal.SIGTERM, absorb), signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.8, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        started = time.monotonic()
        result = cli(short_app, "sweep", "--every", "0.1", "--passes", "300")  # the pass cap only bounds a failure
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
        timer.join()
        restored = signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 0, result.output
    assert "sweep: released 1 expired hold(s)" in result.output
    assert re.search(r"sweep: stopped after \d+ pass\(es\) on SIGTERM", result.output)
    assert elapsed < 5
    assert restored is absorb and signal.getsignal(signal.SIGINT) is sigint  # handlers given back
    assert ok_json(short_app, "show", card_id)["balance"] == "10.00"


def test_sweep_survives_an_unreachable_redis_and_expire_holds_fails_fast():
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retries=0)
    client = connect(settings)  # the production client: short timeouts, a small retry budget
    app = create_app(settings, redis_client=client)
    result = cli(app, "sweep", "--every", "0.1", "--passes", "2")
    assert result.exit_code == 0, result.output
    assert result.output.count("sweep: pass failed") == 2
    assert "stopped after 2 pass(es)" in result.output
    once = cli(app, "expire-holds")
    assert once.exit_code == 1 and "the ledger store is unavailable" in once.output
    client.close()


# -- deploy -----------------------------------------------------------------------


def test_rediss_url_carries_the_certificate_setting():
    settings = Settings.from_env(
        {
            "APP_ENV": "development",
            "REDIS_URL": "rediss://:secret@redis.example.com:6380/0",
            "REDIS_SSL_CERT_REQS": "none",
        }
    )
    pool = connect(settings).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    connection = pool.make_connection()  # built, not connected
    assert (connection.host, connection.port, connection.password) == ("redis.example.com", 6380, "secret")
    assert (connection.cert_reqs, connection.check_hostname) == (ssl.CERT_NONE, False)

    strict = connect(make_settings(redis_url="rediss://redis.example.com:6380")).connection_pool.make_connection()
    assert (strict.cert_reqs, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    shouted = connect(make_settings(redis_url="rediss://h:1", redis_ssl_cert_reqs="NONE")).connection_pool
    assert shouted.make_connection().cert_reqs == ssl.CERT_NONE
    plain = connect(make_settings(redis_url="redis://h:1", redis_ssl_cert_reqs="none")).connection_pool
    assert plain.connection_class is redis.Connection and "ssl_cert_reqs" not in plain.connection_kwargs
    with pytest.raises(ConfigError, match="REDIS_SSL_CERT_REQS"):
        connect(make_settings(redis_url="rediss://h:1", redis_ssl_cert_reqs="None-please"))


class _Recorder(dict):
    def __init__(self, **values):
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_app_json_describes_every_setting_and_starts_in_production():
    manifest = json.loads((ROOT / "app.json").read_text())
    env = manifest["env"]
    recorder = _Recorder(APP_ENV="development")  # reads every setting (production stops at the first missing secret)
    Settings.from_env(recorder)
    assert recorder.read - {"REDIS_URL", "DYNO"} <= set(env), "app.json misses settings read by config.py"
    assert {"plan": "heroku-redis:mini", "as": "REDIS"} in manifest["addons"]  # provides REDIS_URL
    assert all(spec.get("description") for spec in env.values())
    for name in ("PROVIDER_API_APP_KEY", "PROVIDER_API_APP_TOKEN", "CODE_HASH_SECRET"):
        assert env[name]["generator"] == "secret"
    assert env["APP_ENV"]["value"] == "production"
    assert env["REDIS_SSL_CERT_REQS"]["value"] == "none"
    assert set(manifest["formation"]) == {"web", "clock", "worker"}

    values = {name: spec.get("value", "") for name, spec in env.items() if spec.get("generator") != "secret"}
    # What "generator": "secret" makes: 64 hex characters.
    secrets = {name: f"{i:02d}".ljust(64, "f") for i, (name, spec) in enumerate(env.items()) if spec.get("generator")}
    settings = Settings.from_env({**values, **secrets, "REDIS_URL": "rediss://h:6380"})
    assert settings.production
    assert settings.credentials[0] == (secrets["PROVIDER_API_APP_KEY"], secrets["PROVIDER_API_APP_TOKEN"])
    assert settings.metrics_token == secrets["METRICS_TOKEN"] and not settings.api_docs
    assert not settings.uses_demo_credentials


def test_procfile_processes_and_python_version(app):
    processes = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(processes) == {"release", "web", "clock", "worker"}
    assert processes["worker"].split() == ["flask", "--app", "wsgi", "cards", "webhooks", "work"]
    assert processes["web"].startswith("gunicorn -c gunicorn.conf.py wsgi:app")
    release = processes["release"].split()  # migrates the store's layout before a release serves
    assert release == ["flask", "--app", "wsgi", "cards", "migrate"]
    result = app.test_cli_runner().invoke(args=release[3:])
    assert result.exit_code == 0, result.output
    assert "migrate: layout v1 -> v2: 0 v1 card(s)" in result.output  # a new store: no marker, no card
    clock = processes["clock"].split()
    assert clock[:4] == ["flask", "--app", "wsgi", "cards"]
    result = app.test_cli_runner().invoke(args=[*clock[3:], "--passes", "1"])
    assert result.exit_code == 0, result.output
    assert "stopped after 1 pass(es)" in result.output
    assert (ROOT / ".python-version").read_text().strip() == "3.11"


def test_gunicorn_config_reads_the_environment_and_does_not_preload(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "5123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.delenv("APP_ENV", raising=False)  # production: Heroku's router must reach $PORT
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # unset by the test's end, whatever the config does
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (config["bind"], config["workers"], config["preload_app"]) == ("0.0.0.0:5123", 3, False)
    monkeypatch.setenv("APP_ENV", "development")  # the demo credentials: this machine only
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "127.0.0.1:5123"
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir() and not any(metrics_dir.iterdir())  # fresh for the workers' metric files
    metrics_dir.rmdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)  # an operator's own choice stands


def test_libraries_lists_and_prunes_other_releases(app):
    store = store_of(app)
    older = Library(RELEASE.source + "\n-- an older release\n")
    older.load(store.redis)
    listed = ok_json(app, "libraries")
    assert listed == {"release": RELEASE.name, "installed": sorted([older.name, RELEASE.name]), "pruned": []}
    result = cli(app, "libraries", "--prune")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{RELEASE.name}  (this release)", f"pruned {older.name}"]


def test_verify_reports_a_card_record_damaged_beyond_reading(app):
    card = issue(app)["card"]
    store_of(app).redis.hdel(store_of(app).keys.card(card["id"]), "cur", "from")
    result = cli(app, "verify", card["id"])
    assert result.exit_code == 1
    assert f"card {card['id']}: unreadable record (KeyError" in result.output
    store_of(app).redis.hset(store_of(app).keys.card(card["id"]), mapping={"cur": "USD", "from": "0"})
