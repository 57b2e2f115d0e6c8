"""Load credits onto existing cards from a CSV (`flask cards load-csv`, docs/bulk.md).

One row, one Credit: columns card (the card id), amount (major units, exact: "25", "12.50") and
requestId (its idempotency key, 1 to 128 characters), optionally currency (checked against the
card's) and description. Each Credit goes through gc_authorize like `flask cards load` and the
Hub's Credit, so a row whose requestId was applied already is answered "replayed" and changes
nothing: rerunning a file, whole or after an interruption, never loads a row twice.

The whole file is checked before anything is written: the file's own mistakes (a malformed card
id or amount, a blank or overlong requestId, a requestId repeated for one card) and what the cards
say (no such card, another currency, more decimals than the currency has, above
MAX_TRANSACTION_AMOUNT). Such a row is reported by its line number and nothing is written for it;
unless the operator says to skip them, nothing is written at all. What only the ledger can decide
when the row is applied (a blocked, expired or single-credit card, the balance limit) is that row's
"refused" result, and the other rows go on.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from schemas.common import iso_ms

from .bulk import (
    CHUNK,
    IN_FLIGHT,
    Bar,
    Credit,
    CreditOutcome,
    LedgerWriter,
    Problem,
    chunks,
    in_order,
    major,
    no_bar,
    parse_amount,
    read_rows,
)
from .errors import InvalidRequest
from .keys import is_valid_card_id
from .money import Amount, exponent_of
from .store import LedgerStore

REQUIRED = ("card", "amount", "requestId")
OPTIONAL = ("currency", "description")
MAX_REQUEST_ID = 128  # the Hub's bound (schemas/transactions.py)
MAX_DESCRIPTION = 500
RESULT_HEADER = ["line", "card", "amount", "currency", "requestId", "status", "transactionId", "date", "message"]


@dataclass(frozen=True)
class LoadRow:
    line: int
    card_id: str
    amount: Amount
    request_id: str
    description: str
    text: str  # the amount as written
    currency: str = ""  # the card's, once checked


@dataclass
class LoadSummary:
    rows: int = 0
    credited: int = 0
    replayed: int = 0
    refused: int = 0
    invalid: int = 0

    @property
    def ok(self) -> bool:
        return not (self.refused or self.invalid)


def check_file(store: LedgerStore, path: Path) -> tuple[list[LoadRow], list[Problem]]:
    """Every row of the file, checked: (the good rows, the problems), both in line order."""
    good: list[LoadRow] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], int] = {}
    for row in read_rows(path, REQUIRED, OPTIONAL):
        if "" in row.cells:
            problems.append(Problem(row.line, row.cells[""]))
            continue
        card_id, text, rid = row.get("card"), row.get("amount"), row.cells["requestId"]
        try:
            if not is_valid_card_id(card_id):
                raise ValueError(f"{card_id!r} is not a card id (32 lowercase hex digits)")
            amount = parse_amount(text)
            store.check_ceiling(amount)
            if not rid.strip() or len(rid) > MAX_REQUEST_ID:
                raise ValueError(f"requestId must be 1 to {MAX_REQUEST_ID} characters, not blank")
            if len(row.get("description")) > MAX_DESCRIPTION:
                raise ValueError(f"description is longer than {MAX_DESCRIPTION} characters")
            if (card_id, rid) in seen:
                raise ValueError(f"requestId {rid!r} for this card repeats line {seen[card_id, rid]}")
        except (ValueError, InvalidRequest) as exc:
            problems.append(Problem(row.line, getattr(exc, "message", None) or str(exc)))
            continue
        seen[card_id, rid] = row.line
        good.append(LoadRow(row.line, card_id, amount, rid, row.get("description"), text, row.get("currency").upper()))
    currencies: dict[str, str | None] = {}  # card id -> its currency (None: no such card); not whole cards
    writer = LedgerWriter(store)
    for ids in chunks(sorted({r.card_id for r in good}), CHUNK):
        currencies.update((i, c.currency if c else None) for i, c in writer.read_cards(ids).items())
    checked = []
    for r in good:
        currency = currencies[r.card_id]
        exponent = exponent_of(currency) if currency else 0
        if currency is None:
            problems.append(Problem(r.line, f"no card {r.card_id}"))
        elif r.currency and r.currency != currency:
            problems.append(Problem(r.line, f"card {r.card_id} holds {currency}, not {r.currency}"))
        elif r.amount.scale > exponent:
            places = f"{exponent} decimal place{'s' if exponent != 1 else ''}" if exponent else "none"
            problems.append(Problem(r.line, f"{currency} amounts have {places}; {r.text} has {r.amount.scale}"))
        else:
            checked.append(LoadRow(r.line, r.card_id, r.amount, r.request_id, r.description, r.text, currency))
    return checked, sorted(problems, key=lambda p: p.line)


def apply(
    store: LedgerStore,
    rows: list[LoadRow],
    problems: list[Problem],
    results: IO[str],
    *,
    chunk: int = CHUNK,
    bar: Bar = no_bar,
) -> LoadSummary:
    """Credit every row (IN_FLIGHT chunks at once), writing one result line per row of the file, in
    line order: the rows refused by check_file as "invalid" (nothing was written for them)."""
    writer = LedgerWriter(store)
    out = csv.writer(results, lineterminator="\r\n")
    out.writerow(RESULT_HEADER)
    summary = LoadSummary(rows=len(rows) + len(problems), invalid=len(problems))
    pending = iter(problems)
    problem = next(pending, None)

    def invalid_before(line: int) -> Iterator[Problem]:
        nonlocal problem
        while problem is not None and problem.line < line:
            yield problem
            problem = next(pending, None)

    def credit(part: list[LoadRow]) -> list[CreditOutcome]:
        return writer.credit([Credit(r.card_id, r.amount, r.request_id, r.description) for r in part])

    parts = list(chunks(rows, chunk))
    with bar("loading credits", len(rows)) as progress:
        for part, outcomes in zip(parts, in_order(credit, parts, IN_FLIGHT), strict=True):
            for row, outcome in zip(part, outcomes, strict=True):
                for p in invalid_before(row.line):
                    out.writerow([p.line, "", "", "", "", "invalid", "", "", p.message])
                if outcome.status == "credited":
                    summary.credited += 1
                elif outcome.status == "replayed":
                    summary.replayed += 1
                else:
                    summary.refused += 1
                minor = row.amount.to_minor(exponent_of(row.currency))
                out.writerow([
                    row.line, row.card_id, major(minor, exponent_of(row.currency)), row.currency, row.request_id,
                    outcome.status, outcome.transaction_id, iso_ms(outcome.date_ms) if outcome.ok else "",
                    outcome.message,
                ])  # fmt: skip
            progress.update(len(part))
    for p in invalid_before(1 << 62):
        out.writerow([p.line, "", "", "", "", "invalid", "", "", p.message])
    results.flush()
    return summary
