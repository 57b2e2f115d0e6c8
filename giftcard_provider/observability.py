"""Request logs (one JSON line per request on stdout) and Prometheus metrics.

Logs: every line of the ``giftcard_provider`` loggers is one JSON object on
stdout. The request line carries the method, the route template (never the raw
path), status, latency, card and transaction ids, VTEX's ``x-vtex-operation-id``
and ``traceparent`` when sent, and a request id that is also answered in
``X-Request-Id``. Bodies and credential headers are never logged, so an app
key, app token, redemption token or redemption code cannot reach the log.

Metrics: ``GET /metrics``, outside the protocol, behind its own bearer token
(``METRICS_TOKEN``; without one it is open in development and absent in
production). Every label takes its value from a fixed set, so no request can
add series. Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (set by
gunicorn.conf.py) makes every worker write its samples to files there and the
endpoint adds them up; without it, the process's own registry is served.

Nothing here may turn an answer into an error: the hooks run after the ledger
has committed a write (``ledger_reply``) or after the view has answered
(``_finish_request``), so a failure in them is logged and counted, and the
answer stands.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import random
import re
import sys
import time
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from .config import ConfigError, Settings
from .errors import _REFUSALS, _text

log = logging.getLogger("giftcard_provider.requests")

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{8,128}")
_MAX_TRACE_HEADER = 256
# Endpoints polled by machines: logged at DEBUG only.
QUIET_ENDPOINTS = frozenset({"probes.health", "probes.ready", "observability.metrics"})
PATH_PARAMETERS = {"giftCardId": "card_id", "transactionId": "transaction_id", "tId": "transaction_id"}

# -- metrics ------------------------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 15.0)

HTTP_REQUESTS = Counter("giftcard_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "giftcard_http_request_duration_seconds",
    "Time from the start of the request to its response, by route template.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
LEDGER_OUTCOMES = Counter(
    "giftcard_ledger_outcomes_total",
    "Ledger decisions: operation (debit, credit, settlement, cancellation, expiry), outcome "
    "(authorized, settled, cancelled, expired, replayed, refused, conflict, not_found, invalid), "
    "reason (the refusal code or conflicting field).",
    ["operation", "outcome", "reason"],
)
REDIS_ERRORS = Counter(
    "giftcard_redis_errors_total",
    "Redis calls that failed as unavailable, by component (ledger and limiter: answered 503; metrics: the "
    "books gauges left out of a scrape).",
    ["component", "error"],
)
CODE_LOOKUPS = Counter(
    "giftcard_code_lookups_total",
    "Searches by redemption code: found, not_found (counted against the limits), throttled.",
    ["outcome"],
)
CODE_LOOKUPS_THROTTLED = Counter(
    "giftcard_code_lookups_throttled_total",
    "Searches by redemption code refused by a limit, by the limit that was spent (client, address).",
    ["scope"],
)
OBSERVABILITY_ERRORS = Counter(
    "giftcard_observability_errors_total",
    "Failures inside logging or metrics after an answer was decided (logged; the answer stood), by hook.",
    ["hook"],
)

# Label values come from these sets only (anything else is "other"): a label taken from the
# request would let any caller add series to every scrape until the next restart.
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_OPERATIONS = frozenset({"debit", "credit", "settlement", "cancellation", "expiry"})
_CONFLICT_FIELDS = frozenset({"operation", "value"})
_INVALID_REASONS = frozenset({"invalid_amount", "invalid_amount_precision", "invalid_operation", "invalid_limit"})
_REFUSAL_REASONS = frozenset({*_REFUSALS, "card_moving"})  # the ledger's refusal codes (422s, and the 503)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def http_method_label(method: str) -> str:
    return _bounded(method, HTTP_METHODS)


CODE_LOOKUPS_UNTRACKED = Counter(
    "giftcard_code_lookups_untracked_total",
    "Failed code searches of a subject new to a full limit window (CODE_LOOKUP_MAX_TRACKED): not counted, "
    "so not throttled in that window. Non-zero means a flood of new identities (client) or addresses.",
    ["scope"],
)
CODE_LOOKUP_BRAKE_ALERTS = Counter(
    "giftcard_code_lookup_brake_alerts_total",
    "Times failed code searches from one address reached 80% of CODE_LOOKUP_ADDRESS_LIMIT, the store-wide "
    "brake: alert on it, the brake blocks every shopper's code search once the limit is reached.",
)

_LEDGER_FUNCTIONS = {
    "gc_authorize": None,  # debit or credit: from the call's operation argument
    "gc_settle": "settlement",
    "gc_cancel": "cancellation",
    "gc_expire_holds": "expiry",
    "gc_sweep_bucket": "expiry",  # the sweeper: reply[1] is the holds it released, as gc_expire_holds'
}
_DONE = {"debit": "authorized", "credit": "authorized", "settlement": "settled", "cancellation": "cancelled"}
_REPLY_OUTCOMES = {"replay": "replayed", "conflict": "conflict", "not_found": "not_found"}


# The child of each metric and label values seen: labels() validates and locks on every call, and
# these hooks run on every request (the code-lookup throttle on every search by code). Callers pass
# bounded label values (see OTHER), so this stays small.
_children: dict[tuple, object] = {}


def child(metric, *labels):
    key = (metric, labels)
    kept = _children.get(key)
    if kept is None:
        kept = _children[key] = metric.labels(*labels)
    return kept


def _hook_failed(hook: str) -> None:
    """A logging or metrics hook raised: say so loudly, and go on (see the module docstring)."""
    with contextlib.suppress(Exception):  # the counter is best effort: it must not raise in turn
        OBSERVABILITY_ERRORS.labels(hook).inc()
    log.exception("%s failed; the answer stands", hook)


def ledger_reply(function: str, args: list, reply: list) -> None:
    """Count what a ledger.lua money function decided. Called by LedgerStore for every FCALL, after
    the write committed: it never raises."""
    try:
        _count_ledger_reply(function, args, reply)
    except Exception:
        _hook_failed("ledger_reply")


def _count_ledger_reply(function: str, args: list, reply: list) -> None:
    if function not in _LEDGER_FUNCTIONS or not reply:
        return
    operation = _bounded(_LEDGER_FUNCTIONS[function] or _text(args[1]).lower(), _OPERATIONS)
    status = _text(reply[0])
    if operation == "expiry":
        if status == "ok" and int(reply[1]):
            child(LEDGER_OUTCOMES, operation, "expired", "").inc(int(reply[1]))
        return
    if status == "ok":
        child(LEDGER_OUTCOMES, operation, _DONE.get(operation, OTHER), "").inc()
    elif status == "conflict":
        child(LEDGER_OUTCOMES, operation, "conflict", _bounded(_text(reply[1]), _CONFLICT_FIELDS)).inc()
    elif status in _REPLY_OUTCOMES:
        child(LEDGER_OUTCOMES, operation, _REPLY_OUTCOMES[status], "").inc()
    elif status.startswith("invalid"):
        child(LEDGER_OUTCOMES, operation, "invalid", _bounded(status, _INVALID_REASONS)).inc()
    else:
        child(LEDGER_OUTCOMES, operation, "refused", _bounded(status, _REFUSAL_REASONS)).inc()


def redis_error(component: str, exc: BaseException) -> None:
    """Count a Redis call that failed as unavailable (its caller answers 503: counting must not change that)."""
    try:
        REDIS_ERRORS.labels(component, type(exc).__name__).inc()
    except Exception:
        _hook_failed("redis_error")


def metrics_text() -> bytes:
    """The exposition text: every worker's samples in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class BooksCollector:
    """The ledger's books as gauges, read from Redis at scrape time (one round trip, whatever the
    number of cards: store.books). Minor units, exact integers, per currency. If Redis cannot be
    read, the gauges are left out of this scrape (and the failure counted), never the whole page."""

    TOTALS = {
        "liability": "What the cards hold (available + held): owed to card holders",
        "available": "Spendable on the cards",
        "held": "Held by Debits not yet settled, released or expired",
        "credited": "Loaded by Credits, ever",
        "settled": "Captured from holds, ever",
        "refunded": "Given back after settlement, ever",
        "reversed": "Credits taken back out, ever",
        "expired": "Holds given back by their deadline, ever",
        "cards": "Cards issued",
    }

    def __init__(self, store):
        self.store = store

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        try:
            books = self.store.books_for_metrics()
        except Exception as exc:  # a scrape must answer: the ledger gauges are simply absent this time
            redis_error("metrics", exc)
            return
        for total, text in self.TOTALS.items():
            unit = "" if total == "cards" else " (minor units of the currency)"
            family = GaugeMetricFamily(f"giftcard_books_{total}", text + unit, labels=["currency"])
            for currency, book in books.items():
                family.add_metric([currency], book.as_dict()[total])
            yield family


