"""`flask cards report ...`: finance reports for operators (computed by reports.py).

Each report prints a table for people, or CSV or JSON for accounting tools (--format), to stdout
or to --output FILE (written whole once the report is computed, or not at all; a new file is 0600:
Output). Amounts are exact
strings with the currency's decimals ("12.50") next to integer minor units (1250), as every
`flask cards` command writes them; times are ISO 8601 UTC. A walk over the cards or the event log
shows a progress bar on stderr (only its label when stderr is not a terminal).

Bad input (a date that does not parse, a period that ends before it starts, a time in the future,
days below 1) exits 2; a report the event log can no longer answer (retention) exits 1.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from schemas.common import iso_ms

from . import reports
from .cli import DATE, OperatorGroup, _store, major
from .errors import InvalidRequest
from .keys import BUCKETS
from .money import exponent_of

FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class Column:
    """A table column: the row field it shows, its title, and whether it is aligned right (numbers)."""

    field: str
    title: str
    right: bool = False


def money(name: str, minor: int, currency: str, exponent: int | None = None) -> dict:
    """An amount as every command writes it: {"<name>": "12.50", "<name>Minor": 1250}."""
    return {name: major(minor, exponent_of(currency) if exponent is None else exponent), f"{name}Minor": minor}


def _table(title: str, columns: list[Column], rows: list[dict], notes: list[str]) -> str:
    cells = [[c.title for c in columns]] + [[str(row[c.field]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title, ""]
    for line in cells:
        parts = [v.rjust(w) if c.right else v.ljust(w) for v, w, c in zip(line, widths, columns, strict=True)]
        lines.append("  ".join(parts).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def _csv(fields: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class Output:
    """Where a report goes: stdout, or FILE replaced whole (a reader never sees half a report).

    The temporary file is made in FILE's directory before the report is computed, so a directory
    that is missing or not writable is a usage error at once, not a traceback after minutes of
    reading. A new FILE is 0600, readable by its owner only: `expiring` lists owners (profileId,
    often an e-mail), and the other reports are finance figures. An existing FILE keeps its mode, so
    an operator who shared it (chmod g+r) keeps it shared across runs."""

    def __init__(self, path: Path | None, temporary: str | None = None):
        self.path = path
        self.temporary = temporary

    @classmethod
    def open(cls, output: str | None) -> Output:
        if output is None or output == "-":
            return cls(None)
        path = Path(output)
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
        except OSError as exc:
            raise click.BadParameter(
                f"cannot write a file in {str(path.parent)!r}: {exc.strerror or exc}", param_hint="'--output'"
            ) from None
        os.close(fd)
        return cls(path, temporary)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc_info) -> None:
        """Whatever happened (a refused report, an error): no temporary file is left behind."""
        if self.temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary)

    def write(self, text: str) -> None:
        if self.path is None:
            click.echo(text, nl=False)
            return
        try:
            with open(self.temporary, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.temporary, stat.S_IMODE(os.stat(self.path).st_mode))
            os.replace(self.temporary, self.path)
        except OSError as exc:
            raise click.ClickException(f"could not write {self.path}: {exc.strerror or exc}") from None
        self.temporary = None
        click.echo(f"wrote {self.path}", err=True)


def emit(fmt: str, output: Output, *, report: str, meta: dict, fields: list[str], rows: list[dict],
         title: str, columns: list[Column], notes: list[str] = ()) -> None:  # fmt: skip
    """One report in the asked format: JSON {"report", ...meta, "rows"}, CSV of the rows, or a table."""
    if fmt == "json":
        text = json.dumps({"report": report, **meta, "rows": rows}, indent=2) + "\n"
    elif fmt == "csv":
        text = _csv(fields, rows)
    else:
        text = _table(title, columns, rows, list(notes))
    output.write(text)


@contextlib.contextmanager
def progress_bar(length: int, label: str):
    """click's progress bar on stderr; yields the function that advances it."""
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def _output_options(report_function):
    """--format and --output; the command gets its Output already open (Output.open), and closed
    whatever happens."""

    @functools.wraps(report_function)
    def run(*args, output, **kwargs):
        with Output.open(output) as opened:
            return report_function(*args, output=opened, **kwargs)

    command = click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, writable=True),
        help="Write the report to FILE instead of stdout (replaced whole once the report is done).",
    )(run)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="A table for people, or CSV / JSON for accounting tools.",
    )(command)


