"""The ledger actor against real PostgreSQL: group commit, duplicates, the stock CHECK, reads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

import actors.ledger
from actors import (
    BackendUnavailable,
    CommitResult,
    LedgerState,
    Overloaded,
    Purchase,
    Sale,
    Tally,
    ledger_sql,
)
from actors.errors import LedgerUnreachable
from actors.ledger import CommitOutcome, Ledger, open_ledger
from flashflow.settings import Settings

from ..helpers import fetch, make_sale, on_defaults, pg, sale_row_locked


@asynccontextmanager
async def ledger_for(database_url: str, **knobs) -> AsyncIterator[Ledger]:
    """A ledger on the test's database, inside an asyncio bridge."""
    async with trio_asyncio.open_loop():
        config = replace(Settings(database_url=database_url).ledger_config(), **knobs)
        async with open_ledger(config) as ledger:
            yield ledger


def purchase_of(sale: Sale, user_id: str) -> Purchase:
    """A fresh purchase of one unit of ``sale`` for ``user_id``."""
    return Purchase(uuid.uuid4(), sale.id, user_id, datetime.now(UTC))


async def commit_all(ledger: Ledger, purchases: list[Purchase]) -> list[CommitOutcome | Exception]:
    """Commit every purchase concurrently; return each outcome or error, in input order."""
    outcomes: list[CommitOutcome | Exception] = [None] * len(purchases)  # type: ignore[list-item]

    async def one(i: int) -> None:
        try:
            outcomes[i] = await ledger.commit(purchases[i])
        except (Overloaded, BackendUnavailable) as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(purchases)):
            nursery.start_soon(one, i)
    return outcomes


async def rows_and_sold(url: str, sale: Sale) -> tuple[dict[str, uuid.UUID], int]:
    """The committed purchases of a sale (user -> id) and its ``sold`` counter."""
    rows = await pg(url, fetch, "SELECT user_id, id FROM purchases WHERE sale_id = $1", sale.id)
    sold = await pg(url, fetch, "SELECT sold FROM flash_sales WHERE id = $1", sale.id)
    return {r["user_id"]: r["id"] for r in rows}, sold[0]["sold"]


async def test_concurrent_commits_are_grouped_into_few_transactions(settings):
    """Many concurrent commits cost fewer batches than commits and all land, counted in sold."""
    url = settings.database_url
    sale = await make_sale(url, stock=100)
    purchases = [purchase_of(sale, f"user-{i}") for i in range(40)]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, purchases)
            stats = ledger.statistics()
    assert [o.result for o in outcomes] == [CommitResult.COMMITTED] * 40
    assert [o.purchase for o in outcomes] == purchases
    assert stats.batches < len(purchases)
    assert stats.largest_batch > 1
    assert stats.committed == 40
    assert stats.failed_batches == 0
    rows, sold = await rows_and_sold(url, sale)
    assert rows == {p.user_id: p.id for p in purchases}
    assert sold == 40


async def test_batch_max_caps_the_size_of_a_transaction(settings):
    """No group commit holds more than batch_max purchases."""
    url = settings.database_url
    sale = await make_sale(url, stock=100)
    purchases = [purchase_of(sale, f"user-{i}") for i in range(20)]
    with trio.fail_after(20):
        async with ledger_for(url, batch_max=4) as ledger:
            outcomes = await commit_all(ledger, purchases)
            stats = ledger.statistics()
    assert all(o.result is CommitResult.COMMITTED for o in outcomes)
    assert stats.largest_batch == 4
    assert stats.batches >= 5
    rows, sold = await rows_and_sold(url, sale)
    assert len(rows) == sold == 20


async def test_duplicate_user_gets_the_existing_purchase(settings):
    """A second commit for the same user is DUPLICATE and carries the purchase that stands."""
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    first, second = purchase_of(sale, "alice"), purchase_of(sale, "alice")
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            assert (await ledger.commit(first)).result is CommitResult.COMMITTED
            outcome = await ledger.commit(second)
    assert outcome.result is CommitResult.DUPLICATE
    assert outcome.purchase == first
    rows, sold = await rows_and_sold(url, sale)
    assert rows == {"alice": first.id}
    assert sold == 1


