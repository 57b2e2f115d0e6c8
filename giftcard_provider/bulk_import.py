"""Import cards from another provider (`flask cards import-csv`, docs/bulk.md): a merchant's printed,
physical cards keep their codes and balances.

Columns: code and balance (major units; 0 allowed), and optionally currency, expiry and emission
(ISO 8601 dates), owner (a VTEX client id or e-mail), restrictedToOwner, multipleRedemptions,
multipleCredits (true/false), caption and relationName; the command's options give the defaults.

An imported card is made exactly like one of `flask cards issue`: gc_create_card (its "created"
event, the books' card count, the code index entry), the owner index, then its balance as a Credit
through gc_authorize (a "credit" event; the books count it as credited). The code is the one printed
on the card: the code index keys it by the HMAC of its normalised form (codes.CodeHasher), so the
shopper's search finds it as it finds ours, whatever the case, spaces and dashes they type.

Idempotent by the code: a card's id is derived from its code's digest (its bucket, then HMAC of the
digest under CODE_HASH_SECRET), and its Credit's requestId is "import". A rerun finds the card
("card_exists": not created twice) and the Credit ("replayed": not loaded twice); a rerun with
another balance for a code is answered "conflict" and changes nothing.

Codes too short to resist guessing: see guess_space. The throttle (throttle.py) only slows a guesser
who keeps one shopper identity; that is said next to the estimate, per shape of code.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from schemas.common import MAX_EMAIL, MAX_ID, epoch_ms, iso_ms

from .bulk import (
    CHUNK,
    IN_FLIGHT,
    Bar,
    Credit,
    LedgerWriter,
    NewCard,
    Problem,
    chunks,
    in_order,
    major,
    no_bar,
    parse_amount,
    read_rows,
)
from .codes import mask, new_token, normalise
from .errors import InvalidRequest
from .identity import normalise as normalise_identity
from .money import UnknownCurrency, exponent_of
from .records import card_fields
from .store import LedgerStore
from .throttle import parse_limits

REQUIRED = ("code", "balance")
OPTIONAL = ("currency", "expiry", "emission", "owner", "restrictedToOwner", "multipleRedemptions",
            "multipleCredits", "caption", "relationName")  # fmt: skip
MAX_CODE = 128  # what a search accepts (schemas/giftcards.py: redemptionCode)
REQUEST_ID = "import"  # the imported balance's Credit: one per card, so one requestId does
RESULT_HEADER = ["line", "code", "cardId", "currency", "balance", "status", "transactionId", "guessBits", "message"]
_TRUE, _FALSE = ("true", "1", "yes", "y"), ("false", "0", "no", "n")

# The guessing model behind the warnings (docs/bulk.md): a guesser who spreads searches over new
# shopper identities is not throttled (throttle.py), so only the size of the space protects a code.
# A shape of code resists guessing if, at GUESS_RATE searches a second, finding any one of the
# imported cards of that shape takes longer than HORIZON_YEARS on average.
GUESS_RATE = 1000
HORIZON_YEARS = 100
YEAR_SECONDS = 365.25 * 86400


@dataclass(frozen=True)
class Defaults:
    relation_name: str
    caption: str
    currency: str
    owner: str  # "" = every row must name its owner
    restricted_to_owner: bool = False
    multiple_redemptions: bool = True
    multiple_credits: bool = True
    source: str = ""  # for the Credit's description: "imported from <source>"


@dataclass(frozen=True)
class ImportRow:
    line: int
    card: NewCard
    currency: str
    balance_minor: int
    last4: str
    shape: tuple[int, int]  # (symbols, alphabet size): see guess_space


@dataclass(frozen=True)
class Shape:
    """The imported codes of one shape (length and alphabet), and how well they resist guessing."""

    symbols: int
    alphabet: int
    count: int
    lines: list[int]

    @property
    def bits(self) -> float:
        return self.symbols * math.log2(self.alphabet)

    @property
    def guesses_per_hit(self) -> float:
        """Expected searches to hit any one of these cards: the space shared among them."""
        return self.alphabet**self.symbols / self.count

    @property
    def resists(self) -> bool:
        return self.guesses_per_hit / GUESS_RATE >= HORIZON_YEARS * YEAR_SECONDS


def guess_space(code: str) -> tuple[int, int]:
    """(symbols, alphabet) of a code's shape, as a guesser who has seen one such card would search: its
    normalised length (case, spaces and dashes do not count, as for the search), and the size of the
    character classes it uses (digits 10, letters 26, anything else 32 more). 12 digits: (12, 10),
    about 40 bits; this service's own codes: (20, 36) by this rule, 98 bits in fact (30 symbols)."""
    text = normalise(code)
    alphabet = (10 if any(c.isdigit() for c in text) else 0) + (26 if any(c.isalpha() for c in text) else 0)
    alphabet += 32 if any(not c.isalnum() for c in text) else 0
    return len(text), max(alphabet, 2)


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0
    already: int = 0
    refused: int = 0
    invalid: int = 0
    shapes: list[Shape] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.refused or self.invalid)


