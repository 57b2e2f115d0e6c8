"""Bulk operator commands (docs/bulk.md): issue a batch of cards, load credits and import cards from CSV.

They join the `cards` group when cli.py imports this module (its last line). Progress bars go to
stderr, so stdout stays data (--json).
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from schemas.common import epoch_ms, iso_ms

from . import bulk_load
from .bulk import Problem, owner_only
from .bulk_import import GUESS_RATE, Defaults, Importer, guessing_time
from .bulk_issue import BatchIssuer, batches
from .cli import (
    AMOUNT,
    CURRENCY,
    _emit,
    _settings,
    _store,
    cards,
    checked_card_terms,
    checked_load,
    json_option,
    major,
)
from .identity import normalise as normalise_identity
from .money import exponent_of
from .records import Batch, BatchSpec


@contextlib.contextmanager
def progress_bar(label: str, length: int):
    """click's progress bar on stderr (stdout is data). Shows nothing when stderr is not a terminal
    but the label, once."""
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True, show_eta=True) as bar:
        yield bar


@contextlib.contextmanager
def file_errors():
    """A file that cannot be written (a full disk...) is one line on stderr and exit 1, not a traceback.
    What reached Redis stays: every bulk command is idempotent, so a rerun completes it."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}; rerun the command to complete it") from exc


def _now_ms() -> int:
    return epoch_ms(datetime.now(UTC))


# -- issue-batch --------------------------------------------------------------------------------------


@cards.command("issue-batch")
@click.option("--batch-id", required=True, help="Names the batch: a rerun with the same id completes it.")
@click.option("--count", type=click.IntRange(min=1, max=10_000_000), required=True, help="Cards to issue.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The CSV of codes to create (0600; never overwritten).",
)
@click.option("--relation-name", required=True, help="The program the cards belong to (VTEX's relationName).")
@click.option("--caption", default="", help="The text shoppers see for the cards.")
@click.option("--profile-id", required=True, help="The owner of every card: a VTEX client id or e-mail address.")
@click.option("--currency", type=CURRENCY, help="ISO 4217 code. [default: DEFAULT_CURRENCY]")
@click.option("--load", "load_amount", type=AMOUNT, help="Initial balance of each card in major units, e.g. 25.")
@click.option("--restricted-to-owner/--not-restricted", default=False, show_default=True)
@click.option("--multiple-redemptions/--single-redemption", default=True, show_default=True)
@click.option("--multiple-credits/--single-credit", default=True, show_default=True)
@click.option("--emission", metavar="DATE", help="Valid from (ISO 8601). [default: each card's creation]")
@click.option("--expiring", metavar="DATE", help="Valid until (ISO 8601). [default: CARD_VALIDITY_DAYS after creation]")
@click.option("--valid-days", type=click.IntRange(min=1), help="Valid this many days from the batch's first run.")
@click.option("--chunk", type=click.IntRange(min=1, max=5000), default=500, show_default=True, hidden=True)
@json_option
def issue_batch(
    batch_id,
    count,
    output,
    relation_name,
    caption,
    profile_id,
    currency,
    load_amount,
    restricted_to_owner,
    multiple_redemptions,
    multiple_credits,
    emission,
    expiring,
    valid_days,
    chunk,
    as_json,
):
    """Issue COUNT cards and write their codes, once, to a new CSV readable by you only.

    Idempotent by --batch-id: run the same command again after an interruption (even a kill) and it
    creates only the cards still missing and writes the CSV; a card is never created twice. Once the
    CSV is written, the codes are kept nowhere else: a rerun then writes nothing. The CSV holds, per
    card: batchId, n, cardId, redemptionCode, currency, load, emissionDate, expiringDate.
    """
    settings = _settings()
    if expiring and valid_days:
        raise click.UsageError("give --expiring or --valid-days, not both")
    payload = {
        "relationName": relation_name,
        "caption": caption,
        "profileId": profile_id,
        "currencyCode": currency or settings.default_currency,
    }
    body = checked_card_terms(payload, emission, expiring)
    currency = body["currencyCode"].upper()
    load_minor = 0
    if load_amount is not None:
        load_minor = checked_load(load_amount, currency)
    spec = BatchSpec(
        count=count,
        currency=currency,
        load_minor=load_minor,
        relation_name=body["relationName"],
        caption=body["caption"],
        profile_id=normalise_identity(body["profileId"]),
        restricted_to_owner=restricted_to_owner,
        multiple_redemptions=multiple_redemptions,
        multiple_credits=multiple_credits,
        emission_ms=epoch_ms(body["emissionDate"]) if "emissionDate" in body else None,
        expiring_ms=epoch_ms(body["expiringDate"]) if "expiringDate" in body else None,
        valid_days=valid_days,
    )
    issuer = BatchIssuer(_store(), batch_id, spec, chunk=chunk, bar=progress_bar)
    started = time.perf_counter()
    with file_errors():
        result = issuer.run(output, _now_ms())
    seconds = time.perf_counter() - started
    view = batch_view(result.batch)
    if as_json:
        _emit({**view, "createdNow": result.created, "output": str(output) if result.output else None,
               "seconds": round(seconds, 3)})  # fmt: skip
        return
    if result.output is None:
        published = result.batch.published
        click.echo(
            f"batch {batch_id} was complete already: {published.rows} card(s), codes written at "
            f"{iso_ms(published.at_ms)} (CSV SHA-256 {published.sha256}); they are kept nowhere else, "
            "so nothing was written"
        )
        return
    rate = f", {result.created / seconds:,.0f} cards/s" if result.created and seconds else ""
    click.echo(
        f"batch {batch_id}: {count} card(s) of {spec.currency}"
        + (f" loaded with {major(load_minor, exponent_of(currency))} each" if load_minor else "")
        + f"; {result.created} created by this run ({seconds:.1f} s{rate}), {count - result.created} before"
    )
    click.echo(f"codes written to {output} ({result.rows} rows, mode 0600, SHA-256 {result.sha256})")
    click.echo("hand the file over securely, then delete it: the codes are kept nowhere else")


