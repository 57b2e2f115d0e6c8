"""Bulk issuance, loads and imports (docs/bulk.md) on real Redis: one server and a 3-primary cluster.

The kill tests run `flask cards issue-batch` in another process and SIGKILL it mid-creation and
mid-publication; the rerun must leave exactly N cards, a CSV holding each of their codes once, every
code finding its card, and a ledger that verifies.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from giftcard_provider import bulk, bulk_issue, create_app, events
from giftcard_provider.bulk_import import GUESS_RATE, Shape, guess_space
from giftcard_provider.bulk_issue import BatchIssuer, _Derivation
from giftcard_provider.codes import normalise
from giftcard_provider.errors import StoreUnavailable
from giftcard_provider.keys import Keys
from giftcard_provider.records import Batch, batch_fields
from giftcard_provider.verify import verify_all

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .snapshot import unchanged

ROOT = Path(__file__).resolve().parent.parent
CODE = re.compile(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){4}")
KEYS = Keys("gc")


@pytest.fixture(params=["redis", "cluster"])
def ledger(request):
    """A clean real Redis of each kind (one server, a 3-primary cluster); the ledger must verify after."""
    client = request.getfixturevalue("real_redis" if request.param == "redis" else "cluster_redis")
    yield client
    _, problems = verify_all(client, KEYS)
    assert problems == [], problems


@pytest.fixture
def app(ledger):
    return create_app(make_settings(), redis_client=ledger)


def store_of(app):
    return app.extensions["giftcard_provider"]["store"]


def cli(app, *args: str):
    return app.test_cli_runner().invoke(args=["cards", *args])


BATCH_TERMS = ("--relation-name", "promo", "--caption", "Winter", "--profile-id", "Printed@Example.com",
               "--currency", "brl", "--load", "25.50")  # fmt: skip


def issue_batch(app, batch_id: str, count: int, output: Path, *extra: str):
    return cli(app, "issue-batch", "--batch-id", batch_id, "--count", str(count), "-o", str(output), *BATCH_TERMS,
               *extra)  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_batch_complete(app, rows: list[dict], count: int, load_minor: int = 2550) -> None:
    """Exactly `count` cards, each code once, each finding its card loaded with `load_minor`."""
    store = store_of(app)
    assert [int(r["n"]) for r in rows] == list(range(1, count + 1))
    assert len({r["redemptionCode"] for r in rows}) == count and len({r["cardId"] for r in rows}) == count
    for row in rows:
        assert CODE.fullmatch(row["redemptionCode"]), row
        card = store.find_by_code(row["redemptionCode"].lower().replace("-", " "))  # as a shopper may type it
        assert card is not None and card.id == row["cardId"], row
        assert (card.balance, card.currency, card.profile_id) == (load_minor, "BRL", "printed@example.com")
        assert card.code_last4 == normalise(row["redemptionCode"])[-4:]
    books = store.books()["BRL"]
    assert (books.cards, books.credited, books.available) == (count, count * load_minor, count * load_minor)
    assert sum(1 for _ in store.card_ids()) == count


def owner_only(path: Path) -> bool:
    return stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- issue-batch --------------------------------------------------------------------------------------


def test_a_batch_is_issued_once_and_its_cards_are_like_issued_ones(app, tmp_path):
    output = tmp_path / "codes.csv"
    result = issue_batch(app, "winter-2026", 23, output, "--chunk", "5")
    assert result.exit_code == 0, result.output
    assert "23 created by this run" in result.stdout and "batch winter-2026" in result.stderr  # the bar: stderr
    assert owner_only(output)
    rows = read_csv(output)
    assert list(rows[0]) == bulk_issue.CSV_HEADER
    assert {(r["batchId"], r["currency"], r["load"]) for r in rows} == {("winter-2026", "BRL", "25.50")}
    assert_batch_complete(app, rows, 23)

    # Each card is what `flask cards issue` makes with the same terms: the same fields, the same events.
    single = cli(app, "issue", *BATCH_TERMS[:-2], "--load", "25.50", "--json")
    assert single.exit_code == 0, single.output
    store, ledger = store_of(app), store_of(app).redis
    single_id = json.loads(single.stdout)["card"]["id"]
    variable = {"tk", "l4", "at", "to", "t:", "x:1", "q:", "r:"}  # tokens, codes, times, transaction ids

    def shape(card_id):
        fields = ledger.hgetall(KEYS.card(card_id))
        return {(k if not k.startswith(("t:", "q:", "r:")) else k[:2]): v for k, v in fields.items()
                if k not in variable and k[:2] not in variable}  # fmt: skip

    assert shape(rows[0]["cardId"]) == shape(single_id)
    for card_id in (rows[0]["cardId"], single_id):
        events = store.journal(card_id)
        assert [(e.type, e.seq, e.amount, e.available) for e in events] == [("created", 1, 0, 0),
                                                                             ("credit", 2, 2550, 2550)]  # fmt: skip
    tx_ids, _ = store.transaction_ids(rows[0]["cardId"], 0, -1)
    assert store.transaction(rows[0]["cardId"], tx_ids[0])[0].request_id == "batch:winter-2026:1"

    # Done: the codes are kept nowhere; a rerun writes nothing and creates nothing.
    batch = bulk_issue.batches(store)[0]
    assert batch.wrapped_key is None and batch.published.rows == 23
    with unchanged(ledger):
        again = issue_batch(app, "winter-2026", 23, tmp_path / "again.csv", "--chunk", "5")
    assert again.exit_code == 0, again.output
    assert "complete already" in again.stdout and not (tmp_path / "again.csv").exists()
    listing = cli(app, "batches")
    assert listing.exit_code == 0 and "winter-2026: 23 x 25.50 BRL (promo), complete" in listing.stdout


def test_a_batch_refuses_other_terms_an_existing_file_and_bad_options(app, tmp_path):
    ledger = store_of(app).redis
    taken = tmp_path / "taken.csv"
    taken.write_text("someone else's file\n")
    with unchanged(ledger):
        result = issue_batch(app, "b1", 3, taken)
    assert result.exit_code == 1 and "exists: refusing to overwrite" in result.output
    assert taken.read_text() == "someone else's file\n"

    assert issue_batch(app, "b1", 3, tmp_path / "b1.csv").exit_code == 0
    with unchanged(ledger):
        other = issue_batch(app, "b1", 4, tmp_path / "b1-again.csv")
    assert other.exit_code == 1 and "count: 3 -> 4" in other.output
    for args, message in [
        (("--batch-id", "no spaces"), "batch id"),
        (("--batch-id", "x", "--expiring", "2030-01-01", "--valid-days", "3"), "not both"),
        (("--batch-id", "x", "--load", "1.234"), "decimal places"),
        (("--batch-id", "x", "--load", "5", "--emission", "2999-01-01"), "before its emission"),
    ]:
        with unchanged(ledger):
            result = cli(app, "issue-batch", "--count", "2", "-o", str(tmp_path / "x.csv"), "--relation-name", "r",
                         "--profile-id", "p", "--currency", "BRL", *args)  # fmt: skip
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert not (tmp_path / "x.csv").exists()


def test_a_batch_interrupted_after_k_cards_completes_on_rerun(app, tmp_path, monkeypatch):
    """A Redis failure after 3 chunks (injected): the rerun creates only the rest, never a card twice."""
    calls = {"n": 0}
    real_credit = bulk.LedgerWriter.credit

    def failing_credit(self, credits):
        calls["n"] += 1
        if calls["n"] == 4:
            raise StoreUnavailable("the ledger store is unavailable (ConnectionError)")
        return real_credit(self, credits)

    monkeypatch.setattr(bulk.LedgerWriter, "credit", failing_credit)
    monkeypatch.setattr(bulk_issue, "IN_FLIGHT", 1)  # chunks in order, so "after 3 chunks" is exact
    output = tmp_path / "codes.csv"
    first = issue_batch(app, "b2", 40, output, "--chunk", "6")
    assert first.exit_code == 1 and "unavailable" in first.output
    assert not output.exists()
    store = store_of(app)
    batch = bulk_issue.batches(store)[0]
    assert batch.done == 18 and batch.wrapped_key is not None  # 3 chunks confirmed
    assert "b2: 40 x 25.50 BRL (promo), UNFINISHED (18 of 40 confirmed)" in cli(app, "batches").stdout
    assert store.books()["BRL"].cards == 24  # the 4th chunk's cards were created, their loads not
    monkeypatch.setattr(bulk.LedgerWriter, "credit", real_credit)
    second = issue_batch(app, "b2", 40, output, "--chunk", "6")
    assert second.exit_code == 0, second.output
    assert "16 created by this run" in second.stdout
    assert_batch_complete(app, read_csv(output), 40)


@pytest.mark.parametrize("step", ["before linking", "after linking"])
def test_a_batch_killed_around_publishing_its_csv_publishes_it_on_rerun(app, tmp_path, monkeypatch, step):
    """Killed (SystemExit, as SIGKILL would stop it) with every card made and the CSV written to its partial
    file, just before it is linked to the output name, or just after (before it is recorded)."""
    output = tmp_path / "codes.csv"

    def killed(*args):
        raise SystemExit(137)

    if step == "before linking":
        monkeypatch.setattr(bulk_issue.os, "link", killed)
    else:
        monkeypatch.setattr(BatchIssuer, "_record", killed)
    assert issue_batch(app, "b3", 7, output).exit_code == 137
    assert output.exists() == (step == "after linking")
    published = output.read_bytes() if output.exists() else None
    monkeypatch.undo()
    again = issue_batch(app, "b3", 7, output)
    assert again.exit_code == 0, again.output
    assert "0 created by this run" in again.stdout
    assert published in (None, output.read_bytes()) and not list(tmp_path.glob("*.partial"))
    assert_batch_complete(app, read_csv(output), 7)


def test_chunks_wait_for_durability_when_asked(real_redis, tmp_path, caplog):
    """REDIS_WAIT_REPLICAS=1 on a server without replicas: every chunk's last pipeline carries WAIT, which
    answers 0 after its timeout; the cards stand and the log says they are not confirmed durable."""
    app = create_app(make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=5), redis_client=real_redis)
    with caplog.at_level("WARNING", logger="giftcard_provider.bulk"):
        assert issue_batch(app, "w", 5, tmp_path / "loaded.csv", "--chunk", "2").exit_code == 0
        assert cli(app, "issue-batch", "--batch-id", "u", "--count", "3", "-o", str(tmp_path / "unloaded.csv"),
                   "--relation-name", "r", "--profile-id", "p", "--chunk", "2").exit_code == 0  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if "not confirmed durable" in r.getMessage()]
    assert sum("credits" in w for w in warnings) == 3 and sum("card creation" in w for w in warnings) == 2
    assert verify_all(real_redis, KEYS)[1] == []


def test_a_taken_code_is_redrawn_and_the_rerun_derives_the_same(app, tmp_path):
    """A derived code that another card already has (a 2**-98 event, planted here) gets the next draw."""
    store = store_of(app)
    spec_app = issue_batch(app, "probe", 1, tmp_path / "probe.csv")  # a card whose code index entry we borrow
    assert spec_app.exit_code == 0
    other = read_csv(tmp_path / "probe.csv")[0]["cardId"]
    issuer = BatchIssuer(store, "b4", bulk_issue.BatchSpec(3, "BRL", 2550, "promo", "Winter", "printed@example.com",
                                                          False, True, True))  # fmt: skip
    batch = issuer._register(int(time.time() * 1000))
    first_code = _Derivation(issuer._secret(batch)).code(1, 0)
    planted = store.hasher.digest(first_code)
    store.redis.hset(KEYS.code_index(planted), planted, other)
    try:
        result = issue_batch(app, "b4", 3, tmp_path / "b4.csv")
        assert result.exit_code == 0, result.output
        rows = read_csv(tmp_path / "b4.csv")
        assert rows[0]["redemptionCode"] != first_code
        assert Batch.from_values("b4", store.redis.hmget(KEYS.batches(), batch_fields("b4"))).attempts == {1: 1}
    finally:
        store.redis.hdel(KEYS.code_index(planted), planted)
    books = store.books()["BRL"]
    assert books.cards == 4 and all(store.find_by_code(r["redemptionCode"]).id == r["cardId"] for r in rows)


def test_derived_codes_are_well_formed_distinct_and_repeatable():
    one, two = _Derivation(b"k" * 32), _Derivation(b"j" * 32)
    codes = [one.code(n, 0) for n in range(1, 2001)]
    assert all(CODE.fullmatch(c) for c in codes) and len(set(codes)) == 2000
    assert codes[0] == _Derivation(b"k" * 32).code(1, 0) != two.code(1, 0) != one.code(1, 1)
    assert len({c[0] for c in codes}) == 30  # every symbol of the alphabet shows up first


def test_export_of_a_batch_pages_through_every_bucket_in_time_order(app, tmp_path, monkeypatch):
    """export merges the 256 buckets' logs a page at a time (events.WALK_PAGE); with pages of one event
    it still writes every load once, in time order."""
    assert issue_batch(app, "exported", 40, tmp_path / "codes.csv").exit_code == 0
    monkeypatch.setattr(events, "WALK_PAGE", 1)
    result = cli(app, "export")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(e["cardId"] for e in lines) == sorted(r["cardId"] for r in read_csv(tmp_path / "codes.csv"))
    assert [e["at"] for e in lines] == sorted(e["at"] for e in lines)
    assert {(e["kind"], e["amount"]) for e in lines} == {("credit", "25.50")}


# -- killed by SIGKILL, in another process -----------------------------------------------------------


def cli_env(url: str, cluster: bool) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "APP_ENV": "development",
        "REDIS_URL": url,
        "REDIS_CLUSTER": "1" if cluster else "0",
        "PROVIDER_API_APP_KEY": APP_KEY,
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "REDIS_SOCKET_TIMEOUT": "10",
    }


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["start", "middle"])
def test_a_batch_killed_by_sigkill_completes_on_rerun(app, ledger, tmp_path, moment, request):
    """SIGKILL while the first chunks are in flight, or in the middle of the batch (the end, between the
    last chunk and the CSV's publication, is test_a_batch_killed_around_publishing_its_csv_...)."""
    count, chunk = 3000, 50
    cluster = request.node.callspec.params["ledger"] == "cluster"
    url = request.getfixturevalue("redis_cluster" if cluster else "redis_server").url
    output = tmp_path / "codes.csv"
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "cards", "issue-batch", "--batch-id", "killed",
               "--count", str(count), "-o", str(output), "--chunk", str(chunk), *BATCH_TERMS]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=cli_env(url, cluster), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    partial = output.with_name(f"{output.name}.killed.partial")
    field = batch_fields("killed")[2]
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if moment == "start" and partial.exists():
                break
            if moment == "middle" and chunk * 4 <= int(ledger.hget(KEYS.batches(), field) or 0) < count / 2:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the batch finished before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    existing = store_of(app).books().get("BRL")
    rerun = issue_batch(app, "killed", count, output, "--chunk", str(chunk))
    assert rerun.exit_code == 0, rerun.output
    created_now = int(re.search(r"(\d+) created by this run", rerun.stdout)[1])
    assert created_now == count - (existing.cards if existing else 0)
    assert created_now <= count - chunk * 4 if moment == "middle" else created_now > count / 2
    assert owner_only(output) and not partial.exists()
    assert_batch_complete(app, read_csv(output), count)