class Importer:
    def __init__(self, store: LedgerStore, defaults: Defaults):
        self.store, self.defaults = store, defaults
        self.writer = LedgerWriter(store)
        self._id_key = store.settings.code_hash_secret.encode()

    def card_id(self, digest: str) -> str:
        """The imported card's id: its code's bucket (as store.create_card), then 30 hex of HMAC of the
        digest, so a rerun names the same card."""
        return digest[:2] + hmac.new(self._id_key, f"import-card|{digest}".encode(), hashlib.sha256).hexdigest()[:30]

    def check_file(self, path: Path, now_ms: int | None = None) -> tuple[list[ImportRow], list[Problem]]:
        """Every row, checked against the file, the settings and the code index: (good rows, problems)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        good: list[ImportRow] = []
        problems: list[Problem] = []
        lines_of: dict[str, int] = {}
        for row in read_rows(path, REQUIRED, OPTIONAL):
            if "" in row.cells:
                problems.append(Problem(row.line, row.cells[""]))
                continue
            try:
                parsed = self._row(row, now_ms)
            except (ValueError, InvalidRequest, UnknownCurrency) as exc:
                problems.append(Problem(row.line, getattr(exc, "message", None) or str(exc)))
                continue
            first = lines_of.setdefault(parsed.card.digest, row.line)
            if first != row.line:
                problems.append(
                    Problem(row.line, f"the same code as line {first} (case, spaces and dashes do not count)")
                )
                continue
            good.append(parsed)
        owners = self.writer.code_owners([r.card.digest for r in good])
        checked = []
        for r in good:
            named = owners[r.card.digest]
            if named is not None and named != r.card.card_id:
                problems.append(Problem(r.line, f"the code already names card {named}, which this import did not make"))
            else:
                checked.append(r)
        return checked, sorted(problems, key=lambda p: p.line)

    def _row(self, row, now_ms: int) -> ImportRow:
        d = self.defaults
        code = row.get("code")
        text = normalise(code)
        if not text:
            raise ValueError("the code is empty")
        if len(code) > MAX_CODE or not code.isprintable():
            raise ValueError(f"the code must be at most {MAX_CODE} printable characters")
        currency = (row.get("currency") or d.currency).upper()
        exponent = exponent_of(currency)
        balance = parse_amount(row.get("balance"), zero=True)
        if balance.scale > exponent:
            raise ValueError(f"{currency} amounts have {exponent or 'no'} decimal places; {row.get('balance')} has "
                             f"{balance.scale}")  # fmt: skip
        minor = balance.to_minor(exponent)
        if minor:
            self.store.check_ceiling(balance)
            if minor > self.store.balance_limit(currency):
                raise ValueError(f"the balance is above MAX_CARD_BALANCE ({self.store.settings.max_card_balance})")
        emission = _date(row.get("emission"), "emission")
        expiry = _date(row.get("expiry"), "expiry")
        if expiry is not None and expiry <= max(now_ms, emission or 0):
            raise ValueError(f"expired on {iso_ms(expiry)}" if expiry <= now_ms else "expiry is not after emission")
        if minor and emission is not None and emission > now_ms:
            raise ValueError("a card cannot be loaded before its emission date")
        owner = normalise_identity(row.get("owner")) or d.owner
        if not owner:
            raise ValueError("no owner: give the owner column, or --default-owner")
        if len(owner) > (MAX_EMAIL if "@" in owner else MAX_ID):
            raise ValueError("the owner is too long")
        relation = row.get("relationName") or d.relation_name
        caption = row.get("caption") or d.caption
        if len(relation) > 100 or len(caption) > 200:
            raise ValueError("relationName is at most 100 characters, caption at most 200")
        digest = self.store.hasher.digest(code)
        fields = card_fields(
            currency=currency, exponent=exponent, balance_limit=self.store.balance_limit(currency),
            profile_id=owner, relation_name=relation, caption=caption,
            restricted_to_owner=_flag(row.get("restrictedToOwner"), d.restricted_to_owner, "restrictedToOwner"),
            multiple_redemptions=_flag(row.get("multipleRedemptions"), d.multiple_redemptions, "multipleRedemptions"),
            multiple_credits=_flag(row.get("multipleCredits"), d.multiple_credits, "multipleCredits"),
            code_last4=text[-4:], token=new_token(),
        )  # fmt: skip
        description = f"imported from {d.source}" if d.source else "imported"
        card = NewCard(
            card_id=self.card_id(digest), digest=digest, profile_id=owner, fields=fields, emission_ms=emission,
            expiring_ms=expiry, load=balance if minor else None, request_id=REQUEST_ID, description=description,
        )  # fmt: skip
        return ImportRow(row.line, card, currency, minor, text[-4:], guess_space(code))

    def shapes(self, rows: list[ImportRow]) -> list[Shape]:
        """The shapes of the codes imported, weakest first."""
        lines: dict[tuple[int, int], list[int]] = defaultdict(list)
        for r in rows:
            lines[r.shape].append(r.line)
        found = [Shape(s, a, len(ls), ls) for (s, a), ls in lines.items()]
        return sorted(found, key=lambda s: s.guesses_per_hit)

    def throttle_note(self, shape: Shape) -> str:
        """What the code-search throttle does against guessing codes of this shape (throttle.py)."""
        s = self.store.settings
        limits = parse_limits("CODE_LOOKUP_LIMIT", s.code_lookup_limit)
        brake = f"CODE_LOOKUP_ADDRESS_LIMIT={s.code_lookup_address_limit}" if s.code_lookup_address_limit else (
            "CODE_LOOKUP_ADDRESS_LIMIT is off")  # fmt: skip
        free = (f"a guesser who sends no identity, or a new one per search, is not limited per shopper; {brake} "
                "(behind the Hub a store-wide brake on every shopper's code search)")  # fmt: skip
        if not limits:
            return f"CODE_LOOKUP_LIMIT is off: no shopper is limited; {free}"
        per_day = min(limit.count * 86400 / limit.seconds for limit in limits)
        days = shape.guesses_per_hit / per_day
        return (
            f"CODE_LOOKUP_LIMIT={s.code_lookup_limit} holds one shopper identity to {per_day:,.0f} failed searches a "
            f"day: {_duration(days * 86400)} on average to hit one of these cards; but {free}"
        )

    def apply(self, rows: list[ImportRow], problems: list[Problem], results: IO[str], *, chunk: int = CHUNK,
              bar: Bar = no_bar) -> ImportSummary:  # fmt: skip
        """Create and load every good row (IN_FLIGHT chunks at once); one result line per row of the file,
        in line order (codes masked to their last 4)."""
        out = csv.writer(results, lineterminator="\r\n")
        out.writerow(RESULT_HEADER)
        summary = ImportSummary(rows=len(rows) + len(problems), invalid=len(problems), shapes=self.shapes(rows))
        bits = {r.line: f"{Shape(*r.shape, 1, []).bits:.0f}" for r in rows}
        lines = sorted([(p.line, p) for p in problems] + [(r.line, r) for r in rows], key=lambda pair: pair[0])
        outcomes: dict[int, tuple[str, str, str]] = {}
        parts = list(chunks(rows, chunk))
        with bar("importing cards", len(rows)) as progress:
            for part, results_of in zip(parts, in_order(self._import_chunk, parts, IN_FLIGHT), strict=True):
                outcomes.update(results_of)
                progress.update(len(part))
        for line, item in lines:
            if isinstance(item, Problem):
                out.writerow([line, "", "", "", "", "invalid", "", "", item.message])
                continue
            status, tx_id, message = outcomes[line]
            if status == "imported":
                summary.imported += 1
            elif status == "already imported":
                summary.already += 1
            else:
                summary.refused += 1
            exponent = exponent_of(item.currency)
            out.writerow([line, mask(item.last4), item.card.card_id, item.currency, major(item.balance_minor, exponent),
                          status, tx_id, bits[line], message])  # fmt: skip
        results.flush()
        return summary

    def _import_chunk(self, part: list[ImportRow]) -> dict[int, tuple[str, str, str]]:
        """Create, index and load one chunk: line -> (status, transaction id, message)."""
        statuses = [c.status for c in self.writer.create([r.card for r in part])]
        outcome: dict[int, tuple[str, str, str]] = {}
        made = [r for r, s in zip(part, statuses, strict=True) if s in ("created", "exists")]
        for r, s in zip(part, statuses, strict=True):
            if s == "code_taken":  # since check_file read the index: another card took it meanwhile
                outcome[r.line] = ("refused", "", "the code now names another card")
            elif s == "invalid_window":
                outcome[r.line] = ("refused", "", "the card's validity window is over (expiry not in the future)")
        loaded = [r for r in made if r.card.load]
        created = [r.card for r, s in zip(part, statuses, strict=True) if s == "created"]
        self.writer.index_owners([r.card for r in made], created, wait=not loaded)
        credits = self.writer.credit([Credit(r.card.card_id, r.card.load, REQUEST_ID, r.card.description)
                                      for r in loaded])  # fmt: skip
        by_line = {r.line: c for r, c in zip(loaded, credits, strict=True)}
        for r, s in zip(part, statuses, strict=True):
            if r.line in outcome:
                continue
            credit = by_line.get(r.line)
            fresh = s == "created"
            if credit is None:
                outcome[r.line] = ("imported" if fresh else "already imported", "", "")
            elif credit.ok:
                status = "imported" if fresh or credit.status == "credited" else "already imported"
                outcome[r.line] = (status, credit.transaction_id, "")
            elif credit.status == "conflict":
                outcome[r.line] = ("conflict", "", "imported before with another balance: nothing changed")
            else:
                outcome[r.line] = ("refused", "", f"the card was created but its balance not loaded: {credit.message}")
        return outcome


def _flag(text: str, default: bool, name: str) -> bool:
    value = text.strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {text!r}")


def _date(text: str, name: str) -> int | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 date, like 2027-12-31") from None
    return epoch_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _duration(seconds: float) -> str:
    """3.2e9 -> "101 years"; 86400 -> "1 day"."""
    for unit, length in (("year", YEAR_SECONDS), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= length or unit == "second":
            n = seconds / length
            text = f"{n:,.0f}" if n < 1e6 else f"{n:.1e}"
            return f"{text} {unit}{'' if text == '1' else 's'}"
    raise AssertionError("unreachable")


def guessing_time(shape: Shape) -> str:
    """How long the unthrottled guesser of the model takes to hit one of these cards."""
    return _duration(shape.guesses_per_hit / GUESS_RATE)