def batch_view(batch: Batch) -> dict:
    spec = batch.spec
    exponent = exponent_of(spec.currency)
    published = batch.published
    return {
        "batchId": batch.id,
        "status": "complete" if published else "unfinished",
        "count": spec.count,
        "done": spec.count if published else batch.done,
        "currency": spec.currency,
        "load": major(spec.load_minor, exponent),
        "loadMinor": spec.load_minor,
        "relationName": spec.relation_name,
        "caption": spec.caption,
        "profileId": spec.profile_id,
        "restrictedToOwner": spec.restricted_to_owner,
        "multipleRedemptions": spec.multiple_redemptions,
        "multipleCredits": spec.multiple_credits,
        "expiringDate": iso_ms(batch.expiring_ms) if batch.expiring_ms else None,
        "registeredAt": iso_ms(batch.registered_ms),
        "publishedAt": iso_ms(published.at_ms) if published else None,
        "csvSha256": published.sha256 if published else None,
        "secretHeld": batch.wrapped_key is not None,
    }


@cards.command("batches")
@json_option
def batches_command(as_json):
    """The batches of issue-batch: complete, or unfinished (rerun those: their secret stays in Redis
    until their codes are written)."""
    views = [batch_view(b) for b in batches(_store())]
    if as_json:
        _emit({"batches": views})
        return
    if not views:
        click.echo("no batches")
    for v in views:
        state = (
            f"complete, codes written {v['publishedAt']}"
            if v["status"] == "complete"
            else f"UNFINISHED ({v['done']} of {v['count']} confirmed): rerun its issue-batch command"
        )
        click.echo(f"{v['batchId']}: {v['count']} x {v['load']} {v['currency']} ({v['relationName']}), {state}")


# -- load-csv and import-csv ---------------------------------------------------------------------------

results_option = click.option(
    "--results",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The per-row result CSV to create (0600; never overwritten). [default: FILE's name + .results.csv]",
)
skip_option = click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Write the good rows even if some are bad (reported as 'invalid'). [default: write nothing if any is bad]",
)
input_argument = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _results_path(file: Path, results: Path | None) -> Path:
    return results or file.with_name(f"{file.stem}.results.csv")


