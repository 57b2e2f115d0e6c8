"""Operator commands: ``flask --app wsgi cards --help``.

Issue and load cards, inspect them, block or deactivate them, verify the
ledger, export journals for finance, and release expired holds (once, or
forever as the Procfile's ``clock`` process). The finance reports
(cli_reports.py), the webhook commands and worker (cli_webhooks.py) and the
go-live check (cli_golive.py) are attached to the same ``cards`` group at the
end of this module. Every command prints text for people, or one JSON document
with ``--json`` (``export`` always writes NDJSON; the reports take ``--format``).
Amounts in JSON are strings with the currency's decimals ("12.50"), next to
integer minor units ("amountMinor": 1250), so no tool ever parses them as
floats. Bad input exits 2 with a usage message; a refusal or an unknown card
exits 1 with one line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import click
import redis
from flask import current_app
from flask.cli import AppGroup
from marshmallow import ValidationError

from schemas.common import epoch_ms, iso_ms
from schemas.giftcards import CreateCardRequestSchema

from .cli_golive import golive
from .codes import mask, new_id, normalise
from .config import Settings
from .errors import InvalidRequest, ProviderError, Refused, StoreUnavailable
from .events import advance as advance_cursor
from .identity import normalise as normalise_identity
from .keys import is_valid_id
from .money import Amount, UnknownCurrency, exponent_of
from .observability import StdoutHandler
from .records import EVENT_DELTAS, Card, Event, Transaction
from .store import LedgerStore

_AMOUNT = re.compile(r"\d+(\.\d+)?")
JOURNAL_PAGE = 1000


@contextlib.contextmanager
def logs_on_stderr():
    """A command's stdout is data (--json, export NDJSON): meanwhile the package's log lines go to stderr."""
    logger = logging.getLogger("giftcard_provider")
    moved = [h for h in logger.handlers if isinstance(h, StdoutHandler)]
    stand_ins = []
    for handler in moved:
        stand_in = logging.StreamHandler(sys.stderr)
        stand_in.setFormatter(handler.formatter)
        stand_in.setLevel(handler.level)
        logger.removeHandler(handler)
        logger.addHandler(stand_in)
        stand_ins.append(stand_in)
    try:
        yield
    finally:
        for stand_in in stand_ins:
            logger.removeHandler(stand_in)
        for handler in moved:
            logger.addHandler(handler)


class OperatorGroup(AppGroup):
    """Every ledger or Redis error becomes one clear line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            with logs_on_stderr():
                return super().invoke(ctx)
        except StoreUnavailable as exc:
            if exc.code != StoreUnavailable.code:  # card_moving, layout_unknown: Redis itself is fine
                raise click.ClickException(exc.message) from exc
            raise click.ClickException(f"{exc.message}: check REDIS_URL and that Redis is up") from exc
        except ProviderError as exc:
            raise click.ClickException(exc.message) from exc
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {exc}") from exc


cards = OperatorGroup("cards", help="Operate the gift card ledger: issue, load, inspect, block, verify, export, sweep.")


# -- parameters ---------------------------------------------------------------


class AmountType(click.ParamType):
    """A positive amount in major units, parsed exactly: "50", "12.50"."""

    name = "amount"

    def convert(self, value, param, ctx) -> Amount:
        if isinstance(value, Amount):
            return value
        text = str(value).strip()
        if not _AMOUNT.fullmatch(text):
            self.fail(f"{value!r} is not an amount in major units, like 50 or 12.50", param, ctx)
        try:
            return Amount.from_decimal(Decimal(text))
        except ValueError as exc:  # zero, or finer than any currency's minor unit
            self.fail(f"{value!r}: {exc}", param, ctx)


class CurrencyType(click.ParamType):
    name = "currency"

    def convert(self, value, param, ctx) -> str:
        code = str(value).strip().upper()
        try:
            exponent_of(code)
        except UnknownCurrency as exc:
            self.fail(str(exc), param, ctx)
        return code


class CardIdType(click.ParamType):
    name = "card_id"

    def convert(self, value, param, ctx) -> str:
        if not is_valid_id(value):
            self.fail(f"{value!r} is not a card id", param, ctx)
        return value


class DateType(click.ParamType):
    """ISO 8601 date or time, UTC unless it carries an offset -> epoch milliseconds."""

    name = "date"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date, like 2025-01-31 or 2025-01-31T12:00:00Z", param, ctx)
        return epoch_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