def books_text(store) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BooksCollector(store))
    return generate_latest(registry)


blp = Blueprint("observability", __name__)


@blp.get("/metrics")
def metrics():
    """Prometheus metrics, for `Authorization: Bearer <METRICS_TOKEN>` when a token is set (open without
    one, which only development allows: production registers no /metrics then, see init_app)."""
    token = current_app.config["SETTINGS"].metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())):
            response = jsonify({"code": "unauthorized", "message": "/metrics needs Authorization: Bearer <token>"})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    store = current_app.extensions["giftcard_provider"]["store"]
    from .webhook_metrics import webhooks_text  # the worker's figures, which it keeps in Redis

    return Response(metrics_text() + books_text(store) + webhooks_text(store), content_type=CONTENT_TYPE_LATEST)


# -- logs ---------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's `fields`."""

    # One encoder for every line: json.dumps with options builds a new one per call.
    _encoder = json.JSONEncoder(default=str, separators=(",", ":"))
    _second: tuple[int | None, str] = (None, "")  # the last whole second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        fields = getattr(record, "fields", None)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields, exception)

    def line(self, created: float, level: str, logger: str, message: str, fields=None, exception=None) -> str:
        entry = {"ts": self._timestamp(created), "level": level, "logger": logger, "message": message}
        if fields:
            entry.update(fields)
        if exception:
            entry["exception"] = exception
        return self._encoder.encode(entry)

    def _timestamp(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds, "2026-11-27T20:57:20.696Z"; a second's text is made once."""
        milliseconds = int(created * 1000)
        second, text = self._second
        if milliseconds // 1000 != second:
            second = milliseconds // 1000
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{text}.{milliseconds % 1000:03d}Z"


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is emitted (gunicorn and pytest replace it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: str) -> None:
    """JSON lines on stdout for the package's loggers; idempotent (create_app may run many times)."""
    if level.upper() not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    logger = logging.getLogger("giftcard_provider")
    if not any(isinstance(h, StdoutHandler) for h in logger.handlers):
        handler = StdoutHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def _request_id(req) -> str:
    given = req.headers.get(REQUEST_ID_HEADER, "")
    # A new id needs to be unique, not secret: 128 bits of the random module (reseeded in every forked
    # worker) cost a fraction of uuid4's read of os.urandom.
    return given if _SANE_REQUEST_ID.fullmatch(given) else f"{random.getrandbits(128):032x}"


def _start_request() -> None:
    g.request_started = time.perf_counter()
    g.request_id = _request_id(request)


def _http_metrics(method: str, route: str, status: int):
    return child(HTTP_REQUESTS, method, route, status), child(HTTP_LATENCY, method, route, status)


def _finish_request(response: Response) -> Response:
    """The request's log line and metrics. The answer is decided (a write may be committed): whatever
    fails here is logged and counted, and the response goes out as it is."""
    try:
        # The request and g once each: every attribute read through their proxies costs a lookup.
        req, context = request._get_current_object(), g._get_current_object()
        started = getattr(context, "request_started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        request_id = getattr(context, "request_id", None) or _request_id(req)
        response.headers[REQUEST_ID_HEADER] = request_id
        rule = req.url_rule
        route = rule.rule if rule else "unmatched"  # a template: a fixed set
    except Exception:
        _hook_failed("request")
        return response
    try:
        _log_request(req, context, response, request_id, route, elapsed)
    except Exception:
        _hook_failed("request_log")
    try:
        requests, latency = _http_metrics(http_method_label(req.method), route, response.status_code)
        requests.inc()
        latency.observe(elapsed)
    except Exception:
        _hook_failed("request_metrics")
    return response


def _log_request(req, context, response: Response, request_id: str, route: str, elapsed: float) -> None:
    level = logging.DEBUG if req.endpoint in QUIET_ENDPOINTS else logging.INFO
    if not log.isEnabledFor(level):
        return
    status = response.status_code
    fields = {
        "request_id": request_id,
        "method": req.method,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if view_args := req.view_args:
        for parameter, field in PATH_PARAMETERS.items():
            if parameter in view_args:
                fields[field] = view_args[parameter]
    headers = req.headers
    for header, field in (("x-vtex-operation-id", "vtex_operation_id"), ("traceparent", "traceparent")):
        if value := headers.get(header):
            fields[field] = value[:_MAX_TRACE_HEADER]
    if status >= 400 and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            fields["error"] = body["code"]
    if (code_lookup := getattr(context, "code_lookup", None)) is not None:
        fields["code_lookup"] = code_lookup
    handler = _sole_handler(level)
    if handler is None:
        # makeRecord + handle is what log.log() does, less its walk up the stack for the caller's file
        # and line, which a request line does not carry.
        log.handle(log.makeRecord(log.name, level, "", 0, "request", (), None, extra={"fields": fields}))
        return
    # The configuration configure_logging makes: the same line, written without a LogRecord or
    # logging's walk to its handler (a third of the line's CPU, issue 12).
    text = handler.formatter.line(time.time(), logging.getLevelName(level), log.name, "request", fields)
    handler.acquire()
    try:
        handler.stream.write(text + handler.terminator)
        handler.flush()
    finally:
        handler.release()


def _sole_handler(level: int) -> StdoutHandler | None:
    """Our stdout handler when it is the only handler a request line reaches and nothing filters the
    line on the way (no handler added by an operator or a test harness, no filter): else None, and
    the line goes through logging."""
    reached = []
    logger = log
    while logger:
        if logger.filters or logger.disabled:
            return None
        reached += logger.handlers
        if not logger.propagate:
            break
        logger = logger.parent
    if len(reached) != 1:
        return None
    (handler,) = reached
    if type(handler) is not StdoutHandler or handler.filters or level < handler.level:
        return None
    return handler if isinstance(handler.formatter, JsonFormatter) else None


def init_app(app: Flask, settings: Settings) -> None:
    """Register the request hooks (first, so that refused credentials are logged too) and /metrics:
    production serves metrics only to a bearer of METRICS_TOKEN, so without one it has no /metrics."""
    configure_logging(settings.log_level)
    app.before_request_funcs.setdefault(None, []).insert(0, _start_request)
    app.after_request(_finish_request)
    if settings.metrics_token or not settings.production:
        app.register_blueprint(blp)
