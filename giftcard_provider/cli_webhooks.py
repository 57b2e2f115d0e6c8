"""Operator commands for webhooks: ``flask --app wsgi cards webhooks --help`` (docs/webhooks.md).

add, list, remove, pause and resume endpoints; rotate an endpoint's secret; see failing deliveries
(lanes retrying now, and dead letters); replay from a cursor or one event; and ``work``, the
Procfile's worker process.
"""

from __future__ import annotations

import json
import signal

import click
from flask import current_app

from schemas.common import iso_ms

from .cli import DATE, OperatorGroup
from .errors import InvalidRequest
from .webhook_worker import Worker
from .webhooks import (
    EVENT_TYPES,
    MAX_ROTATION_OVERLAP_HOURS,
    ROTATION_OVERLAP_HOURS,
    Webhooks,
    parse_event_id,
)

webhooks_group = OperatorGroup(
    "webhooks", help="Deliver the event log to HTTP endpoints, signed (Standard Webhooks): configure, inspect, replay."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


def _hooks() -> Webhooks:
    return Webhooks(current_app.extensions["giftcard_provider"]["store"])


def _start(value: str, option: str) -> str:
    """now | beginning | an event id | a date -> what Webhooks.add / replay_from take."""
    if value in ("now", "beginning") or parse_event_id(value):
        return value
    try:
        ms = DATE.convert(value, None, None)
    except click.BadParameter:
        raise click.BadParameter(
            "now, beginning, an event id (<bucket>-<ms>-<n>) or a date (ISO 8601)", param_hint=option
        ) from None
    if ms < 0:
        raise click.BadParameter(f"{value!r} is before 1970-01-01: no event is that old", param_hint=option)
    return str(ms)


def _types(value: str | None) -> list[str]:
    types = [t.strip() for t in (value or "").split(",") if t.strip()]
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        known = ", ".join(EVENT_TYPES)
        raise click.BadParameter(f"unknown {', '.join(unknown)}; known: {known}", param_hint="'--types'")
    return types


def _usage(exc: InvalidRequest, hint: str):
    return click.BadParameter(exc.message, param_hint=hint)


def _usage_of(exc: InvalidRequest, hints: dict[str, str]):
    """A usage error (exit 2) pointing at the option `exc` is about (Webhooks.add: details["field"])."""
    hint = hints.get(exc.details.get("field"))
    return click.BadParameter(exc.message, param_hint=hint) if hint else click.UsageError(exc.message)


@webhooks_group.command("add")
@click.argument("url")
@click.option("--types", help=f"Only these event types, comma-separated. [default: all] ({', '.join(EVENT_TYPES)})")
@click.option("--description", default="", help="A note for operators (what receives these events).")
@click.option("--start", default="now", show_default=True,
              help="First event to deliver: now (events from now on), beginning (the whole retained log), "
              "an event id or a date (ISO 8601), inclusive.")  # fmt: skip
@json_option
def add(url, types, description, start, as_json):
    """Add an endpoint and print its signing secret: shown this once, never again.

    URL must be https:// (http:// only with APP_ENV=development). The worker process starts
    delivering within a second or so.
    """
    hooks = _hooks()
    try:
        endpoint = hooks.add(url, types=_types(types), description=description, start=_start(start, "'--start'"))
    except InvalidRequest as exc:
        hints = {"url": "URL", "description": "'--description'", "types": "'--types'", "start": "'--start'"}
        raise _usage_of(exc, hints) from None
    view = {"id": endpoint.id, "url": endpoint.url, "types": list(endpoint.types), "description": description,
            "secret": endpoint.secret}  # fmt: skip
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    click.echo(f"added endpoint {endpoint.id} -> {endpoint.url}")
    click.echo(f"  events  {', '.join(endpoint.types) or 'all types'}; from {start}")
    click.echo(f"  secret  {endpoint.secret}")
    click.echo("  (the secret is shown this once: give it to the receiver now; `list` never shows it)")


@webhooks_group.command("list")
@json_option
def list_endpoints(as_json):
    """Every endpoint: URL, filter, state, events pending, delivered, failing lanes, dead letters."""
    hooks = _hooks()
    endpoints = hooks.endpoints()
    pending = hooks.pending(endpoints)
    now_ms = hooks.store.now_ms()  # Redis's clock, as previous_until's
    views = []
    for e in endpoints:
        stats = hooks.stats(e.id)
        views.append({
            "id": e.id, "url": e.url, "types": list(e.types), "description": e.description,
            "paused": e.paused, "pausedReason": e.paused_reason, "createdAt": iso_ms(e.created_ms),
            "pending": pending[e.id], "delivered": stats.delivered, "retryingLanes": len(hooks.retrying(e.id)),
            "deadLetters": hooks.dead_count(e.id),
            "previousSecretSignsUntil": iso_ms(e.previous_until_ms) if e.previous_until_ms > now_ms else None,
        })  # fmt: skip
    if as_json:
        click.echo(json.dumps({"endpoints": views}, indent=2))
        return
    if not views:
        click.echo("no webhook endpoints (add one: flask cards webhooks add URL)")
    for v in views:
        state = f"paused ({v['pausedReason']})" if v["paused"] and v["pausedReason"] else (
            "paused" if v["paused"] else "active")  # fmt: skip
        click.echo(f"{v['id']}  {v['url']}  {state}")
        if v["description"]:
            click.echo(f"  {v['description']}")
        click.echo(f"  events {', '.join(v['types']) or 'all types'}; pending {v['pending']}, delivered "
                   f"{v['delivered']}, lanes retrying {v['retryingLanes']}, "
                   f"dead letters {v['deadLetters']}")  # fmt: skip
        if v["previousSecretSignsUntil"]:
            click.echo(f"  secret rotated: the previous one signs too until {v['previousSecretSignsUntil']}")


@webhooks_group.command("remove")
@click.argument("endpoint_id")
def remove(endpoint_id):
    """Remove an endpoint with its cursor, dead letters and counters. Nothing more is sent to it."""
    endpoint = _hooks().remove(endpoint_id)
    click.echo(f"removed endpoint {endpoint.id} ({endpoint.url})")


@webhooks_group.command("pause")
@click.argument("endpoint_id")
@click.option("--reason", default="paused by an operator", show_default=True)
def pause(endpoint_id, reason):
    """Stop delivering to an endpoint; its events wait (the cursor stays) until `resume`."""
    changed = _hooks().set_paused(endpoint_id, True, reason)
    click.echo(f"{endpoint_id} {'paused' if changed else 'was already paused'}")


@webhooks_group.command("resume")
@click.argument("endpoint_id")
def resume(endpoint_id):
    """Deliver again to a paused endpoint, from where it stopped."""
    changed = _hooks().set_paused(endpoint_id, False)
    click.echo(f"{endpoint_id} {'resumed' if changed else 'was not paused'}")


@webhooks_group.command("rotate-secret")
@click.argument("endpoint_id")
@click.option("--overlap", type=int, default=ROTATION_OVERLAP_HOURS, show_default=True,
              help=f"Hours the secret replaced keeps signing beside the new one (0 to {MAX_ROTATION_OVERLAP_HOURS}; "
              "0: it stops now).")  # fmt: skip
@json_option
def rotate_secret(endpoint_id, overlap, as_json):
    """Give an endpoint a new signing secret and print it: shown this once, never again.

    Until the overlap ends every delivery carries two signatures, by the new secret and by the one it
    replaces, so the receiver can move to the new secret whenever it likes within that time without
    refusing a delivery. A rotation during another's overlap stops the oldest secret at once.
    """
    try:
        endpoint, secret = _hooks().rotate_secret(endpoint_id, overlap)
    except InvalidRequest as exc:
        raise _usage(exc, "'--overlap'") from None
    until = iso_ms(endpoint.previous_until_ms) if endpoint.previous_until_ms else None
    if as_json:
        click.echo(json.dumps({"id": endpoint.id, "secret": secret, "previousSecretSignsUntil": until}, indent=2))
        return
    click.echo(f"new secret for {endpoint.id} ({endpoint.url})")
    click.echo(f"  secret  {secret}")
    click.echo("  (the secret is shown this once: give it to the receiver now; `list` never shows it)")
    if until:
        click.echo(f"  the previous secret signs too until {until}: each delivery carries both signatures")
    else:
        click.echo("  the previous secret signs nothing from now on")


@webhooks_group.command("failures")
@click.argument("endpoint_id")
@click.option(
    "--count", "-n", type=click.IntRange(min=1), default=20, show_default=True, help="Newest dead letters shown."
)
@json_option
def failures(endpoint_id, count, as_json):
    """Failing deliveries: lanes whose head event is being retried now, and dead letters (events given
    up after WEBHOOK_MAX_ATTEMPTS), newest first, each with its last error."""
    hooks = _hooks()
    hooks.endpoint(endpoint_id)
    retrying = hooks.retrying(endpoint_id)
    dead = hooks.dead_letters(endpoint_id, count)
    total = hooks.dead_count(endpoint_id)
    retry_views = [{"bucket": b, "event": f"{b}-{r.stream_id}", "attempts": r.attempts,
                    "nextAttemptAt": iso_ms(r.next_ms), "error": r.error} for b, r in retrying.items()]  # fmt: skip
    dead_views = [{"event": d.event_id, "type": d.event_type, "cardId": d.card_id, "attempts": d.attempts,
                   "failedAt": iso_ms(d.at_ms), "error": d.error} for d in dead]  # fmt: skip
    if as_json:
        click.echo(json.dumps({"retrying": retry_views, "deadLetters": dead_views, "deadLetterCount": total}, indent=2))
        return
    click.echo(f"{len(retry_views)} lane(s) retrying")
    for r in retry_views:
        click.echo(f"  {r['event']}  attempt {r['attempts']} failed; next at {r['nextAttemptAt']}: {r['error']}")
    click.echo(f"{total} dead letter(s){f', newest {len(dead_views)}' if total > len(dead_views) else ''}")
    for d in dead_views:
        click.echo(f"  {d['failedAt']}  {d['event']}  {d['type']:<14} after {d['attempts']} attempt(s): {d['error']}")


@webhooks_group.command("replay")
@click.argument("endpoint_id")
@click.option("--from", "start", metavar="ID|DATE",
              help="Move the endpoint's cursor: the worker delivers again from this event id or date "
              "(inclusive; `beginning` for the whole retained log), in order.")  # fmt: skip
@click.option("--event", "event_id", help="Send this one event now, from this command (one attempt).")
@click.option("--failed", is_flag=True, help="Send every dead letter now, oldest first, one attempt each.")
def replay(endpoint_id, start, event_id, failed):
    """Deliver events again: from a cursor (by the worker), or one event or the dead letters (now).

    A dead letter that is delivered by --event or --failed leaves the dead letters.
    """
    if sum(map(bool, (start, event_id, failed))) != 1:
        raise click.UsageError("give exactly one of --from, --event, --failed")
    hooks = _hooks()
    endpoint = hooks.endpoint(endpoint_id)
    if start:
        try:
            hooks.replay_from(endpoint_id, _start(start, "'--from'"))
        except InvalidRequest as exc:
            raise _usage_of(exc, {"start": "'--from'"}) from None
        click.echo(f"{endpoint_id}: cursor moved to {start}; the worker delivers from there"
                   + (" (the endpoint is paused: resume it)" if endpoint.paused else ""))  # fmt: skip
        return
    if event_id:
        try:
            event = hooks.event(event_id)
        except InvalidRequest as exc:
            raise _usage(exc, "'--event'") from None
        if event is None:
            raise click.ClickException(f"no event {event_id} in the log (unknown, or trimmed by the retention)")
        targets = [(event, [d.entry_id for d in hooks.dead_letters(endpoint_id) if d.event_id == event_id])]
    else:
        letters = list(reversed(hooks.dead_letters(endpoint_id)))
        targets = []
        for letter in letters:
            event = hooks.event(letter.event_id)
            if event is None:
                click.echo(f"  {letter.event_id}: no longer in the log (trimmed by the retention): left as is")
                continue
            targets.append((event, [letter.entry_id]))
    sent = failed_count = 0
    for event, entries in targets:
        attempt = hooks.deliver_now(endpoint, event)
        if attempt.ok:
            sent += 1
            hooks.drop_dead_letters(endpoint_id, entries)
            click.echo(f"  {event.id}: delivered (HTTP {attempt.status}, {attempt.seconds * 1000:.0f} ms)")
        else:
            failed_count += 1
            click.echo(f"  {event.id}: failed: {attempt.error}")
    click.echo(f"{sent} delivered, {failed_count} failed")
    if failed_count:
        click.get_current_context().exit(1)


@webhooks_group.command("work")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Lanes delivered at once (each lane is one bucket of one endpoint, in order).")  # fmt: skip
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=1), default=30.0, show_default=True,
              metavar="SECONDS", help="How long a lane stays this worker's without renewal (a killed worker's "
              "lanes pass to another after this).")  # fmt: skip
@click.option("--poll", type=click.FloatRange(min=0.01), default=0.25, show_default=True, metavar="SECONDS",
              help="Pause between two looks for new events.")  # fmt: skip
@click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="Events read per lane per look.")  # fmt: skip
def work(threads, lease_seconds, poll, batch):
    """Deliver the event log to every endpoint until SIGTERM or Ctrl-C: the Procfile's worker process.

    Several workers may run at once: they share the lanes (a lease each). On SIGTERM the lanes in
    flight finish their current delivery and the leases are given back at once.
    """
    worker = Worker(current_app.extensions["giftcard_provider"]["store"], threads=threads,
                    lease_seconds=lease_seconds, poll_seconds=poll, batch=batch)  # fmt: skip
    previous = {s: signal.signal(s, lambda signum, frame: worker.stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    click.echo(f"webhooks: worker {worker.id} delivering ({threads} thread(s), lease {lease_seconds:g} s)")
    try:
        worker.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(f"webhooks: worker {worker.id} stopped")