AMOUNT, CURRENCY, CARD_ID, DATE = AmountType(), CurrencyType(), CardIdType(), DateType()
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
entries_option = click.option(
    "--entries",
    "-n",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the newest journal entries to show.",
)
request_id_option = click.option(
    "--request-id",
    help="Idempotency key of the load: repeating it changes nothing. [default: generated and printed]",
)


# -- helpers ------------------------------------------------------------------


def _store() -> LedgerStore:
    return current_app.extensions["giftcard_provider"]["store"]


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def major(minor: int, exponent: int) -> str:
    """Minor units -> an exact major-unit string with the currency's decimals: 1250, 2 -> "12.50"."""
    return str(Decimal(minor).scaleb(-exponent))


def _emit(document: dict | list) -> None:
    click.echo(json.dumps(document, indent=2))


def _card(store: LedgerStore, card_id: str) -> Card:
    card = store.card(card_id)
    if card is None:
        raise click.ClickException(f"no card {card_id}")
    return card


def _request_id(value: str | None) -> str:
    if value is None:
        return f"cli-{new_id()}"
    if not value.strip() or len(value) > 200:
        raise click.BadParameter("must be 1 to 200 characters, not blank", param_hint="'--request-id'")
    return value


def _checked_minor(amount: Amount, currency: str, param_hint: str) -> int:
    """The amount in the currency's minor units, within MAX_TRANSACTION_AMOUNT, or a usage error."""
    exponent = exponent_of(currency)
    try:
        minor = amount.to_minor(exponent)
    except ValueError:
        raise click.BadParameter(
            f"{currency} has {exponent} decimal places; this amount has {amount.scale}", param_hint=param_hint
        ) from None
    try:
        _store().check_ceiling(amount)
    except InvalidRequest:
        ceiling = _settings().max_transaction_amount
        raise click.BadParameter(f"above MAX_TRANSACTION_AMOUNT ({ceiling})", param_hint=param_hint) from None
    return minor


def card_view(card: Card) -> dict:
    exponent = card.exponent
    return {
        "id": card.id,
        "status": card.status,
        "statusReason": card.status_reason,
        "statusChangedAt": iso_ms(card.status_changed_ms) if card.status_changed_ms else None,
        "currency": card.currency,
        "balance": major(card.balance, exponent),
        "balanceMinor": card.balance,
        "held": major(card.held_now, exponent),
        "heldMinor": card.held_now,
        "expiredHolds": major(card.due_holds, exponent),
        "expiredHoldsMinor": card.due_holds,
        "usable": card.usable,
        "moving": card.moving,
        "redemptionCode": mask(card.code_last4),
        **card.terms(),
        "emissionDate": iso_ms(card.emission_ms),
        "expiringDate": iso_ms(card.expiring_ms),
        "createdAt": iso_ms(card.created_ms),
    }


def journal_view(card_id: str, currency: str, exponent: int, entry: Event) -> dict:
    """One journal entry for people and finance: amounts exact, in minor and in major units."""
    return {
        "cardId": card_id,
        "currency": currency,
        "seq": entry.seq,
        "entryId": entry.id,
        "at": iso_ms(entry.at_ms),
        "kind": entry.type,
        "transactionId": entry.tx_id,
        "ref": entry.ref,
        "amount": major(entry.amount, exponent),
        "amountMinor": entry.amount,
        "availableAfter": major(entry.available, exponent),
        "availableAfterMinor": entry.available,
        "heldAfter": major(entry.held, exponent),
        "heldAfterMinor": entry.held,
    }


def transaction_view(card_id: str, currency: str, tx: Transaction, exponent: int) -> dict:
    view = {
        "id": tx.id,
        "cardId": card_id,
        "currency": currency,
        "operation": tx.operation,
        "value": major(tx.value, exponent),
        "valueMinor": tx.value,
        "date": iso_ms(tx.date_ms),
        "requestId": tx.request_id,
        "orderId": tx.order_id,
    }
    for counter in ("held", "settled", "released", "refunded") if tx.debit else ("settled", "cancelled"):
        view[counter] = major(getattr(tx, counter), exponent)
        view[f"{counter}Minor"] = getattr(tx, counter)
    if tx.debit and tx.hold_deadline_ms:
        view["holdDeadline"] = iso_ms(tx.hold_deadline_ms)
    return view


