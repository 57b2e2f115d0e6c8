"""The go-live check: play VTEX's Gift Card Hub against a deployment before it is registered.

`flask cards golive --url https://...` (giftcard_provider/cli_golive.py) runs `GoLive(...).run()`:
over plain HTTP(S) it creates one test card through the protocol (POST /giftcards), probes it
with missing and wrong credentials, with the odd requests the Hub really sends (`//` paths,
`?ts=`, both media types, unknown headers), loads, debits, settles and refunds it the way the Hub
does (GET the list and sum it before each POST), replays requestIds, unwinds every transaction it
made so the card ends at zero, and times every call against VTEX's budgets. The protocol has no
call that deactivates a card, so that step is a callback the caller supplies (the CLI does it
through the store when it can reach it).

Only the standard library's http.client talks to the deployment: it sends the path exactly as
given, so `//giftcards/...` reaches the server doubled, as the Hub sends it (higher-level clients
normalise paths). Every call opens its own connection, so each time includes connect and TLS:
the slowest case the Hub can meet. No call's body is ever printed beyond an error's first bytes,
and no credential ever is.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from .auth import APP_KEY_HEADER, APP_TOKEN_HEADER

GET_CARD_BUDGET = 1.5  # seconds: checkout gives up on GET card after this (VTEX)
CALL_BUDGET = 15.0  # seconds: the Hub gives up on any call after this

JSON = "application/json"
VTEX_JSON = "application/vnd.vtex.giftcards.v1+json"  # the spec's media type for the card endpoints
MEDIA_TYPES = (JSON, VTEX_JSON)

# Headers seen on the Hub's calls, and one nobody sends: a provider must ignore all of them.
UNKNOWN_HEADERS = {
    "x-vtex-operation-id": "golive-operation",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "X-Forwarded-Proto": "https",
    "X-Request-Id": "golive-request",
    "Accept-Language": "pt-BR",
    "X-Golive-Unknown-Header": "ignore me",
}

# The money the check moves, in whole major units so that every currency (JPY's 0 decimals as
# much as KWD's 3) can carry it.
LOAD, DEBIT, SETTLE_STEP, REFUND_STEP = 10, 6, 3, 2

PROFILE = "golive-check"  # the test card's owner: no shopper has this id
CHECKS = (
    ("create-card", "POST /giftcards creates the test card at balance 0"),
    ("missing-credentials", "missing credentials: 401 with an empty body"),
    ("wrong-credentials", "wrong credentials: 403 with an empty body"),
    ("double-slash", "a doubled slash (//giftcards/...) routes"),
    ("ts-query", "a ?ts= query is ignored"),
    ("media-types", f"{JSON} and {VTEX_JSON} accepted, answers {JSON}"),
    ("unknown-headers", "unknown headers are ignored"),
    ("load", "a Credit loads the card"),
    ("debit-hold", "a Debit holds: the available balance drops at once"),
    ("settlement-sums", "settlements: the Hub's GET-then-POST sums add up"),
    ("equal-partial-refunds", "two equal partial refunds (different requestIds) both apply"),
    ("cancellation-sums", "cancellations: the Hub's GET-then-POST sums add up"),
    ("replayed-request-id", "a replayed requestId answers the original result and changes nothing"),
    ("zero-balance", "the test card is left at zero, nothing held"),
    ("deactivated", "the test card is deactivated"),
    ("latency-get-card", f"GET card within {GET_CARD_BUDGET:g} s"),
    ("latency-all", f"every call within {CALL_BUDGET:g} s"),
)
PASS, FAIL, TODO = "pass", "fail", "todo"  # TODO: an operator's step the check could not take itself

# (card id, relation name the run gave it) -> (status, reason): the CLI's store-backed deactivation
# of the test card, or None. The card id is what the deployment answered: the callee must check the
# card is this run's (owner PROFILE, that relation name) before it touches it.
Deactivate = Callable[[str, str], tuple[str, str]]


class Failed(Exception):
    """A check's expectation not met: the message says what was sent and what came back."""