async def test_duplicates_within_one_batch_commit_exactly_one(settings):
    """Concurrent commits of one user in one batch commit one; the rest see it as DUPLICATE."""
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    purchases = [purchase_of(sale, "alice") for _ in range(3)]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, purchases)
    winners = [o.purchase for o in outcomes if o.result is CommitResult.COMMITTED]
    assert len(winners) == 1
    assert all(o.purchase == winners[0] for o in outcomes)
    rows, sold = await rows_and_sold(url, sale)
    assert rows == {"alice": winners[0].id}
    assert sold == 1


async def test_stock_check_prevents_overselling(settings):
    """With stock 3, five concurrent buyers give exactly 3 COMMITTED, 2 NO_STOCK and sold 3."""
    url = settings.database_url
    sale = await make_sale(url, stock=3)
    purchases = [purchase_of(sale, f"user-{i}") for i in range(5)]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, purchases)
    results = [o.result for o in outcomes]
    assert results.count(CommitResult.COMMITTED) == 3
    assert results.count(CommitResult.NO_STOCK) == 2
    assert all(o.purchase is None for o in outcomes if o.result is CommitResult.NO_STOCK)
    rows, sold = await rows_and_sold(url, sale)
    committed = {o.purchase.user_id: o.purchase.id for o in outcomes if o.purchase}
    assert rows == committed
    assert sold == 3


async def test_overflowing_batch_still_reports_duplicates(settings):
    """When a batch passes the stock, a user who already bought is still told DUPLICATE."""
    url = settings.database_url
    sale = await make_sale(url, stock=2)
    old = purchase_of(sale, "old-buyer")
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            await ledger.commit(old)
            outcomes = await commit_all(ledger, [purchase_of(sale, "old-buyer")]
                                        + [purchase_of(sale, f"new-{i}") for i in range(3)])
    assert outcomes[0] == CommitOutcome(CommitResult.DUPLICATE, old)
    results = [o.result for o in outcomes[1:]]
    assert results.count(CommitResult.COMMITTED) == 1
    assert results.count(CommitResult.NO_STOCK) == 2
    _, sold = await rows_and_sold(url, sale)
    assert sold == 2


async def test_the_committed_state_is_read_in_pages_of_one_snapshot(settings, monkeypatch):
    """Seven buyers read three at a time (pages of 3, 3 and 1), ids that sort oddly included:
    exactly the committed buyers, each with its purchase, and the sold count."""
    monkeypatch.setattr(actors.ledger, "BUYERS_PAGE", 3)
    url = settings.database_url
    sale = await make_sale(url, stock=7)
    purchases = [purchase_of(sale, u) for u in ["b", "a", "ünï", "A", "a-1", "zz", "Ω"]]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            await commit_all(ledger, purchases)
            state = await ledger.state(sale)
    assert state == LedgerState(7, 7, {p.user_id: str(p.id) for p in purchases})


async def test_reads_state_purchases_and_sales(settings):
    """state(), find_purchase(), sales() and ping() read what is committed."""
    url = settings.database_url
    later = await make_sale(url, stock=4, product="Later", starts_in=timedelta(hours=2))
    sale = await make_sale(url, stock=4, product="Now")
    bought = [purchase_of(sale, "alice"), purchase_of(sale, "bob")]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            assert await ledger.state(sale) == LedgerState(4, 0, {})
            await commit_all(ledger, bought)
            state = await ledger.state(sale)
            found = await ledger.find_purchase(sale.id, "alice")
            missing = await ledger.find_purchase(sale.id, "carol")
            elsewhere = await ledger.find_purchase(later.id, "alice")
            sales = await ledger.sales()
            users = await ledger.purchases(sale.id, ["alice", "carol", "bob"])
            assert await ledger.ping() is True
    assert state == LedgerState(4, 2, {p.user_id: str(p.id) for p in bought})
    assert found == bought[0]
    assert missing is None and elsewhere is None
    assert users == {p.user_id: p for p in bought} and set(users) == {"alice", "bob"}
    assert sales == [sale, later]
    assert await pg(url, ledger_sql.fetch_sale, later.id) == later
    assert await pg(url, ledger_sql.fetch_sale, uuid.uuid4()) is None