def _print_card(view: dict, journal: list[dict]) -> None:
    cur = view["currency"]
    status = view["status"] + (f" ({view['statusReason']}, {view['statusChangedAt']})" if view["statusReason"] else "")
    if view["moving"]:
        status += "; being moved by a layout upgrade: no change is accepted here"
    rows = [
        ("status", status),
        ("balance", f"{view['balance']} {cur} available{'' if view['usable'] else ' (not usable now)'}"),
        ("held", f"{view['held']} {cur}"),
    ]
    if view["expiredHoldsMinor"]:
        rows.append(
            ("expired holds", f"{view['expiredHolds']} {cur} (counted as available; the sweeper releases them)")
        )
    rows += [
        ("code", view["redemptionCode"]),
        ("owner", view["profileId"] + (" (restricted to owner)" if view["restrictedToOwner"] else "")),
        ("relation", view["relationName"]),
        ("caption", view["caption"]),
        ("redemptions", "multiple" if view["multipleRedemptions"] else "single"),
        ("credits", "multiple" if view["multipleCredits"] else "single"),
        ("valid", f"{view['emissionDate']} to {view['expiringDate']}"),
        ("created", view["createdAt"]),
    ]
    click.echo(f"card {view['id']}")
    for label, value in rows:
        click.echo(f"  {label:<13} {value}")
    if journal:
        click.echo(f"  last {len(journal)} journal entries:")
    for e in journal:
        click.echo(
            f"    #{e['seq']:<4} {e['at']}  {e['kind']:<14} {e['amount']:>12}  "
            f"available {e['availableAfter']}  held {e['heldAfter']}  tx {e['transactionId']}"
        )


def _show(store: LedgerStore, card: Card, entries: int, as_json: bool) -> None:
    tail = store.journal_tail(card.id, entries) if entries else []
    journal = [journal_view(card.id, card.currency, card.exponent, e) for e in tail]
    view = card_view(card)
    if as_json:
        _emit({**view, "journal": journal})
    else:
        _print_card(view, journal)


# -- cards --------------------------------------------------------------------

_OPTION_OF_FIELD = {
    "relationName": "--relation-name",
    "caption": "--caption",
    "profileId": "--profile-id",
    "emissionDate": "--emission",
    "expiringDate": "--expiring",
    "currencyCode": "--currency",
}


def checked_load(amount: Amount, currency: str) -> int:
    """A card's initial --load in minor units: exact for the currency and within MAX_CARD_BALANCE."""
    minor = _checked_minor(amount, currency, "'--load'")
    if minor > _store().balance_limit(currency):
        raise click.BadParameter(f"above MAX_CARD_BALANCE ({_settings().max_card_balance})", param_hint="'--load'")
    return minor


def checked_card_terms(payload: dict, emission: str | None, expiring: str | None) -> dict:
    """A card's terms as an operator gave them, checked by the schema POST /giftcards uses (one set of
    rules for the API and the CLI); a refusal names the options, not the payload's fields."""
    payload = {**payload, **{k: v for k, v in (("emissionDate", emission), ("expiringDate", expiring)) if v}}
    try:
        return CreateCardRequestSchema().load(payload)
    except ValidationError as exc:
        problems = (f"{_OPTION_OF_FIELD.get(k, k)}: {' '.join(map(str, v))}" for k, v in exc.messages.items())
        raise click.UsageError("; ".join(problems)) from None


