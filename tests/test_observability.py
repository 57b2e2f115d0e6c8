"""Request logs (JSON lines on stdout, nothing secret in them), X-Request-Id, and /metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app, observability
from giftcard_provider.codes import normalise
from giftcard_provider.config import ConfigError

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub
from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
TRANSACTIONS = "/giftcards/<giftCardId>/transactions"


def log_lines(text: str) -> list[dict]:
    """Every JSON log line of captured output (other lines fail the test: stdout is ours)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def request_lines(text: str) -> list[dict]:
    return [line for line in log_lines(text) if line["message"] == "request"]


def samples(client) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from GET /metrics, fetched without credentials."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    result = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


# -- logs ---------------------------------------------------------------------


def test_one_json_line_per_request_with_route_ids_and_vtex_headers(hub, capsys):
    card = hub.funded_card(Decimal("10"))
    capsys.readouterr()
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = hub.post(
        f"/giftcards/{card['id']}/transactions",
        {"operation": "Debit", "value": 3, "requestId": "log-1", "redemptionToken": card["redemptionToken"]},
        headers={"x-vtex-operation-id": "op-123", "traceparent": trace},
    )
    assert response.status_code == 200
    tx_id = response.json["id"]
    assert hub.get(f"/giftcards/{card['id']}/transactions/{tx_id}").status_code == 200

    post, get = request_lines(capsys.readouterr().out)
    assert post["route"] == TRANSACTIONS  # the template, never the raw path
    assert (post["method"], post["status"], post["level"]) == ("POST", 200, "INFO")
    assert post["card_id"] == card["id"] and "transaction_id" not in post
    assert post["vtex_operation_id"] == "op-123" and post["traceparent"] == trace
    assert post["request_id"] == response.headers["X-Request-Id"]
    assert isinstance(post["duration_ms"], float) and 0 <= post["duration_ms"] < 5000
    assert post["ts"].endswith("Z") and post["logger"] == "giftcard_provider.requests"
    assert get["route"] == TRANSACTIONS + "/<transactionId>"
    assert (get["card_id"], get["transaction_id"]) == (card["id"], tx_id)
    assert "vtex_operation_id" not in get and "traceparent" not in get


def test_the_request_line_is_the_same_written_directly_or_through_logging(hub, capsys, monkeypatch):
    # As configure_logging leaves it (our stdout handler alone, as under gunicorn), the request line is
    # written directly; with any other handler or a filter on the way it goes through logging. pytest
    # adds its own capture handler to the root logger, so the direct way is taken only without it.
    card = hub.funded_card(Decimal("10"))
    capsys.readouterr()
    sent = {"X-Request-Id": "same-request-id-1", "traceparent": "00-abc-def-01", "x-vtex-operation-id": "op-1"}
    with monkeypatch.context() as patched:
        patched.setattr(logging.getLogger(), "handlers", [])
        assert observability._sole_handler(logging.INFO) is not None
        hub.get(f"/giftcards/{card['id']}", headers=sent)
        hub.get("/giftcards/nope", headers=sent)
    direct = request_lines(capsys.readouterr().out)
    assert observability._sole_handler(logging.INFO) is None  # pytest's handler is back on the root
    hub.get(f"/giftcards/{card['id']}", headers=sent)
    hub.get("/giftcards/nope", headers=sent)
    logged = request_lines(capsys.readouterr().out)

    def comparable(line):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("ts"))
        assert isinstance(line.pop("duration_ms"), float)
        return line

    assert len(direct) == 2 and [comparable(x) for x in direct] == [comparable(x) for x in logged]
    assert direct[1]["error"] == "not_found" and direct[0]["card_id"] == card["id"]


def test_errors_are_logged_with_their_code(hub, client, capsys):
    card = hub.funded_card(Decimal("1"))
    capsys.readouterr()
    assert hub.transaction(card["id"], "Debit", Decimal("5")).status_code == 422
    assert client.get(f"/giftcards/{card['id']}").status_code == 401  # no credentials: refused first
    assert hub.get("/no/such/route").status_code == 404
    refused, unauthenticated, unmatched = request_lines(capsys.readouterr().out)
    assert (refused["status"], refused["error"]) == (422, "insufficient_balance")
    assert (unauthenticated["status"], unauthenticated["route"]) == (401, "/giftcards/<giftCardId>")
    assert unauthenticated["card_id"] == card["id"] and "error" not in unauthenticated
    assert (unmatched["status"], unmatched["route"]) == (404, "unmatched")