@dataclass
class Call:
    """One HTTP call: what was sent, what came back, how long it took."""

    method: str
    endpoint: str  # the protocol endpoint, ids left as placeholders: "/giftcards/{card}"
    path: str  # exactly as sent, query included
    status: int | None  # None: no answer (connection refused, timeout, TLS failure ...)
    seconds: float
    body: bytes = b""
    content_type: str = ""
    error: str = ""

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def ms(self) -> int:
        return round(self.seconds * 1000)

    def outcome(self) -> str:
        """What came back, for a reason: "no answer (...)" or "403 with a 12-byte body: {...}"."""
        if self.status is None:
            return f"no answer ({self.error})"
        if not self.body:
            return f"{self.status} with an empty body"
        snippet = self.body[:160].decode("utf-8", "replace")
        return f"{self.status} with a {len(self.body)}-byte body: {snippet}"

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "endpoint": self.endpoint,
            "path": self.path,
            "status": self.status,
            "ms": self.ms,
            "error": self.error or None,
        }


class Client:
    """The deployment at `url`, called like the Hub calls it, with every call recorded in `calls`."""

    def __init__(self, url: str, app_key: str, app_token: str, timeout: float = CALL_BUDGET):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: the service URL takes no query or fragment")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.base = parts.path.rstrip("/")  # the Hub calls {serviceUrl}/giftcards/...
        self.credentials = {APP_KEY_HEADER: app_key, APP_TOKEN_HEADER: app_token}
        self.timeout = timeout
        self.calls: list[Call] = []

    def call(
        self,
        method: str,
        endpoint: str,
        body: object = None,
        *,
        auth: dict[str, str] | None = None,
        media: str = JSON,
        headers: dict[str, str] | None = None,
        double_slash: bool = False,
        query: str = "",
        **ids: str,
    ) -> Call:
        """`endpoint` with `ids` filled in; `auth` replaces the valid credentials (probes)."""
        path = self.base + ("/" if double_slash else "") + endpoint.format(**ids) + query
        sent = {"Accept": media, "Content-Type": media, "User-Agent": "giftcard-provider-golive"}
        sent.update(self.credentials if auth is None else auth)
        sent.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        if self.https:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        status, payload, content_type, error = None, b"", "", ""
        started = time.perf_counter()
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            payload = response.read()
            status, content_type = response.status, response.getheader("Content-Type", "")
        except TimeoutError:
            error = f"nothing within {self.timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            seconds = time.perf_counter() - started
            connection.close()
        call = Call(method, endpoint, path, status, seconds, payload, content_type, error)
        self.calls.append(call)
        return call


@dataclass
class Check:
    name: str
    title: str
    status: str = FAIL
    reason: str = "not run"

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "status": self.status, "reason": self.reason}


@dataclass
class Report:
    url: str
    card_id: str | None
    checks: list[Check]
    calls: list[Call]

    @property
    def ok(self) -> bool:
        """Nothing failed (a TODO is the operator's step, not the deployment's failure)."""
        return all(check.status != FAIL for check in self.checks)

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in (PASS, TODO, FAIL)}

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "ok": self.ok,
            "cardId": self.card_id,
            "counts": self.counts(),
            "checks": [check.as_dict() for check in self.checks],
            "calls": [call.as_dict() for call in self.calls],
        }


@dataclass
class TestCard:
    id: str
    token: str | None
    # Every transaction the provider created for us, whatever check made it: the unwind cancels them all.
    transactions: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (operation, value)


def _json(call: Call, status: int = 200):
    """The answer's JSON (numbers as Decimal, exactly as sent), or Failed if it is not `status` + JSON."""
    if call.status != status:
        raise Failed(f"{call}: expected {status}, got {call.outcome()}")
    try:
        return json.loads(call.body, parse_float=Decimal)
    except ValueError:
        raise Failed(f"{call}: {status} but not JSON: {call.outcome()}") from None


def _number(document, name: str, call: Call) -> Decimal:
    value = document.get(name) if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise Failed(f"{call}: no number {name!r} in the answer: {call.outcome()}")
    return Decimal(value)


def _operations(call: Call) -> list[dict]:
    """A settlements or cancellations list: [{oid, value, date}, ...]."""
    document = _json(call)
    if not isinstance(document, list):
        raise Failed(f"{call}: expected a JSON list, got {call.outcome()}")
    for entry in document:
        _number(entry, "value", call)
        if not isinstance(entry, dict) or not entry.get("oid"):
            raise Failed(f"{call}: an entry without an oid: {call.outcome()}")
    return document


