"""A process's copy of a sale is never the truth: the stock and window come from PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import trio

from actors import Sale, SoldOut, Tally
from actors.catalog import open_catalog
from actors.errors import Undecided
from actors.keys import change_notice, sale_keys, stock_channel
from flashflow.runtime import open_runtime

from ..helpers import make_sale, pg, redis_client
from .test_stock_gate import Loader, gate_for


async def test_sold_out_is_judged_by_the_ledgers_stock_not_the_copy(settings):
    """The copy says 2 units and 2 are committed, the ledger says 4: no SOLD_OUT, a wait."""
    sale = await make_sale(settings.database_url, stock=2)
    loader = Loader(sold=2, buyers={"a": str(uuid.uuid4()), "b": str(uuid.uuid4())},
                    totals={sale.id: 4})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            redis_client(settings).set(sale_keys(settings.key_prefix, sale.id).stock, 0)
            with pytest.raises(Undecided):
                await gate.reserve(sale, "c", uuid.uuid4(), deadline=trio.current_time() + 0.3)
            loader.sold = 4
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "c", uuid.uuid4(), deadline=trio.current_time() + 2)


async def test_a_redefined_sale_is_asked_about_again(settings):
    """A sale remembered as sold out is forgotten once its definition changes."""
    sale = await make_sale(settings.database_url, stock=1)
    loader = Loader(sold=1, buyers={"a": str(uuid.uuid4())}, totals={sale.id: 1})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            redis_client(settings).set(sale_keys(settings.key_prefix, sale.id).stock, 0)
            assert await gate.queues.learn_sold_out(sale)
            with pytest.raises(SoldOut):
                gate.queues.answer_from_memory(sale, "b")
            loader.totals[sale.id] = 3  # an operator raised the stock
            gate.queues.redefine([sale.id])
            gate.queues.answer_from_memory(sale, "b")  # no final answer from memory any more
            assert not await gate.queues.learn_sold_out(sale)


async def test_the_catalog_reloads_on_a_nudge_and_reports_what_changed(autojump_clock):
    """A nudge reloads at once, long before the periodic refresh; changed sales are reported."""
    now = datetime.now(UTC)
    sale_id = uuid.uuid4()
    sales = [Sale(sale_id, "W", 10, now + timedelta(hours=1), now + timedelta(hours=2))]
    changed: list[list[uuid.UUID]] = []

    async def fetch() -> list[Sale]:
        return list(sales)

    with trio.fail_after(5):
        async with open_catalog(fetch, refresh_s=3600, on_change=(changed.append,)) as catalog:
            sales[0] = replace(sales[0], total_stock=100)
            catalog.nudge()
            while catalog.get(sale_id).total_stock != 100:
                await trio.sleep(0.01)
            sales[0] = replace(sales[0], product_name="renamed")
            catalog.nudge()
            while catalog.get(sale_id).product_name != "renamed":
                await trio.sleep(0.01)
    assert changed == [[sale_id]]


async def test_the_catalog_follows_the_databases_clock(autojump_clock):
    """With the database 30 s ahead, now() is 30 s ahead of the local clock."""
    local = datetime(2026, 1, 1, tzinfo=UTC)

    async def fetch() -> list:
        return []

    async def database_time() -> datetime:
        return local + timedelta(seconds=30)

    async with open_catalog(fetch, refresh_s=3600, database_time=database_time,
                            clock=lambda: local) as catalog:
        assert catalog.now() == local + timedelta(seconds=30)


async def test_a_stale_copy_never_rebuilds_the_gate(settings):
    """Stock raised in PostgreSQL behind the process's back: reconcile and load use the new one."""
    settings = replace(settings, reconcile_interval_s=0.1, catalog_refresh_s=3600)
    sale = await make_sale(settings.database_url, stock=10,
                           starts_in=timedelta(hours=1))
    keys, r = sale_keys(settings.key_prefix, sale.id), redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            await runtime.gate.store.ensure_loaded(sale)
            await pg(settings.database_url, _set_stock, sale.id, 100)
            assert runtime.catalog.get(sale.id).total_stock == 10  # the copy is stale
            while r.get(keys.stock) != "100":
                await trio.sleep(0.05)
            r.delete(keys.stock)
            await runtime.gate.store.ensure_loaded(sale)
            assert r.get(keys.stock) == "100"
            assert await runtime.ledger.tally(sale.id) == Tally(100, 0)


async def test_a_change_notice_reloads_the_catalog_at_once(settings):
    """A change written elsewhere and announced on the channel is held at once."""
    settings = replace(settings, catalog_refresh_s=3600)
    sale = await make_sale(settings.database_url, stock=10, starts_in=timedelta(hours=1))
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            assert runtime.catalog.get(sale.id).total_stock == 10
            await pg(settings.database_url, _set_stock, sale.id, 25)
            redis_client(settings).publish(stock_channel(settings.key_prefix),
                                           change_notice(sale.id))
            # The periodic refresh is an hour away: only the notice can bring the change.
            while runtime.catalog.get(sale.id).total_stock != 25:
                await trio.sleep(0.01)


async def _set_stock(conn, sale_id: uuid.UUID, total: int) -> None:
    await conn.execute("UPDATE flash_sales SET total_stock = $2 WHERE id = $1", sale_id, total)