async def test_refused_batch_fails_its_callers_and_is_counted(settings):
    """A batch PostgreSQL refuses (unknown sale) fails each caller BackendUnavailable."""
    url = settings.database_url
    ghost = Sale(uuid.uuid4(), "Ghost", 1, datetime.now(UTC), datetime.now(UTC))
    sale = await make_sale(url, stock=1)
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, [purchase_of(ghost, "alice")])
            still = await ledger.commit(purchase_of(sale, "alice"))
            stats = ledger.statistics()
    assert isinstance(outcomes[0], BackendUnavailable)
    assert outcomes[0].backend == "postgres"
    assert still.result is CommitResult.COMMITTED
    assert stats.failed_batches == 1
    assert stats.committed == 1


async def test_full_inbox_answers_overloaded(settings):
    """With a one-slot inbox, a burst of commits is partly refused Overloaded."""
    url = settings.database_url
    sale = await make_sale(url, stock=100)
    purchases = [purchase_of(sale, f"user-{i}") for i in range(20)]
    with trio.fail_after(20):
        async with ledger_for(url, inbox_size=1) as ledger:
            outcomes = await commit_all(ledger, purchases)
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    committed = {p.user_id for p, o in zip(purchases, outcomes, strict=True)
                 if isinstance(o, CommitOutcome)}
    assert refused and committed
    assert len(refused) + len(committed) == len(purchases)
    assert all(o.actor == "ledger" for o in refused)
    rows, _ = await rows_and_sold(url, sale)
    assert set(rows) == committed


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:1/test",
    "postgresql://postgres@127.0.0.1:5432/ff_no_such_database",
], ids=["closed-port", "unknown-database"])
async def test_unreachable_database_fails_at_open(settings, url):
    """Opening a ledger on a database that cannot be reached raises BackendUnavailable."""
    with trio.fail_after(20):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                async with open_ledger(Settings(database_url=url,
                                                postgres_timeout_s=2.0).ledger_config()):
                    pytest.fail("the ledger opened without PostgreSQL")  # pragma: no cover
    assert caught.value.backend == "postgres"


async def test_lookups_are_batched(settings):
    """Many concurrent purchase lookups share few queries and each gets its own answer."""
    sale = await make_sale(settings.database_url, stock=50)
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), open_ledger(
                on_defaults(settings).ledger_config()) as ledger:
            buyers = [f"reader-{i}" for i in range(0, 60, 2)]
            for user in buyers:
                await ledger.commit(Purchase(uuid.uuid4(), sale.id, user, datetime.now(UTC)))
            answers: dict[str, object] = {}

            async def look(user: str) -> None:
                answers[user] = await ledger.find_purchase(sale.id, user)

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(look, f"reader-{i}")
            stats = ledger.statistics()
    assert stats.lookups == 60
    assert stats.lookup_batches < 60
    assert {u for u, p in answers.items() if p is not None} == set(buyers)
    assert all(p.user_id == u for u, p in answers.items() if p is not None)


async def test_no_purchase_commits_outside_the_window_by_the_database_clock(settings):
    """A sale that ended (or has not begun) by PostgreSQL's clock commits nothing."""
    url = settings.database_url
    ended = await make_sale(url, stock=3, starts_in=timedelta(hours=-2), lasts=timedelta(hours=1))
    later = await make_sale(url, stock=3, starts_in=timedelta(hours=1))
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            late = await commit_all(ledger, [purchase_of(ended, "a"), purchase_of(ended, "b")])
            early = await ledger.commit(purchase_of(later, "c"))
    assert [o.result for o in late] == [CommitResult.ENDED, CommitResult.ENDED]
    assert early.result is CommitResult.NOT_STARTED
    for sale in (ended, later):
        assert await rows_and_sold(url, sale) == ({}, 0)