@pytest.mark.slow
def test_a_second_run_of_a_running_batch_is_refused(app, ledger, tmp_path, request):
    """Two runs of one batch at once would write the same partial file: the second is refused while the
    first holds it, and the first completes the batch alone."""
    cluster = request.node.callspec.params["ledger"] == "cluster"
    url = request.getfixturevalue("redis_cluster" if cluster else "redis_server").url
    output = tmp_path / "codes.csv"
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "cards", "issue-batch", "--batch-id", "twice",
               "--count", "3000", "-o", str(output), "--chunk", "50", *BATCH_TERMS]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=cli_env(url, cluster), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    partial = output.with_name(f"{output.name}.twice.partial")
    try:
        deadline = time.monotonic() + 60
        while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        second = issue_batch(app, "twice", 3000, output, "--chunk", "50")
        assert second.exit_code == 1 and "another process is running this batch now" in second.output
    finally:
        assert process.wait(120) == 0
    assert_batch_complete(app, read_csv(output), 3000)


# -- load-csv ---------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def batch_cards(app, tmp_path, count: int) -> list[str]:
    assert issue_batch(app, "cards", count, tmp_path / "cards.csv").exit_code == 0
    return [r["cardId"] for r in read_csv(tmp_path / "cards.csv")]


def test_a_load_file_with_bad_rows_writes_nothing_and_names_their_lines(app, tmp_path):
    a, b = batch_cards(app, tmp_path, 2)
    path = write(tmp_path / "credits.csv", (
        "card,amount,requestId\n"
        f"{a},10,r1\n"
        f"{a},1.234,r2\n"  # line 3: BRL has 2 decimals
        "\n"
        f"{'f' * 32},5,r3\n"  # line 5: no such card
        f"{b},-5,r4\n"  # line 6
        f"{b},5,\n"  # line 7: no requestId
        f"{a},3,r1\n"  # line 8: r1 again for card a
        f"{b},5,r1,extra\n"  # line 9: a cell too many
        f"{b},2000000,r5\n"  # line 10: above MAX_TRANSACTION_AMOUNT
    ))  # fmt: skip
    with unchanged(store_of(app).redis):
        result = cli(app, "load-csv", str(path))
    assert result.exit_code == 1
    assert [int(n) for n in re.findall(r"^line (\d+):", result.stderr, re.M)] == [3, 5, 6, 7, 8, 9, 10]
    assert "7 bad row(s): nothing was loaded" in result.stderr
    assert "repeats line 2" in result.stderr and f"no card {'f' * 32}" in result.stderr
    assert not (tmp_path / "credits.results.csv").exists()

    skipped = cli(app, "load-csv", str(path), "--skip-bad-rows")
    assert skipped.exit_code == 1  # some rows were not loaded
    results = read_csv(tmp_path / "credits.results.csv")
    assert owner_only(tmp_path / "credits.results.csv")
    assert [(r["line"], r["status"]) for r in results] == [("2", "credited")] + [
        (str(n), "invalid") for n in (3, 5, 6, 7, 8, 9, 10)]  # fmt: skip
    assert store_of(app).card(a).balance == 2550 + 1000