def _usage_errors(compute):
    """Run a report; input it finds wrong (a time in the future, an empty period) is a usage error."""
    try:
        return compute()
    except InvalidRequest as exc:
        raise click.UsageError(exc.message) from None


report = OperatorGroup("report", help="Finance reports: liability, breakage, expiring cards, activity.")


@report.command("liability")
@click.option("--as-of", type=DATE, help="A past time (ISO 8601, UTC unless an offset is given; a date is its 00:00). "
              "[default: now, from the books]")  # fmt: skip
@_output_options
def liability(as_of, fmt, output):
    """Outstanding liability per currency: what the cards hold (available + held).

    Now, from the books (one Redis round trip, whatever the number of cards). With --as-of, at that
    time: the books less every event since (events at that millisecond and later are left out), read
    bucket by bucket from the event log in constant memory. Refused (exit 1) if the event retention
    (EVENT_RETENTION_DAYS / EVENT_RETENTION_MAX) trimmed any event since that time.
    """
    store = _store()
    if as_of is None:
        result = reports.liability_now(store)
    else:
        with progress_bar(BUCKETS, f"reading the event log since {iso_ms(as_of)}") as advance:
            result = _usage_errors(lambda: reports.liability_as_of(store, as_of, advance))
    at = iso_ms(result.as_of_ms)
    rows = [
        {
            "asOf": at,
            "currency": r.currency,
            "cards": r.cards,
            **money("liability", r.liability, r.currency),
            **money("available", r.available, r.currency),
            **money("held", r.held, r.currency),
        }
        for r in result.rows
    ]
    fields = ["asOf", "currency", "cards", "liability", "liabilityMinor", "available", "availableMinor", "held",
              "heldMinor"]  # fmt: skip
    how = "from the books" if result.source == "books" else f"from the books less {result.events_read} event(s) since"
    emit(
        fmt,
        output,
        report="liability",
        meta={"asOf": at, "source": result.source, "eventsRead": result.events_read},
        fields=fields,
        rows=rows,
        title=f"Outstanding liability as of {at} ({how})",
        columns=[
            Column("currency", "currency"),
            Column("cards", "cards", True),
            Column("liability", "liability", True),
            Column("available", "available", True),
            Column("held", "held", True),
        ],
    )


@report.command("breakage")
@_output_options
def breakage(fmt, output):
    """Money left on cards past their expiringDate, per currency and month of expiry.

    Walks every card (the buckets' card lists, cards read in pipelined batches). `balance` can no
    longer be spent; `held` was taken by Debits before the expiry and may still be settled or given
    back. Each card is judged on Redis's clock when it is read.
    """
    store = _store()
    with progress_bar(reports.card_count(store), "reading cards") as advance:
        rows = reports.breakage_rows(reports.every_card(store, advance))
    at = iso_ms(store.now_ms())
    views = [
        {"asOf": at, "month": r.month, "currency": r.currency, "cards": r.cards,
         **money("balance", r.balance, r.currency), **money("held", r.held, r.currency)}
        for r in rows
    ]  # fmt: skip
    emit(
        fmt,
        output,
        report="breakage",
        meta={"asOf": at},
        fields=["asOf", "month", "currency", "cards", "balance", "balanceMinor", "held", "heldMinor"],
        rows=views,
        title=f"Breakage: money left on cards past their expiringDate, as of {at}",
        columns=[
            Column("month", "expired in"),
            Column("currency", "currency"),
            Column("cards", "cards", True),
            Column("balance", "balance", True),
            Column("held", "held", True),
        ],
        notes=_totals(rows),
    )