def _total(operations: list[dict]) -> Decimal:
    return sum((Decimal(op["value"]) for op in operations), Decimal(0))


class GoLive:
    """One run of the check against `client`'s deployment. `run()` returns the Report."""

    def __init__(self, client: Client, *, deactivate: Deactivate | None = None, currency: str | None = None):
        self.client = client
        self.deactivate = deactivate
        self.currency = currency
        self.run_id = secrets.token_hex(4)
        self.checks = {name: Check(name, title) for name, title in CHECKS}
        self.card: TestCard | None = None
        self.credit: str | None = None
        self.debit: str | None = None
        # The first success of each kind, replayed by the replayed-request-id check:
        # "Credit"/"Debit" -> (value, requestId, transaction id); "settlement"/"cancellation" ->
        # (transaction id, value, requestId, oid).
        self.originals: dict[str, tuple] = {}

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> Report:
        self._check("create-card", self._create_card)
        first = self.client.calls[0]
        if first.status is None:  # nothing answers: 40 more calls would each wait as long
            for check in list(self.checks.values())[1:]:
                check.reason = f"not run: {self.client.url} did not answer"
            return self._report()
        self._check("missing-credentials", self._probe, 401, self._missing_credentials())
        self._check("wrong-credentials", self._probe, 403, self._wrong_credentials())
        no_card = (self.card, "there is no test card (see create-card)")
        self._check("double-slash", self._tolerates, {"double_slash": True}, needs=[no_card])
        self._check("ts-query", self._tolerates, {"query": f"?ts={int(time.time() * 1000)}"}, needs=[no_card])
        self._check("media-types", self._media_types, needs=[no_card])
        self._check("unknown-headers", self._tolerates, {"headers": UNKNOWN_HEADERS}, needs=[no_card])
        try:
            self._check("load", self._load, needs=[no_card])
            no_credit = (self.credit, "the card was not loaded (see load)")
            self._check("debit-hold", self._debit, needs=[no_card, no_credit])
            no_debit = (self.debit, "there is no Debit (see debit-hold)")
            self._check("settlement-sums", self._settlement_sums, needs=[no_debit])
            self._check("equal-partial-refunds", self._equal_refunds, needs=[no_debit])
            self._check("cancellation-sums", self._cancellation_sums, needs=[no_debit])
            self._check("replayed-request-id", self._replayed, needs=[no_card])
        finally:  # whatever happened, take the test card back to zero and deactivate it
            self._check("zero-balance", self._unwind, needs=[no_card])
            self._check("deactivated", self._deactivate, needs=[no_card])
        self._check("latency-get-card", self._latency_get_card)
        self._check("latency-all", self._latency_all)
        return self._report()

    def _report(self) -> Report:
        card_id = self.card.id if self.card else None
        return Report(self.client.url, card_id, list(self.checks.values()), self.client.calls)

    def _check(self, name: str, step, *args, needs=()) -> None:
        """Run one check's step: its return is the PASS reason (or a (status, reason) pair), Failed a FAIL."""
        check = self.checks[name]
        for value, why in needs:
            if value is None:
                check.reason = f"not run: {why}"
                return
        try:
            outcome = step(*args)
        except Failed as exc:
            check.status, check.reason = FAIL, str(exc)
            return
        except Exception as exc:  # a bug here must not stop the run before the card is unwound
            check.status, check.reason = FAIL, f"the check itself failed (a bug in golive.py): {exc!r}"
            return
        check.status, check.reason = outcome if isinstance(outcome, tuple) else (PASS, outcome)

    # -- requests the way the Hub makes them ---------------------------------------------------------

    def _rid(self, what: str) -> str:
        return f"golive-{self.run_id}-{what}"

    def _search_body(self) -> dict:
        """A loyalty-card search by the test card's owner, as checkout sends it (no code: never throttled)."""
        client = {"id": PROFILE, "email": f"{PROFILE}@example.invalid", "document": self._rid("doc")}
        cart = {"grandTotal": 100, "relationName": None, "redemptionCode": None, "discounts": 0}
        cart |= {"shipping": 0, "taxes": 0, "items": [], "itemsTotal": 100}
        return {"client": client, "cart": cart}

    def _transaction_body(self, operation: str, value: int, rid: str) -> dict:
        """A transaction as the Hub sends it, with the body fields this protocol does not name."""
        order = {
            "orderId": self._rid("order"),
            "sequence": 1,
            "cart": {"grandTotal": value * 100},
            "clientProfile": {"email": f"{PROFILE}@example.invalid", "document": None, "isCorporate": False},
            "shipping": None,
        }
        return {
            "operation": operation,
            "value": value,
            "description": "GiftCardHub (go-live check)",
            "redemptionToken": self.card.token if self.card else None,
            "redemptionCode": None,
            "requestId": rid,
            "orderInfo": order,
            "corporateDocument": None,
            "paymentRelatedSellerInfo": None,
        }

    def _get_card(self, **options) -> tuple[Call, dict]:
        call = self.client.call("GET", "/giftcards/{card}", card=self.card.id, **options)
        document = _json(call)
        if not isinstance(document, dict) or document.get("id") != self.card.id:
            raise Failed(f"{call}: not card {self.card.id}: {call.outcome()}")
        return call, document

    def _balance(self) -> Decimal:
        call, document = self._get_card()
        return _number(document, "balance", call)

    def _expect_balance(self, expected: int, when: str) -> None:
        balance = self._balance()
        if balance != expected:
            raise Failed(f"{when}, GET card shows balance {balance}, expected {expected}")

    def _transaction(self, operation: str, value: int, rid: str) -> tuple[Call, str]:
        body = self._transaction_body(operation, value, rid)
        call = self.client.call("POST", "/giftcards/{card}/transactions", body, card=self.card.id)
        document = _json(call)
        tx_id = document.get("id") if isinstance(document, dict) else None
        if not tx_id or not isinstance(tx_id, str):  # an empty id makes the order stick forever
            raise Failed(f"{call}: no transaction id in the answer: {call.outcome()}")
        self.card.transactions.setdefault(tx_id, (operation, value))
        self.originals.setdefault(operation, (value, rid, tx_id))
        return call, tx_id

    def _list(self, kind: str, tx_id: str) -> tuple[Call, list[dict]]:
        call = self.client.call("GET", f"/giftcards/{{card}}/transactions/{{tx}}/{kind}", card=self.card.id, tx=tx_id)
        return call, _operations(call)

    def _post_operation(self, kind: str, tx_id: str, value, rid: str) -> tuple[Call, dict]:
        endpoint = f"/giftcards/{{card}}/transactions/{{tx}}/{kind}"
        call = self.client.call("POST", endpoint, {"value": value, "requestId": rid}, card=self.card.id, tx=tx_id)
        document = _json(call)
        if not isinstance(document, dict) or not document.get("oid") or not document.get("date"):
            raise Failed(f"{call}: expected {{oid, value, date}}, got {call.outcome()}")
        if _number(document, "value", call) != value:
            raise Failed(f"{call}: sent value {value}, the answer says {document['value']}")
        self.originals.setdefault(kind.removesuffix("s"), (tx_id, value, rid, document["oid"]))
        return call, document

    def _hub_to_target(self, kind: str, tx_id: str, target: int, rid: str) -> str:
        """What the Hub does to settle or cancel up to `target`: GET the list, sum it, POST the rest."""
        call, before = self._list(kind, tx_id)
        done = _total(before)
        if done > target or done != int(done):  # this check moves whole amounts only
            raise Failed(f"{call}: sums to {done}, not a whole amount up to the {target} the Hub asked for")
        if done < target:
            self._post_operation(kind, tx_id, target - int(done), rid)
        call, after = self._list(kind, tx_id)
        if _total(after) != target:
            raise Failed(f"{call}: sums to {_total(after)} after the Hub's POST of {target - done}; expected {target}")
        posted = f"POST {target - done}" if done < target else "no POST needed"
        return f"sum {done} -> {posted} -> sum {target}"

    # -- the checks ----------------------------------------------------------------------------------

    def _create_card(self) -> str:
        expires = datetime.now(UTC) + timedelta(days=1)  # left active by mistake, it still dies tomorrow
        body = {
            "relationName": self._rid("relation"),
            "caption": "go-live check test card",
            "profileId": PROFILE,
            "expiringDate": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.currency:
            body["currencyCode"] = self.currency
        call = self.client.call("POST", "/giftcards", body)
        if call.status in (401, 403):
            raise Failed(
                f"{call}: {call.outcome()}: the deployment refuses the credentials this check sends "
                "(--app-key/--app-token, else PROVIDER_API_APP_KEY/PROVIDER_API_APP_TOKEN): "
                "they must be the pair the Hub will be registered with"
            )
        document = _json(call)
        card_id = document.get("id") if isinstance(document, dict) else None
        if not card_id or not isinstance(card_id, str):
            raise Failed(f"{call}: no card id in the answer ({call.status})")
        token = document.get("redemptionToken")
        self.card = TestCard(card_id, token if isinstance(token, str) else None)
        balance = _number(document, "balance", call)
        if balance != 0:
            raise Failed(f"{call}: a new card must start at balance 0, this one has {balance}")
        if not self.card.token:
            raise Failed(f"{call}: no redemptionToken in the answer (the Hub sends it with every Debit)")
        return f"card {card_id}, balance 0"

    def _probe_targets(self) -> list[tuple[str, str, object, dict]]:
        """The endpoints the probes call; while they run the card is at zero, so even a provider that
        ignored credentials could not let the probe's Debit move money."""
        card = self.card.id if self.card else "golive-no-card"
        tx = self._rid("no-such-transaction")
        operation = {"value": 1, "requestId": self._rid("probe")}
        ids = {"card": card, "tx": tx}
        return [
            ("GET", "/giftcards/{card}", None, ids),
            ("POST", "/giftcards/_search", self._search_body(), {}),
            ("POST", "/giftcards/{card}/transactions", self._transaction_body("Debit", 1, self._rid("probe")), ids),
            ("GET", "/giftcards/{card}/transactions", None, ids),
            ("POST", "/giftcards/{card}/transactions/{tx}/settlements", operation, ids),
            ("POST", "/giftcards/{card}/transactions/{tx}/cancellations", operation, ids),
        ]

    def _missing_credentials(self) -> list[tuple[str, dict]]:
        key, token = self.client.credentials[APP_KEY_HEADER], self.client.credentials[APP_TOKEN_HEADER]
        return [
            ("no credentials", {}),
            ("no AppToken", {APP_KEY_HEADER: key}),
            ("no AppKey", {APP_TOKEN_HEADER: token}),
        ]

    def _wrong_credentials(self) -> list[tuple[str, dict]]:
        key, token = self.client.credentials[APP_KEY_HEADER], self.client.credentials[APP_TOKEN_HEADER]
        return [
            ("wrong AppToken", {APP_KEY_HEADER: key, APP_TOKEN_HEADER: secrets.token_hex(16)}),
            ("wrong AppKey", {APP_KEY_HEADER: secrets.token_hex(8), APP_TOKEN_HEADER: token}),
        ]

    def _probe(self, expected: int, variants: list[tuple[str, dict]]) -> str:
        problems = []
        targets = self._probe_targets()
        for label, auth in variants:
            for method, endpoint, body, ids in targets:
                call = self.client.call(method, endpoint, body, auth=auth, **ids)
                if call.status == expected and not call.body:
                    continue
                warning = (
                    " (a 2xx to a probe: the Hub cancels this provider's transactions)"
                    if call.status and 200 <= call.status < 300
                    else ""
                )
                problems.append(f"{label}: {call.method} {call.endpoint} answered {call.outcome()}{warning}")
        if problems:
            raise Failed(f"expected {expected} with an empty body; " + "; ".join(problems))
        kinds = ", ".join(label for label, _ in variants)
        return f"{len(variants) * len(targets)} probes ({kinds}) on {len(targets)} endpoints"

    def _tolerates(self, options: dict) -> str:
        """GET card, search and the transactions list, sent with `options`, answer as usual."""
        call, _ = self._get_card(**options)
        sent = [str(call)]
        search = self.client.call("POST", "/giftcards/_search", self._search_body(), **options)
        if not isinstance(_json(search), list):
            raise Failed(f"{search}: expected a JSON list, got {search.outcome()}")
        listing = self.client.call("GET", "/giftcards/{card}/transactions", card=self.card.id, **options)
        if not isinstance(_json(listing), list):
            raise Failed(f"{listing}: expected a JSON list, got {listing.outcome()}")
        sent += [str(search), str(listing)]
        if "headers" in options:
            return f"{len(options['headers'])} extra headers on GET card, search and the transactions list"
        return "; ".join(sent).replace(self.card.id, "{card}")

    def _media_types(self) -> str:
        for media in MEDIA_TYPES:
            for call in (
                self._get_card(media=media)[0],
                self.client.call("POST", "/giftcards/_search", self._search_body(), media=media),
            ):
                document = _json(call)
                if call.endpoint.endswith("_search") and not isinstance(document, list):
                    raise Failed(f"{call} ({media}): expected a JSON list, got {call.outcome()}")
                if call.content_type.split(";")[0].strip().lower() != JSON:
                    raise Failed(f"{call} ({media}): answered Content-Type {call.content_type!r}, not {JSON}")
        return "GET card and search with each as Content-Type and Accept"

    def _load(self) -> str:
        _, self.credit = self._transaction("Credit", LOAD, self._rid("credit"))
        self._expect_balance(LOAD, f"after a Credit of {LOAD}")
        return f"Credit {LOAD} -> balance {LOAD}"

    def _debit(self) -> str:
        _, self.debit = self._transaction("Debit", DEBIT, self._rid("debit"))
        self._expect_balance(LOAD - DEBIT, f"after a Debit of {DEBIT} on {LOAD}")
        return f"Debit {DEBIT} -> balance {LOAD - DEBIT}"

    def _settlement_sums(self) -> str:
        steps = []
        for n, target in enumerate((SETTLE_STEP, DEBIT, DEBIT)):
            steps.append(self._hub_to_target("settlements", self.debit, target, self._rid(f"settle-{n}")))
        _, listed = self._list("settlements", self.debit)
        if len(listed) != 2:
            raise Failed(f"GET settlements lists {len(listed)} entries after two POSTs")
        self._expect_balance(LOAD - DEBIT, "after settling")  # settling moves nothing on the card
        return "Debit " + str(DEBIT) + ": " + "; ".join(steps)

    def _equal_refunds(self) -> str:
        _, before = self._list("cancellations", self.debit)
        if before:
            raise Failed(f"GET cancellations lists {len(before)} entries before any cancellation")
        _, first = self._post_operation("cancellations", self.debit, REFUND_STEP, self._rid("refund-a"))
        _, second = self._post_operation("cancellations", self.debit, REFUND_STEP, self._rid("refund-b"))
        if first["oid"] == second["oid"]:
            raise Failed(f"the second refund of {REFUND_STEP} (another requestId) answered the first one's oid")
        call, listed = self._list("cancellations", self.debit)
        if len(listed) != 2 or _total(listed) != 2 * REFUND_STEP:
            raise Failed(f"{call}: {len(listed)} entries summing to {_total(listed)}, expected 2 of {REFUND_STEP}")
        self._expect_balance(LOAD - DEBIT + 2 * REFUND_STEP, f"after two refunds of {REFUND_STEP}")
        return f"2 x {REFUND_STEP} under two requestIds: 2 entries, balance {LOAD - DEBIT + 2 * REFUND_STEP}"

    def _cancellation_sums(self) -> str:
        steps = [self._hub_to_target("cancellations", self.debit, DEBIT, self._rid(f"cancel-{n}")) for n in range(2)]
        self._expect_balance(LOAD, f"after cancelling the Debit of {DEBIT} in full")
        return f"Debit {DEBIT}: " + "; ".join(steps)

    def _replayed(self) -> str:
        """Send the first Credit, Debit, settlement and cancellation again, same requestId and value,
        after everything else has happened to them: each must answer its original id, and the
        balance and the lists must not move (successes are remembered as long as they exist)."""
        missing = [kind for kind in ("Credit", "Debit", "settlement", "cancellation") if kind not in self.originals]
        done, bad = [], []
        before = self._balance()
        for operation in ("Credit", "Debit"):
            if operation in self.originals:
                value, rid, tx_id = self.originals[operation]
                try:
                    _, again = self._transaction(operation, value, rid)
                except Failed as exc:
                    bad.append(f"{operation} replay: {exc}")
                    continue
                (done if again == tx_id else bad).append(f"{operation} -> {'same' if again == tx_id else 'a NEW'} id")
        for kind in ("settlement", "cancellation"):
            if kind in self.originals:
                tx_id, value, rid, oid = self.originals[kind]
                try:
                    _, listed = self._list(f"{kind}s", tx_id)
                    _, again = self._post_operation(f"{kind}s", tx_id, value, rid)
                    _, after = self._list(f"{kind}s", tx_id)
                except Failed as exc:
                    bad.append(f"{kind} replay: {exc}")
                    continue
                same = again["oid"] == oid and len(after) == len(listed)
                outcome = (
                    "same oid, list unchanged" if same else f"oid {again['oid']}, list {len(listed)} -> {len(after)}"
                )
                (done if same else bad).append(f"{kind} -> {outcome}")
        balance = self._balance()
        (done if balance == before else bad).append(f"balance {before} -> {balance}")
        if missing:  # a replay that could not be sent proves nothing: not a PASS
            bad.append(f"no {', '.join(missing)} to replay (see the checks above)")
        if bad:
            raise Failed("; ".join(bad))
        return "replayed " + "; ".join(done)

    def _unwind(self) -> str:
        """Cancel every transaction the provider made for us in full (newest first), the Hub's way;
        then GET card must show 0 and every cancellation list the transaction's whole value."""
        problems = []
        for n, (tx_id, (operation, value)) in enumerate(reversed(self.card.transactions.items())):
            try:
                self._hub_to_target("cancellations", tx_id, value, self._rid(f"unwind-{n}"))
            except Failed as exc:
                problems.append(f"{operation} {tx_id}: {exc}")
        balance = self._balance()
        if balance != 0:
            problems.insert(0, f"GET card shows balance {balance}")
        if problems:
            raise Failed("the test card is not back to zero: " + "; ".join(problems))
        made = ", ".join(f"{op} {value}" for op, value in self.card.transactions.values()) or "none"
        return f"balance 0; every transaction cancelled in full ({made})"

    def _deactivate(self) -> tuple[str, str]:
        if self.deactivate is None:
            return TODO, f"card {self.card.id} is still active: {how_to_deactivate(self.card.id)}"
        return self.deactivate(self.card.id, self._rid("relation"))

    def _latency_get_card(self) -> str:
        calls = [c for c in self.client.calls if c.method == "GET" and c.endpoint == "/giftcards/{card}"]
        if not calls:
            raise Failed("no GET card call was made")
        slow = [c for c in calls if c.status is None or c.seconds > GET_CARD_BUDGET]
        if slow:
            over = "; ".join(_timed(c) for c in slow)
            raise Failed(f"{len(slow)} of {len(calls)} over {GET_CARD_BUDGET:g} s: {over}")
        return _spread(calls)

    def _latency_all(self) -> str:
        calls = self.client.calls
        slow = [c for c in calls if c.status is None or c.seconds > CALL_BUDGET]
        if slow:
            over = "; ".join(_timed(c) for c in slow)
            raise Failed(f"{len(slow)} of {len(calls)} over {CALL_BUDGET:g} s or unanswered: {over}")
        return _spread(calls)


def _timed(call: Call) -> str:
    return f"{call} {call.ms} ms" + ("" if call.status else f" ({call.error})")


def _spread(calls: list[Call]) -> str:
    slowest = max(calls, key=lambda c: c.seconds)
    median = round(statistics.median(c.seconds for c in calls) * 1000)
    return f"{len(calls)} calls, median {median} ms, slowest {slowest.ms} ms ({slowest.method} {slowest.endpoint})"


def how_to_deactivate(card_id: str) -> str:
    return (
        f"deactivate it where REDIS_URL is the deployment's Redis, e.g. "
        f"`heroku run flask cards deactivate {card_id} --reason 'go-live check test card' --yes` "
        "(or run this check there: `heroku run flask cards golive --url ...` deactivates it itself)"
    )