def test_request_id_is_accepted_when_sane_and_generated_otherwise(hub, capsys):
    given = "vtex-7f3c1a2b-req"
    assert hub.get("/giftcards/nope", headers={"X-Request-Id": given}).headers["X-Request-Id"] == given
    for insane in ("short", "has spaces in it", "x" * 129, "semi;colon;injection"):
        answered = hub.get("/giftcards/nope", headers={"X-Request-Id": insane}).headers["X-Request-Id"]
        assert answered != insane and len(answered) == 32 and int(answered, 16) >= 0
    first = hub.get("/giftcards/nope").headers["X-Request-Id"]
    assert first != hub.get("/giftcards/nope").headers["X-Request-Id"]
    ids = [line["request_id"] for line in request_lines(capsys.readouterr().out)]
    assert ids[0] == given and len(set(ids)) == len(ids)


def test_secrets_never_reach_the_log(hub, client, capsys, caplog):
    created = hub.create_card()
    code, token = created["redemptionCode"], created["redemptionToken"]
    hub.credit(created["id"], Decimal("20"))
    assert hub.search(code).json[0]["id"] == created["id"]
    assert hub.search(normalise(code).lower()).json[0]["id"] == created["id"]
    debit = hub.transaction(created["id"], "Debit", Decimal("2"), redemptionToken=token, redemptionCode=code)
    assert debit.status_code == 200
    # Refusals and invalid requests carrying the secrets, and wrong credentials.
    assert hub.transaction(created["id"], "Debit", Decimal("2"), redemptionToken=token + "x").status_code == 422
    assert hub.post("/giftcards/_search", {"client": {}, "cart": {"redemptionCode": [code]}}).status_code == 400
    wrong = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN + "-wrong"}
    assert client.get(f"/giftcards/{created['id']}", headers=wrong).status_code == 403

    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert len(request_lines(captured.out)) >= 7  # the requests were logged...
    for secret in (APP_KEY, APP_TOKEN, token, code, normalise(code), normalise(code)[:-4]):
        assert secret not in text  # ...without any secret


def test_probes_and_metrics_log_at_debug_only(app, client, capsys):
    for path in ("/health", "/metrics"):
        assert client.get(path).status_code == 200
    assert request_lines(capsys.readouterr().out) == []

    debug_app = create_app(
        make_settings(log_level="debug"), redis_client=app.extensions["giftcard_provider"]["store"].redis
    )
    try:
        assert debug_app.test_client().get("/health").status_code == 200
        (line,) = request_lines(capsys.readouterr().out)
        assert (line["level"], line["route"], line["status"]) == ("DEBUG", "/health", 200)
    finally:
        create_app(make_settings(), redis_client=app.extensions["giftcard_provider"]["store"].redis)  # back to INFO


def test_unknown_log_level_is_a_config_error(backend):
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        create_app(make_settings(log_level="LOUD"), redis_client=backend)


# -- metrics ------------------------------------------------------------------


def test_metrics_count_requests_and_ledger_outcomes(hub, client):
    before = samples(client)
    card = hub.funded_card(Decimal("10"))
    tx = hub.debit(card["id"], Decimal("4"), rid="m-debit")
    assert hub.debit(card["id"], Decimal("4"), rid="m-debit") == tx  # replay
    assert hub.transaction(card["id"], "Debit", Decimal("50")).status_code == 422
    assert hub.transaction(card["id"], "Credit", Decimal("1"), rid="m-debit").status_code == 409
    assert hub.settle(card["id"], tx, Decimal("3")).status_code == 200
    assert hub.cancel(card["id"], tx, Decimal("1")).status_code == 200
    assert hub.settle(card["id"], tx, Decimal("1")).status_code == 422
    after = samples(client)

    outcomes = "giftcard_ledger_outcomes_total"
    assert delta(before, after, outcomes, operation="credit", outcome="authorized", reason="") == 1
    assert delta(before, after, outcomes, operation="debit", outcome="authorized", reason="") == 1
    assert delta(before, after, outcomes, operation="debit", outcome="replayed", reason="") == 1
    assert delta(before, after, outcomes, operation="debit", outcome="refused", reason="insufficient_balance") == 1
    assert delta(before, after, outcomes, operation="credit", outcome="conflict", reason="operation") == 1
    assert delta(before, after, outcomes, operation="settlement", outcome="settled", reason="") == 1
    assert delta(before, after, outcomes, operation="cancellation", outcome="cancelled", reason="") == 1
    assert delta(before, after, outcomes, operation="settlement", outcome="refused", reason="exceeds_settleable") == 1

    requests = "giftcard_http_requests_total"
    assert delta(before, after, requests, method="POST", route=TRANSACTIONS, status=200) == 3
    assert delta(before, after, requests, method="POST", route=TRANSACTIONS, status=422) == 1
    assert delta(before, after, requests, method="POST", route=TRANSACTIONS, status=409) == 1
    assert delta(before, after, requests, method="POST", route="/giftcards", status=200) == 1
    latency = "giftcard_http_request_duration_seconds"
    assert delta(before, after, latency + "_count", method="POST", route=TRANSACTIONS, status=200) == 3
    assert delta(before, after, latency + "_bucket", method="POST", route=TRANSACTIONS, status=200, le="15.0") == 3