@cards.command("issue")
@click.option("--relation-name", required=True, help="The program the card belongs to (VTEX's relationName).")
@click.option("--caption", default="", help="The text shoppers see for the card.")
@click.option("--profile-id", required=True, help="The owner: a VTEX client id or e-mail address.")
@click.option("--currency", type=CURRENCY, help="ISO 4217 code. [default: DEFAULT_CURRENCY]")
@click.option(
    "--restricted-to-owner/--not-restricted",
    default=False,
    show_default=True,
    help="Only the owner may find and spend the card.",
)
@click.option(
    "--multiple-redemptions/--single-redemption",
    default=True,
    show_default=True,
    help="Whether more than one purchase may spend the card.",
)
@click.option(
    "--multiple-credits/--single-credit", default=True, show_default=True, help="Whether the card may be reloaded."
)
@click.option("--emission", metavar="DATE", help="Valid from (ISO 8601, UTC unless an offset is given). [default: now]")
@click.option("--expiring", metavar="DATE", help="Valid until (ISO 8601). [default: CARD_VALIDITY_DAYS after emission]")
@click.option(
    "--valid-days", type=click.IntRange(min=1), help="Valid this many days after emission (not with --expiring)."
)
@click.option("--load", "load_amount", type=AMOUNT, help="Initial balance in major units, e.g. 50 or 12.50.")
@request_id_option
@json_option
def issue(
    relation_name,
    caption,
    profile_id,
    currency,
    restricted_to_owner,
    multiple_redemptions,
    multiple_credits,
    emission,
    expiring,
    valid_days,
    load_amount,
    request_id,
    as_json,
):
    """Issue a card, optionally with an initial load, and print its redemption code.

    The full redemption code is printed once, here, and never again: hand it
    to the customer now (later reads show it masked).
    """
    settings = _settings()
    if expiring and valid_days:
        raise click.UsageError("give --expiring or --valid-days, not both")
    if request_id is not None and load_amount is None:
        raise click.UsageError("--request-id names the initial load: give --load too")
    payload = {
        "relationName": relation_name,
        "caption": caption,
        "profileId": profile_id,
        "restrictedToOwner": restricted_to_owner,
        "multipleRedemptions": multiple_redemptions,
        "multipleCredits": multiple_credits,
        "currencyCode": currency or settings.default_currency,
    }
    body = checked_card_terms(payload, emission, expiring)
    currency = body["currencyCode"].upper()
    emission_ms = epoch_ms(body["emissionDate"]) if "emissionDate" in body else None
    expiring_ms = epoch_ms(body["expiringDate"]) if "expiringDate" in body else None
    if valid_days:
        start = emission_ms if emission_ms is not None else epoch_ms(datetime.now(UTC))
        expiring_ms = start + valid_days * 86_400_000
    if load_amount is not None:
        minor = checked_load(load_amount, currency)
    rid = _request_id(request_id) if load_amount is not None else None

    store = _store()
    card, code = store.create_card(
        relation_name=body["relationName"],
        caption=body["caption"],
        profile_id=normalise_identity(body["profileId"]),
        currency=currency,
        restricted_to_owner=body["restrictedToOwner"],
        multiple_redemptions=body["multipleRedemptions"],
        multiple_credits=body["multipleCredits"],
        emission_ms=emission_ms,
        expiring_ms=expiring_ms,
    )
    if not as_json:
        window = f"{iso_ms(card.emission_ms)} to {iso_ms(card.expiring_ms)}"
        click.echo(f"issued card {card.id} ({currency}), valid {window}")
        click.echo(f"redemption code: {code}")
        click.echo("(shown this once: hand it to the customer now)")
    document = {"card": None, "redemptionCode": code, "load": None}
    failure = None
    if load_amount is not None:
        try:
            _, tx_id, _ = store.authorize(card.id, operation="Credit", amount=load_amount, request_id=rid, token="")
            document["load"] = {"transactionId": tx_id, "requestId": rid}
            if not as_json:
                click.echo(f"loaded {major(minor, card.exponent)} {currency} (transaction {tx_id}, requestId {rid})")
        except ProviderError as exc:
            failure = (
                f"card {card.id} was issued, but the initial load failed: {exc.message}. "
                f"Retry with: flask --app wsgi cards load {card.id} {major(minor, card.exponent)} --request-id {rid}"
            )
            document["load"] = {"error": exc.message, "requestId": rid}
    document["card"] = card_view(_card(store, card.id))
    if as_json:
        _emit(document)
    if failure:
        raise click.ClickException(failure)


@cards.command("load")
@click.argument("card_id", type=CARD_ID)
@click.argument("amount", type=AMOUNT)
@request_id_option
@json_option
def load(card_id, amount, request_id, as_json):
    """Credit AMOUNT (in major units: 25 or 12.50) to a card.

    Safe to retry: run it again with the printed --request-id and nothing
    changes; the same requestId with another amount is refused.
    """
    store = _store()
    card = _card(store, card_id)
    currency = card.currency
    minor = _checked_minor(amount, currency, "'AMOUNT'")
    rid = _request_id(request_id)
    replayed, tx_id, date_ms = store.authorize(card_id, operation="Credit", amount=amount, request_id=rid, token="")
    card = _card(store, card_id)
    if as_json:
        _emit(
            {
                "cardId": card_id,
                "transactionId": tx_id,
                "requestId": rid,
                "replayed": replayed,
                "currency": currency,
                "amount": major(minor, card.exponent),
                "amountMinor": minor,
                "date": iso_ms(date_ms),
                "balance": major(card.balance, card.exponent),
                "balanceMinor": card.balance,
            }
        )
        return
    if replayed:
        click.echo(f"requestId {rid} was already applied as transaction {tx_id}: nothing changed")
    else:
        click.echo(f"loaded {major(minor, card.exponent)} {currency} onto card {card_id}")
        click.echo(f"transaction {tx_id}, requestId {rid}")
    click.echo(f"balance {major(card.balance, card.exponent)} {currency}")


@cards.command("show")
@click.argument("card_id", type=CARD_ID)
@entries_option
@json_option
def show(card_id, entries, as_json):
    """A card: balance, held, status, owner, validity, and its newest journal entries."""
    store = _store()
    _show(store, _card(store, card_id), entries, as_json)