def _refuse_bad_rows(problems: list[Problem], skip: bool, what: str) -> None:
    """Report every bad row by its line; unless told to skip them, stop: nothing written."""
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(str(problem), err=True)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        click.echo(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more", err=True)
    if problems and not skip:
        raise click.ClickException(
            f"{len(problems)} bad row(s): nothing was {what}. Fix them, or rerun with --skip-bad-rows to write "
            "the others"
        )


MAX_PROBLEMS_SHOWN = 50


@cards.command("load-csv")
@input_argument
@results_option
@skip_option
@json_option
def load_csv(file, results, skip_bad_rows, as_json):
    """Credit cards from a CSV of card, amount, requestId (optionally currency, description).

    The whole file is checked first; a bad row is reported with its line number, and then nothing is
    written (or, with --skip-bad-rows, nothing for that row). Each row is idempotent by its requestId:
    running the file again loads nothing twice. One result line per row goes to --results: credited,
    replayed, refused (by the ledger: a blocked card, the balance limit...), conflict (the requestId
    was used with another amount) or invalid. Exit 1 if any row was not credited or replayed.
    """
    store = _store()
    rows, problems = bulk_load.check_file(store, file)
    _refuse_bad_rows(problems, skip_bad_rows, "loaded")
    path = _results_path(file, results)
    started = time.perf_counter()
    with file_errors(), owner_only(path) as out:
        summary = bulk_load.apply(store, rows, problems, out, bar=progress_bar)
    seconds = time.perf_counter() - started
    view = {**summary.__dict__, "results": str(path), "seconds": round(seconds, 3)}
    if as_json:
        _emit(view)
    else:
        click.echo(f"{summary.rows} row(s): {summary.credited} credited, {summary.replayed} replayed (applied "
                   f"before), {summary.refused} refused, {summary.invalid} invalid; {seconds:.1f} s")  # fmt: skip
        click.echo(f"per-row results in {path}")
    if not summary.ok:
        click.get_current_context().exit(1)


@cards.command("import-csv")
@input_argument
@click.option("--relation-name", required=True, help="relationName of rows that do not give one.")
@click.option("--caption", default="", help="caption of rows that do not give one.")
@click.option("--currency", type=CURRENCY, help="Currency of rows that do not give one. [default: DEFAULT_CURRENCY]")
@click.option("--default-owner", default="", help="Owner (profileId) of rows that do not give one.")
@click.option("--source", default="", help="The previous provider, recorded in each balance's description.")
@results_option
@skip_option
@json_option
def import_csv(file, relation_name, caption, currency, default_owner, source, results, skip_bad_rows, as_json):
    """Import cards from another provider: a CSV of code, balance (optionally currency, expiry,
    emission, owner, restrictedToOwner, multipleRedemptions, multipleCredits, caption, relationName).

    Each card keeps its code (the search finds it whatever case, spaces and dashes are typed) and gets
    its balance as a Credit. Idempotent by the code: running the file again creates and loads nothing
    twice. Codes short enough to be guessed are reported, with what the code-search throttle does and
    does not do about them. The whole file is checked first, as for load-csv. Exit 1 if any row was not
    imported.
    """
    store = _store()
    defaults = Defaults(
        relation_name=relation_name,
        caption=caption,
        currency=currency or _settings().default_currency,
        owner=normalise_identity(default_owner),
        source=source,
    )
    importer = Importer(store, defaults)
    rows, problems = importer.check_file(file, _now_ms())
    shapes = importer.shapes(rows)
    weak = [s for s in shapes if not s.resists]
    for shape in weak:
        click.echo(
            f"warning: {shape.count} code(s) of {shape.symbols} symbols from an alphabet of {shape.alphabet} "
            f"(about {shape.bits:.0f} bits; lines {_lines(shape.lines)}): a guesser needs {shape.guesses_per_hit:.2g} "
            f"searches on average to hit one of them, {guessing_time(shape)} at {GUESS_RATE:,} searches/s. "
            f"{importer.throttle_note(shape)}",
            err=True,
        )
    _refuse_bad_rows(problems, skip_bad_rows, "imported")
    path = _results_path(file, results)
    started = time.perf_counter()
    with file_errors(), owner_only(path) as out:
        summary = importer.apply(rows, problems, out, bar=progress_bar)
    seconds = time.perf_counter() - started
    if as_json:
        _emit({
            "rows": summary.rows, "imported": summary.imported, "alreadyImported": summary.already,
            "refused": summary.refused, "invalid": summary.invalid, "results": str(path), "seconds": round(seconds, 3),
            "codeShapes": [{"symbols": s.symbols, "alphabet": s.alphabet, "bits": round(s.bits, 1), "count": s.count,
                            "guessesPerHit": s.guesses_per_hit, "resistsGuessing": s.resists} for s in shapes],
        })  # fmt: skip
    else:
        click.echo(f"{summary.rows} row(s): {summary.imported} imported, {summary.already} imported before, "
                   f"{summary.refused} refused, {summary.invalid} invalid; {seconds:.1f} s")  # fmt: skip
        if weak:
            click.echo(f"{sum(s.count for s in weak)} card(s) have codes short enough to guess: see the warnings")
        click.echo(f"per-row results in {path}")
    if not summary.ok:
        click.get_current_context().exit(1)


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:5]))
    return shown + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