def test_metrics_count_expired_holds(backend, hub):
    app = create_app(make_settings(hold_lifetime_seconds=0), redis_client=backend)
    client, store = app.test_client(), app.extensions["giftcard_provider"]["store"]
    fast = Hub(client, hub.headers)
    card = fast.funded_card(Decimal("5"))
    fast.debit(card["id"], Decimal("2"))
    before = samples(client)
    time.sleep(0.005)
    assert store.expire_holds(card["id"]) == 1
    after = samples(client)
    assert delta(before, after, "giftcard_ledger_outcomes_total", operation="expiry", outcome="expired", reason="") == 1


def test_metrics_count_redis_outages():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1, decode_responses=True, retry=Retry(NoBackoff(), 0))
    client = create_app(make_settings(), redis_client=dead).test_client()
    broken = Hub(client, {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})
    before = samples(client)  # /metrics itself needs no Redis
    response = broken.get("/giftcards/0123456789abcdef0123456789abcdef")
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    after = samples(client)
    errors = "giftcard_redis_errors_total"
    assert delta(before, after, errors, component="ledger", error="ConnectionError") == 1
    requests = "giftcard_http_requests_total"
    assert delta(before, after, requests, method="GET", route="/giftcards/<giftCardId>", status=503) == 1

    with pytest.MonkeyPatch.context() as patched:  # a failing counter leaves the 503 a 503
        patched.setattr(observability.REDIS_ERRORS, "labels", _explode)
        assert broken.get("/giftcards/0123456789abcdef0123456789abcdef").status_code == 503
    assert delta(after, samples(client), "giftcard_observability_errors_total", hook="redis_error") == 1


def test_metrics_need_no_credentials_and_are_not_in_the_protocol_docs(client):
    assert client.get("/metrics").status_code == 200
    assert "/metrics" not in client.get("/openapi.json").json["paths"]


# -- gunicorn: several workers, one set of metrics --------------------------------


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_gunicorn_workers_share_metrics_and_log_json(redis_server, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"left over by a previous run")  # must be cleaned
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "development",
        "REDIS_URL": redis_server.url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "WEB_CONCURRENCY": "2",
        "PROVIDER_API_APP_KEY": APP_KEY,
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "PYTHONPATH": str(ROOT),
    }
    log_file = tmp_path / "gunicorn.out"
    with log_file.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "gunicorn did not start"
            time.sleep(0.1)
        auth = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
        sent = 0
        # A new connection each, until both workers have answered some (each writes its own file).
        while sent < 24 or len(list(metrics_dir.glob("counter_*.db"))) < 2:
            assert sent < 400, "one worker took every request"
            assert _get(base + "/giftcards/0123456789abcdef", auth)[0] == 404
            sent += 1
        totals = set()
        for _ in range(4):  # whichever worker answers /metrics, it reports every worker's counts
            status, text = _get(base + "/metrics")
            assert status == 200
            found = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text.decode())
                for s in family.samples
            }
            labels = (("method", "GET"), ("route", "/giftcards/<giftCardId>"), ("status", "404"))
            totals.add(found[("giftcard_http_requests_total", labels)])
        assert totals == {float(sent)}
    finally:
        server.send_signal(signal.SIGINT)  # quick shutdown
        server.wait(20)
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("message") == "request"]
    assert len([line for line in requests if line["status"] == 404]) == sent
    assert all(line["route"] == "/giftcards/<giftCardId>" for line in requests)


