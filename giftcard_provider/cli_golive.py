"""`flask cards golive`: the go-live check (giftcard_provider/golive.py) as an operator command.

Run it where it reaches the deployment's Redis (`heroku run flask cards golive --url https://...`)
and it also deactivates the test card through the store, which the protocol cannot do; anywhere
else it says so in the checklist and how to do it.
"""

from __future__ import annotations

import json

import click
import redis
from flask import current_app
from flask.cli import with_appcontext

from .errors import ProviderError
from .golive import FAIL, PASS, PROFILE, TODO, Client, GoLive, Report, how_to_deactivate
from .money import UnknownCurrency, exponent_of
from .store import LedgerStore

REASON = "go-live check test card"
MARKS = {PASS: "PASS", FAIL: "FAIL", TODO: "TODO"}


def store_deactivator(store: LedgerStore):
    """Deactivate the test card through `store`, if it is the deployment's store: one that holds the
    card the check just created (card ids are random, so no other store holds it). The id is what the
    deployment answered, so a card is deactivated only if it is this run's test card: owner
    golive.PROFILE and the relation name the run gave it. Any other card is left alone (FAIL)."""

    def deactivate(card_id: str, relation_name: str) -> tuple[str, str]:
        try:
            card = store.card(card_id)
            if card is None:
                return TODO, (
                    f"card {card_id} is still active: this command's REDIS_URL is not the deployment's "
                    f"store (it holds no such card), so it could not deactivate it; {how_to_deactivate(card_id)}"
                )
            if (card.profile_id, card.relation_name) != (PROFILE, relation_name):
                return FAIL, (
                    f"card {card_id} in this command's store is not this run's test card (owner "
                    f"{card.profile_id!r}, relation {card.relation_name!r}; expected {PROFILE!r}, "
                    f"{relation_name!r}): left untouched. The deployment answered that id for the card "
                    "the check created, or REDIS_URL is not the deployment's store"
                )
            store.set_status(card_id, "inactive", REASON)
            card = store.card(card_id)
        except (ProviderError, redis.RedisError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            return TODO, (
                f"card {card_id} is still active: this command could not reach its store ({message}); "
                f"{how_to_deactivate(card_id)}"
            )
        if card is None or card.status != "inactive":
            return FAIL, f"card {card_id}: set to inactive through the store, but reads back {card and card.status}"
        held = card.held_now
        return PASS, f"card {card_id} deactivated through the store (balance {card.balance}, held {held} minor units)"

    return deactivate


def _currency(ctx, param, value: str | None) -> str | None:
    # Not cli.CURRENCY: this module imports nothing from cli.py, which attaches it (no import cycle).
    if value is None:
        return None
    try:
        exponent_of(value.strip().upper())
    except UnknownCurrency as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip().upper()


def render(report: Report) -> str:
    lines = [f"go-live check of {report.url}" + (f" (test card {report.card_id})" if report.card_id else "")]
    lines.append("calls (each on a new connection, so connect and TLS count):")
    for n, call in enumerate(report.calls, 1):
        status = call.status if call.status is not None else "---"
        error = f"  {call.error}" if call.error else ""
        path = call.path.replace(report.card_id, "{card}") if report.card_id else call.path
        lines.append(f"  {n:3}  {call.ms:6} ms  {status}  {call.method:4} {path}{error}")
    lines.append("checklist:")
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        lines.append(f"  {MARKS[check.status]}  {check.name:<{width}}  {check.title}")
        lines.append(f"        {'':<{width}}  {check.reason}")
    counts = report.counts()
    verdict = "ready to register" if report.ok else "NOT ready to register"
    todo = " (an operator's step, not a failure)" if counts[TODO] else ""
    lines.append(f"{verdict}: {counts[PASS]} PASS, {counts[TODO]} TODO{todo}, {counts[FAIL]} FAIL")
    return "\n".join(lines)


@click.command("golive")
@click.option("--url", required=True, help="The deployment's base URL, as it will be registered (serviceUrl).")
@click.option(
    "--app-key",
    envvar="PROVIDER_API_APP_KEY",
    help="X-PROVIDER-API-AppKey the Hub will send. [default: $PROVIDER_API_APP_KEY, else this app's main pair]",
)
@click.option(
    "--app-token",
    envvar="PROVIDER_API_APP_TOKEN",
    help="X-PROVIDER-API-AppToken the Hub will send. [default: $PROVIDER_API_APP_TOKEN, else this app's]",
)
@click.option("--currency", callback=_currency, help="ISO 4217 currency of the test card. [default: the deployment's]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@with_appcontext
def golive(url, app_key, app_token, currency, as_json):
    """Play VTEX's Gift Card Hub against a deployment before registering it.

    Creates one test card through the protocol, probes it with missing and wrong credentials and
    with the requests the Hub really sends, loads, debits, settles and refunds it the Hub's way,
    times every call against VTEX's budgets, and leaves the card at zero and (where this command
    reaches the deployment's Redis) deactivated. Prints a checklist; exits 1 if any check fails.
    """
    own_key, own_token = current_app.config["SETTINGS"].credentials[0]  # what this app's config calls the main pair
    app_key, app_token = app_key or own_key, app_token or own_token
    try:
        client = Client(url, app_key, app_token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url'") from None
    store = current_app.extensions["giftcard_provider"]["store"]
    report = GoLive(client, deactivate=store_deactivator(store), currency=currency).run()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(render(report))
    if not report.ok:
        click.get_current_context().exit(1)