@cards.command("find")
@click.argument("code", required=False)
@entries_option
@json_option
def find(code, entries, as_json):
    """Find the card a redemption code names (case, spaces and dashes do not matter).

    Leave CODE out to type it at a hidden prompt, which keeps it out of the
    shell history.
    """
    if code is None:
        code = click.prompt("Redemption code", hide_input=True)
    if not normalise(code):
        raise click.BadParameter("the code is empty", param_hint="'CODE'")
    store = _store()
    card = store.find_by_code(code)
    if card is None:
        raise click.ClickException("no card has that redemption code")
    _show(store, card, entries, as_json)


@cards.command("transactions")
@click.argument("card_id", type=CARD_ID)
@click.option("--last", type=click.IntRange(min=0), default=50, show_default=True, help="The newest N (0: all).")
@json_option
def transactions(card_id, last, as_json):
    """A card's transactions, oldest first, with what each has settled, released or refunded."""
    store = _store()
    card = _card(store, card_id)
    currency = card.currency
    ids, total = store.transaction_ids(card_id, -last if last else 0, -1)
    views = [transaction_view(card_id, currency, *store.transaction(card_id, tx_id)) for tx_id in ids]
    if as_json:
        _emit({"cardId": card_id, "total": total, "transactions": views})
        return
    click.echo(f"card {card_id}: {total} transaction(s){f', the last {len(views)}' if len(views) < total else ''}")
    for v in views:
        if v["operation"] == "Debit":
            detail = f"held {v['held']} settled {v['settled']} released {v['released']} refunded {v['refunded']}"
        else:
            detail = f"settled {v['settled']} cancelled {v['cancelled']}"
        order = f" order {v['orderId']}" if v["orderId"] else ""
        click.echo(
            f"  {v['date']}  {v['operation']:<6} {v['value']:>12} {currency}  {detail}  "
            f"tx {v['id']} requestId {v['requestId']}{order}"
        )


# -- status -------------------------------------------------------------------

reason_option = click.option("--reason", required=True, help="Why: recorded on the card with the time of the change.")


def _set_status(card_id: str, status: str, reason: str, as_json: bool) -> None:
    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise click.BadParameter("must be 1 to 500 characters, not blank", param_hint="'--reason'")
    store = _store()
    _card(store, card_id)
    try:
        changed, previous, changed_ms = store.set_status(card_id, status, reason)
    except Refused as exc:
        if exc.code != "card_inactive":
            raise
        raise click.ClickException(f"card {card_id} is deactivated, and that is final") from exc
    card = _card(store, card_id)
    if as_json:
        _emit({"changed": changed, "previousStatus": previous, "card": card_view(card)})
        return
    if not changed:
        click.echo(f"card {card_id} is already {status}: nothing changed")
        return
    click.echo(f"card {card_id}: {previous} -> {status} ({reason}, {iso_ms(changed_ms)})")
    held = card.held_now
    if status == "inactive" and (card.balance or held):
        cur, exponent = card.currency, card.exponent
        click.echo(
            f"note: {major(card.balance, exponent)} {cur} available and {major(held, exponent)} {cur} held stay "
            "on the card; its holds can still be settled or cancelled"
        )


@cards.command("block")
@click.argument("card_id", type=CARD_ID)
@reason_option
@json_option
def block(card_id, reason, as_json):
    """Block a card: it accepts no new debit or credit until unblocked.

    Holds already taken can still be settled or cancelled.
    """
    _set_status(card_id, "blocked", reason, as_json)


@cards.command("unblock")
@click.argument("card_id", type=CARD_ID)
@reason_option
@json_option
def unblock(card_id, reason, as_json):
    """Make a blocked card active again (a deactivated card stays deactivated)."""
    _set_status(card_id, "active", reason, as_json)


@cards.command("deactivate")
@click.argument("card_id", type=CARD_ID)
@reason_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def deactivate(card_id, reason, yes, as_json):
    """Deactivate a card for good: it never accepts a new transaction again.

    Its money stays on the ledger (verify and export still see it); holds
    already taken can still be settled or cancelled.
    """
    if not yes:
        click.confirm(f"Deactivate card {card_id} for good?", abort=True)
    _set_status(card_id, "inactive", reason, as_json)


# -- ledger -------------------------------------------------------------------