# -- nothing after a committed write turns it into an error --------------------------


def _explode(*args, **kwargs):
    raise ValueError("an unexpected label")


@pytest.mark.parametrize(
    "target, name, hook",
    [
        (observability.LEDGER_OUTCOMES, "labels", "ledger_reply"),
        (observability.HTTP_REQUESTS, "labels", "request_metrics"),
        (observability.HTTP_LATENCY, "labels", "request_metrics"),
        (observability, "_log_request", "request_log"),
    ],
)
def test_a_failing_metric_or_log_line_never_turns_a_committed_write_into_an_error(
    hub, client, monkeypatch, capsys, target, name, hook
):
    card = hub.funded_card(Decimal("10"))
    before = samples(client)
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(target, name, _explode)
        patched.setattr(observability, "_children", {})  # series already seen skip labels()
        debit = hub.transaction(card["id"], "Debit", Decimal("4"), rid="committed-debit")
        credit = hub.transaction(card["id"], "Credit", Decimal("1"), rid="committed-credit")
    assert (debit.status_code, credit.status_code) == (200, 200)
    assert debit.json["id"] and credit.json["id"] and "X-Request-Id" in debit.headers
    assert hub.get(f"/giftcards/{card['id']}").json["balance"] == Decimal("7")  # both are on the card
    failures = [line for line in log_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert [line["message"] for line in failures] == [f"{hook} failed; the answer stands"] * 2
    assert "an unexpected label" in failures[0]["exception"]
    assert delta(before, samples(client), "giftcard_observability_errors_total", hook=hook) == 2


# -- every label from a fixed set; /metrics behind a bearer token ---------------------


def test_made_up_methods_add_no_series(hub, client):
    before = samples(client)
    for i in range(8):
        assert hub.client.open("/giftcards", method=f"BREW{i}", headers=hub.headers).status_code == 405
    after = samples(client)
    assert delta(before, after, "giftcard_http_requests_total", method="other", route="unmatched", status=405) == 8
    methods = {dict(labels).get("method") for _, labels in after}
    assert methods - {None} <= observability.HTTP_METHODS | {"other"}


def test_ledger_labels_come_from_known_values_only(client):
    before = samples(client)
    observability.ledger_reply("gc_authorize", ["k", "Refund"], ["ok", "tx"])
    observability.ledger_reply("gc_authorize", ["k", "Debit"], [b"some_new_refusal"])
    observability.ledger_reply("gc_settle", ["k"], ["conflict", "requestId-of-the-caller"])
    observability.ledger_reply("gc_cancel", ["k"], ["invalid_everything"])
    after = samples(client)
    outcomes = "giftcard_ledger_outcomes_total"
    assert delta(before, after, outcomes, operation="other", outcome="other", reason="") == 1
    assert delta(before, after, outcomes, operation="debit", outcome="refused", reason="other") == 1
    assert delta(before, after, outcomes, operation="settlement", outcome="conflict", reason="other") == 1
    assert delta(before, after, outcomes, operation="cancellation", outcome="invalid", reason="other") == 1


METRICS_TOKEN = "metrics-token-0123456789"


@pytest.mark.parametrize("app_env", ["development", "production"])
def test_metrics_with_a_token_need_it_as_a_bearer_token(backend, app_env):
    client = create_app(make_settings(app_env=app_env, metrics_token=METRICS_TOKEN), redis_client=backend).test_client()
    for authorization in (None, METRICS_TOKEN, f"Bearer {METRICS_TOKEN}x", f"Basic {METRICS_TOKEN}", "Bearer"):
        refused = client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
        assert refused.status_code == 401 and refused.json["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"giftcard_" not in refused.get_data()
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200 and b"giftcard_http_requests_total" in allowed.get_data()


def test_production_without_a_metrics_token_serves_no_metrics(backend, hub):
    client = create_app(make_settings(app_env="production"), redis_client=backend).test_client()
    # No such route: like any unknown path, 401 without the app's credentials and 404 with them.
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 401
    assert client.get("/metrics", headers=hub.headers).status_code == 404
