"""The ledger with quantities, against real PostgreSQL: a row takes its units, ``sold`` counts
units, the stock constraint weighs them, and the per-user limit is the ledger's own."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import trio

from actors import CommitResult, LedgerState, Purchase, Sale, Tally, ledger_sql
from actors.ledger import CommitOutcome

from ..helpers import fetch, make_sale, pg
from .test_ledger import commit_all, ledger_for


def purchase_of(sale: Sale, user_id: str, quantity: int) -> Purchase:
    """A fresh purchase of ``quantity`` units of ``sale`` for ``user_id``."""
    return Purchase(uuid.uuid4(), sale.id, user_id, datetime.now(UTC), quantity=quantity)


async def rows_and_sold(url: str, sale: Sale) -> tuple[dict[str, int], int]:
    """The committed purchases of a sale (user -> quantity) and its ``sold`` counter."""
    rows = await pg(url, fetch, "SELECT user_id, quantity FROM purchases WHERE sale_id = $1",
                    sale.id)
    sold = await pg(url, fetch, "SELECT sold FROM flash_sales WHERE id = $1", sale.id)
    return {r["user_id"]: r["quantity"] for r in rows}, sold[0]["sold"]


class OneConnection:
    """A pool of the one connection :func:`pg` gives, for :func:`ledger_sql.write_batch`."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def acquire(self) -> Any:
        return self._conn

    async def release(self, conn: Any) -> None:
        pass


async def write_one_batch(conn: Any, sale_id: uuid.UUID,
                          purchases: list[Purchase]) -> ledger_sql.BatchResult:
    """Commit ``purchases`` as one batch, as the ledger actor would."""
    return await ledger_sql.write_batch(OneConnection(conn), sale_id, purchases)


async def test_sold_counts_units_and_each_row_keeps_its_quantity(settings):
    """Purchases of 3, 2 and 1 units: sold is 6; the rows, the state, the tally and a
    lookup carry each quantity; a deleted row gives all its units back."""
    url = settings.database_url
    sale = await make_sale(url, stock=10, per_user_limit=4)
    bought = [purchase_of(sale, "alice", 3), purchase_of(sale, "bob", 2),
              purchase_of(sale, "carol", 1)]
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, bought)
            state = await ledger.state(sale)
            tally = await ledger.tally(sale.id)
            found = await ledger.find_purchase(sale.id, "alice")
    assert [o.result for o in outcomes] == [CommitResult.COMMITTED] * 3
    assert await rows_and_sold(url, sale) == ({"alice": 3, "bob": 2, "carol": 1}, 6)
    assert state == LedgerState(10, 6, {p.user_id: str(p.id) for p in bought},
                                {"alice": 3, "bob": 2})
    assert tally == Tally(10, 6, buyers=3)
    assert found is not None and found.quantity == 3
    await pg(url, fetch, "DELETE FROM purchases WHERE user_id = 'alice' RETURNING id")
    assert await rows_and_sold(url, sale) == ({"bob": 2, "carol": 1}, 3)
    [row] = await pg(url, fetch, "SELECT buyers FROM flash_sales WHERE id = $1", sale.id)
    assert row["buyers"] == 2, "the rows are counted beside the units, down as well as up"


async def test_the_stock_constraint_refuses_a_quantity_that_does_not_fit(settings):
    """Stock 5 with 3 sold: 3 more is NO_STOCK, though 2 are left; 2 then commits; sold 5."""
    url = settings.database_url
    sale = await make_sale(url, stock=5, per_user_limit=3)
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            first = await ledger.commit(purchase_of(sale, "alice", 3))
            refused = await ledger.commit(purchase_of(sale, "bob", 3))
            fits = await ledger.commit(purchase_of(sale, "carol", 2))
    assert first.result is CommitResult.COMMITTED
    assert refused == CommitOutcome(CommitResult.NO_STOCK, None)
    assert fits.result is CommitResult.COMMITTED
    assert await rows_and_sold(url, sale) == ({"alice": 3, "carol": 2}, 5)


async def test_one_batch_refuses_only_its_row_over_the_stock(settings):
    """One batch of 3, 3 and 1 with stock 4: the second row alone is refused for stock,
    the rows before and after it commit."""
    url = settings.database_url
    sale = await make_sale(url, stock=4, per_user_limit=3)
    batch = [purchase_of(sale, "alice", 3), purchase_of(sale, "bob", 3),
             purchase_of(sale, "carol", 1)]
    result = await pg(url, write_one_batch, sale.id, batch)
    assert result.committed == {batch[0].id, batch[2].id}
    assert result.no_stock == {batch[1].id}
    assert result.over_limit == {}
    assert await rows_and_sold(url, sale) == ({"alice": 3, "carol": 1}, 4)


async def test_the_per_user_limit_refuses_a_row_over_it_alone(settings):
    """One batch with a row over the sale's limit of 2: that row alone is refused, naming
    the limit, and the rest of the batch commits."""
    url = settings.database_url
    sale = await make_sale(url, stock=10, per_user_limit=2)
    batch = [purchase_of(sale, "alice", 2), purchase_of(sale, "greedy", 3),
             purchase_of(sale, "carol", 1)]
    result = await pg(url, write_one_batch, sale.id, batch)
    assert result.committed == {batch[0].id, batch[2].id}
    assert result.over_limit == {batch[1].id: 2}
    assert result.no_stock == set()
    assert await rows_and_sold(url, sale) == ({"alice": 2, "carol": 1}, 3)


async def test_the_ledgers_limit_holds_whatever_a_copy_of_the_sale_says(settings):
    """A commit over the limit is OVER_LIMIT with the ledger's limit, even from a process
    whose copy of the sale allows more, and nothing is written; concurrent commits of others
    land."""
    url = settings.database_url
    sale = await make_sale(url, stock=10, per_user_limit=2)
    stale = replace(sale, per_user_limit=5)
    with trio.fail_after(20):
        async with ledger_for(url) as ledger:
            outcomes = await commit_all(ledger, [purchase_of(stale, "greedy", 4),
                                                 purchase_of(stale, "alice", 2),
                                                 purchase_of(stale, "bob", 1)])
    assert outcomes[0] == CommitOutcome(CommitResult.OVER_LIMIT, None, 2)
    assert [o.result for o in outcomes[1:]] == [CommitResult.COMMITTED] * 2
    assert await rows_and_sold(url, sale) == ({"alice": 2, "bob": 1}, 3)