@cards.command("verify")
@click.argument("card_id", type=CARD_ID, required=False)
@json_option
def verify(card_id, as_json):
    """Recompute cards from their events; exit 1 naming every card that does not add up.

    Checks one card, or every card when CARD_ID is left out (bucket by bucket, from the buckets'
    card lists and event logs); then also every code and owner index entry, and each bucket's
    books against the sum of its cards. Lists the cards left unreachable by an interrupted
    creation (no money: not a failure).
    """
    store = _store()
    report = store.verify(card_id)
    checked, failed, dangling, unreachable = report.checked, report.failed, report.dangling, report.unreachable
    ok = not report.problems
    if as_json:
        _emit({"checked": checked, "ok": ok, "failed": failed, "danglingIndexEntries": dangling,
               "books": report.books, "unreachable": unreachable})  # fmt: skip
        if not ok:
            click.get_current_context().exit(1)
        return
    for problem in report.problems:
        click.echo(problem)
    if unreachable:
        click.echo(
            f"{len(unreachable)} card(s) unreachable after an interrupted creation (never handed out, no money): "
            + ", ".join(unreachable)
        )
    if not ok:
        raise click.ClickException(
            f"ledger verification failed on {len(failed)} of {checked} card(s)"
            + (f": {', '.join(sorted(failed))}" if failed else "")
            + (f"; {len(dangling)} index entr{'y' if len(dangling) == 1 else 'ies'} name no card" if dangling else "")
            + (f"; {len(report.books)} books problem(s)" if report.books else "")
        )
    click.echo(f"verified {checked} card(s): every balance follows from its events, and the books from the cards")


@cards.command("export")
@click.argument("card_id", type=CARD_ID, required=False)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write. [default: stdout]")
@click.option("--since", type=DATE, help="Only entries at or after DATE (ISO 8601, UTC unless an offset is given).")
@click.option("--until", type=DATE, help="Only entries before DATE.")
def export(card_id, output, since, until):
    """Write journals as NDJSON for finance: one JSON object per money movement.

    One card, or every card when CARD_ID is left out (bucket by bucket, from the
    event log: the cost grows with the events, not with the keyspace). Each line
    carries the card id, currency, entry kind, transaction id, time (ISO 8601
    UTC), and every amount twice: exact major units as a string ("12.50") and
    integer minor units. Events that move no money (created, status, imported)
    are left out. A summary goes to stderr.
    """
    store = _store()
    written = 0
    if card_id:
        _card(store, card_id)
        entries, cards_read = _paged(lambda after: store.journal(card_id, after=after, count=JOURNAL_PAGE)), 1
    else:
        entries = store.all_events(start_ms=since, end_ms=until)
        cards_read = sum(book.cards for book in store.books().values())
    for entry in entries:
        if entry.type not in EVENT_DELTAS:
            continue
        if (since is None or entry.at_ms >= since) and (until is None or entry.at_ms < until):
            exponent = exponent_of(entry.currency)
            output.write(json.dumps(journal_view(entry.card_id, entry.currency, exponent, entry)) + "\n")
            written += 1
    click.echo(f"exported {written} journal entries from {cards_read} card(s)", err=True)


def _paged(read_after):
    after = "-"
    while page := read_after(after):
        yield from page
        after = page[-1].stream_id


@cards.command("events")
@click.option("--since", "since", help="Start after this event id (\"<bucket>-<ms>-<n>\"), or at DATE (ISO 8601). "
              "[default: the consumer's cursor, else the beginning]")  # fmt: skip