async def test_a_commit_racing_the_end_of_the_sale_is_never_after_it(settings):
    """Purchases sent as the sale closes either commit before endTime or are refused ENDED."""
    url = settings.database_url
    sale = await make_sale(url, stock=1000, starts_in=timedelta(minutes=-1),
                           lasts=timedelta(minutes=1, seconds=0.6))
    outcomes: list[CommitOutcome] = []
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            for i in range(200):
                outcomes.extend(await commit_all(ledger, [purchase_of(sale, f"u{i}-{j}")
                                                          for j in range(5)]))
                await trio.sleep(0.01)
    results = {o.result for o in outcomes}
    assert results == {CommitResult.COMMITTED, CommitResult.ENDED}, results
    rows = await pg(url, fetch,
                    "SELECT count(*) AS late FROM purchases p"
                    " JOIN flash_sales f ON f.id = p.sale_id"
                    " WHERE p.sale_id = $1 AND p.committed_at >= f.end_time", sale.id)
    assert rows[0]["late"] == 0


async def test_only_the_stock_constraint_means_no_stock(settings):
    """Any other constraint refusing a batch is an error, never NO_STOCK."""
    url = settings.database_url
    sale = await make_sale(url, stock=3)
    too_long = Purchase(uuid.uuid4(), sale.id, "x" * 300, datetime.now(UTC))  # length CHECK
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            with pytest.raises(BackendUnavailable):
                await ledger.commit(too_long)
    assert await rows_and_sold(url, sale) == ({}, 0)


async def test_a_lost_reply_is_answered_by_the_ledger(settings):
    """inquire() reads what committed: the same purchase, another one, or none."""
    url = settings.database_url
    sale = await make_sale(url, stock=3)
    mine, other = purchase_of(sale, "alice"), purchase_of(sale, "alice")
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            absent = await ledger.inquire(mine)
            await ledger.commit(mine)
            same = await ledger.inquire(mine)
            dup = await ledger.inquire(other)
            assert await ledger.resolve(sale.id, []) == {}
    assert absent.result is CommitResult.ABSENT
    assert (same.result, same.purchase.id) == (CommitResult.COMMITTED, mine.id)
    assert (dup.result, dup.purchase.id) == (CommitResult.DUPLICATE, mine.id)


async def test_a_commit_still_queued_at_its_deadline_is_withdrawn_unsent(settings):
    """Behind a batch stuck on a row lock, a queued commit is withdrawn at its deadline (never
    sent, LedgerUnreachable), the stuck one is in doubt (BackendUnavailable), neither waits
    for the other's timeout, and the withdrawn one never commits."""
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    stuck, queued = purchase_of(sale, "stuck"), purchase_of(sale, "queued")
    answers: dict[str, tuple[type, float]] = {}
    with trio.fail_after(30):
        async with ledger_for(url, timeout_s=20.0) as ledger, \
                sale_row_locked(url, sale.id):

            async def one(purchase: Purchase, wait_s: float) -> None:
                started = trio.current_time()
                with pytest.raises(BackendUnavailable) as raised:
                    await ledger.commit(purchase, started + wait_s)
                answers[purchase.user_id] = (type(raised.value),
                                             trio.current_time() - started)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, stuck, 1.0)
                await trio.sleep(0.2)  # the first batch is out, holding the actor
                nursery.start_soon(one, queued, 0.5)
            withdrawn = ledger.statistics().withdrawn
    assert answers["queued"][0] is LedgerUnreachable
    assert answers["stuck"][0] is BackendUnavailable
    # Each answered at its own deadline, not after the 20 s PostgreSQL timeout.
    assert answers["queued"][1] < 5 and answers["stuck"][1] < 5, answers
    assert withdrawn == 1
    rows, _ = await rows_and_sold(url, sale)
    assert "queued" not in rows


async def test_tally_reads_the_stock_and_the_count_together(settings):
    """tally() is PostgreSQL's stock and committed count, whatever a copy of the sale says."""
    url = settings.database_url
    sale = await make_sale(url, stock=4)
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            await ledger.commit(purchase_of(sale, "a"))
            assert await ledger.tally(sale.id) == Tally(4, 1, buyers=1)
            state = await ledger.state(replace(sale, total_stock=999))
    assert (state.total_stock, state.sold) == (4, 1)