def _totals(rows: list[reports.Breakage]) -> list[str]:
    per: dict[str, list[int]] = {}
    for r in rows:
        total = per.setdefault(r.currency, [0, 0, 0])
        total[0] += r.cards
        total[1] += r.balance
        total[2] += r.held
    return [
        f"{currency}: {cards} card(s), balance {major(balance, exponent_of(currency))}, "
        f"held {major(held, exponent_of(currency))}"
        for currency, (cards, balance, held) in sorted(per.items())
    ]


@report.command("expiring")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Cards whose expiringDate comes within this many days.")  # fmt: skip
@_output_options
def expiring(days, fmt, output):
    """Active cards with a balance that expire within --days days, soonest first: for reminders.

    With each card's owner (profileId), program (relationName), balance and expiringDate.
    Walks every card (the buckets' card lists, cards read in pipelined batches).
    """
    store = _store()
    with progress_bar(reports.card_count(store), "reading cards") as advance:
        rows = reports.expiring_rows(reports.every_card(store, advance), days)
    views = [
        {"cardId": r.card_id, "profileId": r.profile_id, "relationName": r.relation_name, "currency": r.currency,
         **money("balance", r.balance, r.currency, r.exponent), "expiringDate": iso_ms(r.expiring_ms),
         "daysLeft": r.days_left}
        for r in rows
    ]  # fmt: skip
    emit(
        fmt,
        output,
        report="expiring",
        meta={"days": days},
        fields=[
            "cardId",
            "profileId",
            "relationName",
            "currency",
            "balance",
            "balanceMinor",
            "expiringDate",
            "daysLeft",
        ],
        rows=views,
        title=f"Active cards with a balance expiring within {days} day(s): {len(views)}",
        columns=[
            Column("expiringDate", "expiring"),
            Column("daysLeft", "days", True),
            Column("cardId", "card"),
            Column("profileId", "owner"),
            Column("relationName", "program"),
            Column("currency", "currency"),
            Column("balance", "balance", True),
        ],
    )


@report.command("activity")
@click.option("--since", type=DATE, help="Start (ISO 8601, UTC unless an offset is given; a date is its 00:00). "
              "[default: 30 days before --until]")  # fmt: skip
@click.option("--until", type=DATE, help="End, not included. [default: now; a later time is cut to now]")
@_output_options
def activity(since, until, fmt, output):
    """Events per day (UTC), currency and kind over a period, with their amounts: credits,
    authorizations, settlements, releases, refunds, expiries, reversed credits, and cards created,
    imported, discarded and changed in status (no amount).

    Read bucket by bucket from the event log in constant memory. Refused (exit 1) if the event
    retention trimmed any event of the period.
    """
    store = _store()
    until = store.now_ms() if until is None else until
    since = until - 30 * reports.DAY_MS if since is None else since
    if since >= until:
        raise click.BadParameter("must be before --until", param_hint="'--since'")
    with progress_bar(BUCKETS, f"reading the event log from {iso_ms(since)}") as advance:
        result = _usage_errors(lambda: reports.activity(store, since, until, advance))
    views = [
        {"day": r.day, "currency": r.currency, "kind": r.kind, "count": r.count,
         **money("amount", r.amount, r.currency)}
        for r in result.rows
    ]  # fmt: skip
    period = {"since": iso_ms(result.since_ms), "until": iso_ms(result.until_ms)}
    emit(
        fmt,
        output,
        report="activity",
        meta={**period, "eventsRead": result.events_read},
        fields=["day", "currency", "kind", "count", "amount", "amountMinor"],
        rows=views,
        title=f"Activity from {period['since']} to {period['until']}: {result.events_read} event(s)",
        columns=[
            Column("day", "day"),
            Column("currency", "currency"),
            Column("kind", "kind"),
            Column("count", "count", True),
            Column("amount", "amount", True),
        ],
    )