@click.option("--consumer", help="Keep this consumer's cursor in Redis: start where it stopped, save as it goes.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events (Ctrl-C or SIGTERM stops).")
@click.option(
    "--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Events per read, per bucket."
)
@click.option("--poll", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS")
def events_command(since, consumer, follow, count, poll):
    """Write the event log as NDJSON: every money movement, status change, creation and import.

    Every bucket's log, merged by time within each read (a card's events, and a bucket's, always
    come in their order). Each line has the event's stable id, type, card,
    transaction, ref, currency, the amount and the card's balances after it (exact major units
    and integer minor units) and the card's sequence number. Delivery is at least once: with
    --consumer the cursor is saved after each batch is written, so a consumer that stops before
    that reads the batch again (de-duplicate by id).
    """
    if consumer is not None and not is_valid_id(consumer):
        raise click.BadParameter("1 to 64 letters, digits, '-' or '_'", param_hint="'--consumer'")
    store = _store()
    cursor = store.event_cursor(consumer) if consumer else {}
    if since:
        cursor = _cursor_from(since)
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    written = 0
    try:
        while not stop:
            batch = store.events(cursor, count)
            for event in batch:
                click.echo(json.dumps(event_view(event)))
            written += len(batch)
            if batch:
                cursor = advance_cursor(cursor, batch)
                if consumer:
                    store.save_event_cursor(consumer, cursor)
                continue
            if not follow:
                break
            time.sleep(poll)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(f"{written} event(s)", err=True)


def _cursor_from(since: str) -> dict[str, str]:
    """An event id starts the log just after it in its own bucket (and at its time in the others);
    a date starts every bucket at that time."""
    match = re.fullmatch(r"([0-9a-f]{2})-(\d+)-(\d+)", since)
    if match:
        bucket, ms, n = match.groups()
        return {"*": f"{ms}-{n}", bucket: f"{ms}-{n}"}
    try:
        return {"*": f"{DATE.convert(since, None, None)}-0"}
    except click.BadParameter:
        raise click.BadParameter("an event id (<bucket>-<ms>-<n>) or a date", param_hint="'--since'") from None


def event_view(event) -> dict:
    exponent = exponent_of(event.currency)
    return {
        "id": event.id,
        "type": event.type,
        "at": iso_ms(event.at_ms),
        "cardId": event.card_id,
        "transactionId": event.tx_id,
        "ref": event.ref,
        "currency": event.currency,
        "amount": major(event.amount, exponent),
        "amountMinor": event.amount,
        "availableAfter": major(event.available, exponent),
        "availableAfterMinor": event.available,
        "heldAfter": major(event.held, exponent),
        "heldAfterMinor": event.held,
        "seq": event.seq,
    }


@cards.command("books")
@json_option
def books(as_json):
    """What the ledger owes, per currency, from the books the ledger keeps with every movement.

    Answers in one Redis round trip whatever the number of cards. The liability is what the
    cards hold: available plus held. `verify` checks the books against every card.
    """
    started = time.perf_counter()
    totals = _store().books()
    elapsed_ms = (time.perf_counter() - started) * 1000
    views = {}
    for currency, book in totals.items():
        exponent = exponent_of(currency)
        views[currency] = {
            name: {"amount": major(value, exponent), "amountMinor": value} if name != "cards" else value
            for name, value in book.as_dict().items()
        }
    if as_json:
        _emit({"currencies": views, "readMs": round(elapsed_ms, 3)})
        return
    if not views:
        click.echo("no cards yet")
    for currency, view in views.items():
        click.echo(f"{currency}: liability {view['liability']['amount']} ({view['cards']} card(s))")
        for name in ("available", "held", "credited", "reversed", "authorized", "settled", "released", "expired",
                     "refunded"):  # fmt: skip
            click.echo(f"  {name:<11} {view[name]['amount']:>20}")
    click.echo(f"read in {elapsed_ms:.1f} ms", err=True)


@cards.command("libraries")
@click.option("--prune", is_flag=True, help="Delete every other release's ledger library.")
@json_option
def libraries(prune, as_json):
    """The ledger libraries loaded in Redis: this release's and older ones left by earlier deploys.

    Each release loads its own library beside the others (a rolling deploy runs two releases at
    once). After a deploy, --prune deletes the other releases' libraries; a process of an older
    release that is still running loads its own again on its next call, so pruning is always safe.
    """
    store = _store()
    own = store.library.name
    installed, pruned = store.libraries(prune=prune)
    if as_json:
        _emit({"release": own, "installed": installed, "pruned": pruned})
        return
    for name in installed:
        click.echo(f"{name}{'  (this release)' if name == own else ''}")
    for name in pruned:
        click.echo(f"pruned {name}")


# -- holds --------------------------------------------------------------------


@cards.command("expire-holds")
@json_option
def expire_holds(as_json):
    """Release every hold past its deadline now, on every card holding money; apply the event retention.

    Money calls and reads already treat an expired hold as released; this
    writes the release (an "expired" cancellation) so the records catch up.
    The clock process runs it every minute (see `sweep`).
    """
    result = _store().expire_all_holds()
    if as_json:
        _emit(result)
    else:
        click.echo(
            f"released {result['holdsReleased']} expired hold(s) "
            f"({result['bucketsWithDueHolds']} bucket(s) had holds due)"
        )
        _sweep_notes(result, prefix="")
    if result["errors"]:
        click.get_current_context().exit(1)


def _sweep_notes(result: dict, prefix: str) -> None:
    for bucket, message in result["errors"].items():
        click.echo(f"{prefix}bucket {bucket}: {message}", err=True)
    if result["moving"]:
        click.echo(f"{prefix}{result['moving']} hold(s) skipped: their cards are being moved by a layout upgrade")
    if result["eventsTrimmed"]:
        click.echo(f"{prefix}{result['eventsTrimmed']} event(s) past the retention trimmed")


@cards.command("sweep")
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Time from the start of one pass to the start of the next.",
)
@click.option(
    "--passes", type=click.IntRange(min=0), default=0, help="Stop after N passes. [default: run until stopped]"
)
def sweep(every, passes):
    """Run expire-holds every SECONDS until SIGTERM or Ctrl-C: the Procfile's clock process.

    A failed pass (Redis down) is reported and retried at the next one; a
    SIGTERM (a dyno restart) lets the current pass finish, then exits 0.
    """
    store = _store()
    stop: list[str] = []

    def request_stop(signum, frame):
        stop.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        click.echo(f"sweep: releasing expired holds every {every:g} s")
        done = 0
        while not stop:
            started = time.monotonic()
            try:
                result = store.expire_all_holds()
                if result["holdsReleased"]:
                    click.echo(f"sweep: released {result['holdsReleased']} expired hold(s)")
                _sweep_notes(result, prefix="sweep: ")
            except (ProviderError, redis.RedisError) as exc:
                click.echo(f"sweep: pass failed, retrying in {every:g} s: {exc}", err=True)
            done += 1
            if passes and done >= passes:
                break
            while not stop and (left := started + every - time.monotonic()) > 0:
                time.sleep(min(left, 0.5))  # a signal is seen within half a second
        click.echo(f"sweep: stopped after {done} pass(es){f' on {stop[0]}' if stop else ''}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- layout migration ---------------------------------------------------------


@cards.command("migrate")
@click.option("--cleanup", "clean", is_flag=True, help="Delete the v1 keys a finished migration left behind.")
@json_option
def migrate(clean, as_json):
    """Move a v1 store to layout v2: the Procfile's release phase (docs/ledger-v2.md, "Migration").

    Safe while v1 processes serve (each card is marked before it is copied, and v1 refuses writes to
    marked cards) and safe to repeat: a killed run resumes where it stopped. Once a run has finished
    and verified (on a new store: the first run), later runs return at once. Exit 1 if a card could
    not be moved or verify finds a problem. With --cleanup (once no v1 process is left): delete the
    moved v1 cards and the v1 indexes.
    """
    from . import migration

    lines = {
        "layout": "layout marker: {note}",
        "imported": "{done} card(s) moved",  # every 100 cards
        "skipped": "{done} card(s) moved",
        "failed": "card {card_id} not moved: {note}",
        "indexes": "v1 indexes copied: {note}",
        "rescan": "rescanning for cards v1 created meanwhile",
        "verify": "verifying",
        "finished": "layout v2; the migration finished and verified at {note} (epoch ms): nothing to do",
        "cleanup": "{note}",
    }

    def progress(event: migration.Progress) -> None:
        moved = event.phase in ("imported", "skipped")
        if event.phase in lines and not (moved and event.done % 100) and (as_json or event.phase != "cleanup"):
            click.echo(f"migrate: {lines[event.phase].format(**event.__dict__)}", err=as_json)

    store = _store()
    report = (migration.cleanup if clean else migration.migrate)(store, progress=progress)
    if as_json:
        _emit(report.as_dict())
    elif clean:
        click.echo(f"cleanup: deleted {report.cards} v1 card(s), {report.keys} key(s) in all "
                   f"({report.code_keys} code and {report.owner_keys} owner index keys)")  # fmt: skip
        if report.kept:
            click.echo(f"cleanup: kept {len(report.kept)} v1 card(s) not moved yet and the v1 indexes: "
                       "run `flask cards migrate` first", err=True)  # fmt: skip
    else:
        for card_id, why in report.failed.items():
            click.echo(f"card {card_id}: {why}", err=True)
        for entry in report.skipped_entries:
            click.echo(f"not copied: {entry}", err=True)
        for problem in report.verify.problems if report.verify else []:
            click.echo(problem, err=True)
        click.echo(f"migrate: layout {report.layout_before or 'v1'} -> {report.layout_after}: {report.cards} v1 "
                   f"card(s), {report.imported} moved now, {report.already} moved before; "
                   f"{report.code_entries} code and {report.owner_entries} owner index entries copied")  # fmt: skip
    if not report.ok:
        click.get_current_context().exit(1)


cards.add_command(golive)

from .cli_reports import report  # noqa: E402  (cli_reports builds on this module's helpers)

cards.add_command(report)


from .cli_webhooks import webhooks_group  # noqa: E402 (it imports this module's parameter types)

cards.add_command(webhooks_group)

from . import cli_bulk  # noqa: E402, F401  (its commands join `cards`: issue-batch, batches, load-csv, import-csv)