def test_loads_are_idempotent_by_request_id_and_refusals_are_per_row(app, tmp_path):
    cards = batch_cards(app, tmp_path, 30)
    store = store_of(app)
    store.set_status(cards[5], "blocked", "lost")
    rows = "".join(f"{c},{n + 1}.05,load-{n}\n" for n, c in enumerate(cards))
    path = write(tmp_path / "credits.csv", "Card,Amount,RequestId,currency\n" + rows.replace("\n", ",BRL\n"))
    first = cli(app, "load-csv", str(path), "--json")
    assert first.exit_code == 1  # the blocked card's row was refused
    summary = json.loads(first.stdout)
    assert (summary["credited"], summary["refused"], summary["replayed"]) == (29, 1, 0)
    results = read_csv(tmp_path / "credits.results.csv")
    assert results[5]["status"] == "refused" and "blocked" in results[5]["message"]
    assert results[0]["amount"] == "1.05" and results[0]["transactionId"]
    balances = {c: store.card(c).balance for c in cards}
    assert balances[cards[0]] == 2550 + 105 and balances[cards[5]] == 2550

    store.set_status(cards[5], "active", "found")
    again = cli(app, "load-csv", str(path), "--results", str(tmp_path / "again.csv"), "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["credited"], summary["replayed"]) == (1, 29)
    assert {c: store.card(c).balance for c in cards} == {**balances, cards[5]: 2550 + 605}
    assert read_csv(tmp_path / "again.csv")[0]["transactionId"] == results[0]["transactionId"]

    refused = cli(app, "load-csv", str(path), "--results", str(tmp_path / "again.csv"))
    assert refused.exit_code == 1 and "refusing to overwrite" in refused.output
    conflict = write(tmp_path / "conflict.csv", f"card,amount,requestId\n{cards[0]},9,load-0\n")
    result = cli(app, "load-csv", str(conflict))
    assert result.exit_code == 1 and read_csv(tmp_path / "conflict.results.csv")[0]["status"] == "conflict"


# -- import-csv -------------------------------------------------------------------------------------

IMPORT = (
    "code,balance,currency,expiry,owner,restrictedToOwner\n"
    "6012-3456-7890-1234,25.00,BRL,2030-01-31,Ana@Example.com,true\n"
    "GIFT-ABCD-EFGH-JKLM-NPQR,10,BRL,,,\n"
    "88776655,0,USD,2031-06-30,bob,false\n"
)


def test_imported_cards_keep_their_codes_and_a_rerun_changes_nothing(app, tmp_path):
    store = store_of(app)
    path = write(tmp_path / "legacy.csv", IMPORT)
    args = ("import-csv", str(path), "--relation-name", "legacy", "--currency", "BRL", "--default-owner", "shop",
            "--source", "OldCards")  # fmt: skip
    first = cli(app, *args)
    assert first.exit_code == 0, first.output
    assert "3 imported, 0 imported before" in first.stdout
    assert "warning: 1 code(s) of 8 symbols from an alphabet of 10" in first.stderr
    assert "CODE_LOOKUP_LIMIT=10/minute holds one shopper identity to 14,400 failed searches a day" in first.stderr
    assert "warning" not in first.stderr.replace("warning: 1 code(s) of 8 symbols", "")  # 16 digits resist, 20 letters
    assert "lines 4)" in first.stderr
    results = read_csv(tmp_path / "legacy.results.csv")
    assert owner_only(tmp_path / "legacy.results.csv")
    assert [r["code"] for r in results] == ["****************1234", "****************NPQR", "****************6655"]
    assert "6012" not in (tmp_path / "legacy.results.csv").read_text()  # only the last four of a code

    card = store.find_by_code("6012345678901234")  # spaces, dashes and case do not matter
    assert card is not None and card.id == results[0]["cardId"]
    assert (card.balance, card.currency, card.profile_id, card.restricted_to_owner) == (
        2500, "BRL", "ana@example.com", True)  # fmt: skip
    assert card.expiring_ms == int(datetime(2030, 1, 31, tzinfo=UTC).timestamp() * 1000)
    assert store.find_by_code("gift abcd efgh jklm npqr").profile_id == "shop"
    zero = store.find_by_code("88776655")
    assert (zero.balance, zero.currency, zero.transactions) == (0, "USD", 0)
    tx_ids, _ = store.transaction_ids(card.id, 0, -1)
    tx = store.transaction(card.id, tx_ids[0])[0]
    assert (tx.request_id, tx.description) == ("import", "imported from OldCards")

    with unchanged(store.redis):
        again = cli(app, *args[:-2], "--results", str(tmp_path / "again.csv"))
    assert again.exit_code == 0 and "0 imported, 3 imported before" in again.stdout
    assert [r["status"] for r in read_csv(tmp_path / "again.csv")] == ["already imported"] * 3

    changed = write(tmp_path / "changed.csv", IMPORT.replace("25.00", "30.00"))
    with unchanged(store.redis):
        result = cli(app, "import-csv", str(changed), "--relation-name", "legacy", "--default-owner", "shop")
    assert result.exit_code == 1
    assert read_csv(tmp_path / "changed.results.csv")[0]["status"] == "conflict"


def test_an_import_file_with_bad_rows_writes_nothing(app, tmp_path):
    assert issue_batch(app, "ours", 1, tmp_path / "ours.csv").exit_code == 0
    ours = read_csv(tmp_path / "ours.csv")[0]["redemptionCode"]
    path = write(tmp_path / "bad.csv", (
        "code,balance,currency,expiry,owner\n"
        "1111222233334444,5,BRL,,a\n"
        "1111 2222 3333 4444,5,BRL,,b\n"  # line 3: the same code as line 2
        f"{ours},5,BRL,,c\n"  # line 4: the code names a card already
        "5555666677778888,5,XXX,,d\n"  # line 5: no such currency
        "9999000011112222,5,BRL,2001-01-01,e\n"  # line 6: expired
        ",5,BRL,,f\n"  # line 7: no code
        "3333444455556666,1.001,BRL,,g\n"  # line 8: too precise
    ))  # fmt: skip
    with unchanged(store_of(app).redis):
        result = cli(app, "import-csv", str(path), "--relation-name", "legacy")
    assert result.exit_code == 1
    assert [int(n) for n in re.findall(r"^line (\d+):", result.stderr, re.M)] == [3, 4, 5, 6, 7, 8]
    assert "6 bad row(s): nothing was imported" in result.stderr
    unknown = write(tmp_path / "unknown.csv", "code,balanse\n1,2\n")
    result = cli(app, "import-csv", str(unknown), "--relation-name", "legacy")
    assert result.exit_code == 1 and "unknown column(s) 'balanse'" in result.output


def test_guess_space_estimate():
    assert guess_space("1234-5678") == (8, 10)
    assert guess_space("ab12 CD34") == (8, 36)
    assert guess_space("A!B?") == (4, 26 + 32)
    weak, strong = Shape(12, 10, 1000, []), Shape(20, 30, 1_000_000, [])
    assert weak.guesses_per_hit == 10**9 and not weak.resists  # 10**9 / 1000 per s: 11.6 days
    assert strong.resists and GUESS_RATE == 1000
