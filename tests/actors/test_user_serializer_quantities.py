"""A purchase of several units through the serializer, on a real gate and a real ledger: one
row with its quantity, a final INSUFFICIENT_STOCK only when it is final, the limit checked
before anything is written and held by the ledger whatever a copy of the sale says."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio_asyncio

from actors import SoldOut
from actors.errors import InsufficientStock, InvalidInput, Undecided
from actors.keys import holder_quantity, parse_holder
from actors.ledger import open_ledger
from actors.stock_gate import open_stock_gate
from actors.user_serializer import UserSerializer, open_user_serializer

from ..helpers import fetch, gate_state, make_sale, on_defaults, pg, redis_client, sale_row_locked
from .serializer_fakes import DEFAULTS
from .test_stock_gate import keys_of
from .test_user_serializer import FakeCatalog


@asynccontextmanager
async def serializer_on(settings, *sales) -> AsyncIterator[UserSerializer]:
    """A serializer on a real ledger and gate; ``sales`` are its catalog."""
    async with (
        trio_asyncio.open_loop(),
        open_ledger(on_defaults(settings).ledger_config()) as ledger,
        open_stock_gate(on_defaults(settings).gate_config(),
                        loader=ledger.state, counter=ledger.tally) as gate,
        open_user_serializer(gate, ledger, catalog=FakeCatalog(list(sales)),
                             config=DEFAULTS) as serializer,
    ):
        yield serializer


async def rows_of(settings, sale) -> dict[str, tuple[uuid.UUID, int]]:
    """The sale's rows: user -> (purchase id, quantity)."""
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id, id, quantity FROM purchases WHERE sale_id = $1", sale.id)
    return {r["user_id"]: (r["id"], r["quantity"]) for r in rows}


async def test_a_purchase_of_three_commits_one_row_of_three(settings):
    """buy() of 3 units: one row of quantity 3, the gate holds 3 for the buyer, 3 fewer
    left; the purchase returned says 3."""
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=4)
    with trio.fail_after(20):
        async with serializer_on(settings, sale) as serializer:
            bought, which = await serializer.buy("alice", "127.0.0.1", sale.id, quantity=3)
    assert which == sale and bought.quantity == 3
    assert await rows_of(settings, sale) == {"alice": (bought.id, 3)}
    stock, holders = gate_state(settings, sale)
    assert stock == 7
    value = redis_client(settings).hget(keys_of(settings, sale).buyers, "alice")
    assert parse_holder(value)[0] == str(bought.id) == holders["alice"]
    assert holder_quantity(value) == 3


@pytest.mark.parametrize("quantity", [0, -1, 5])
async def test_a_quantity_outside_the_limit_is_invalid_and_writes_nothing(settings, quantity):
    """A quantity outside 1 to the limit of 4 is InvalidInput naming the limit: no row, and
    the gate not even loaded."""
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=4)
    with trio.fail_after(20):
        async with serializer_on(settings, sale) as serializer:
            with pytest.raises(InvalidInput) as caught:
                await serializer.buy("alice", "127.0.0.1", sale.id, quantity=quantity)
    assert caught.value.field == "quantity"
    assert "from 1 to 4" in str(caught.value)
    assert await rows_of(settings, sale) == {}
    assert gate_state(settings, sale) == (None, {})


async def test_the_ledgers_limit_refuses_what_a_stale_copy_allowed(settings):
    """A copy of the sale that allows 5 while the ledger holds 2: a purchase of 3 is
    InvalidInput naming 2, no row, and its units back in the gate."""
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=2)
    stale = replace(sale, per_user_limit=5)
    with trio.fail_after(20):
        async with serializer_on(settings, stale) as serializer:
            with pytest.raises(InvalidInput) as caught:
                await serializer.buy("greedy", "127.0.0.1", sale.id, quantity=3)
            bought = await serializer.purchase_unchecked(stale, "modest", quantity=2)
    assert "from 1 to 2" in str(caught.value)
    assert await rows_of(settings, sale) == {"modest": (bought.id, 2)}
    assert gate_state(settings, sale) == (8, {"modest": str(bought.id)})


async def test_more_than_is_left_is_insufficient_then_sold_out(settings):
    """Stock 5, 2 bought: 4 asked is INSUFFICIENT_STOCK naming 3, nothing written; 3 then
    buys; then any quantity is SOLD_OUT."""
    sale = await make_sale(settings.database_url, stock=5, per_user_limit=4)
    with trio.fail_after(20):
        async with serializer_on(settings, sale) as serializer:
            first = await serializer.purchase_unchecked(sale, "alice", quantity=2)
            with pytest.raises(InsufficientStock) as caught:
                await serializer.purchase_unchecked(sale, "bob", quantity=4)
            assert gate_state(settings, sale)[0] == 3
            last = await serializer.purchase_unchecked(sale, "carol", quantity=3)
            for user, quantity in (("dave", 2), ("erin", 1), ("bob", 4)):
                with pytest.raises(SoldOut):
                    await serializer.purchase_unchecked(sale, user, quantity=quantity)
    assert caught.value.remaining == 3
    assert await rows_of(settings, sale) == {"alice": (first.id, 2), "carol": (last.id, 3)}
    assert gate_state(settings, sale)[0] == 0


async def test_a_press_units_in_flight_could_serve_waits_then_gets_the_final_answer(settings):
    """Alice's 3 units reserved, her commit held up in PostgreSQL: bob's 2 (one left in the
    gate) waits, Undecided at its deadline, never refused; once her commit lands, bob's next
    press is INSUFFICIENT_STOCK naming the 1 left, and the 1 still sells."""
    sale = await make_sale(settings.database_url, stock=4, per_user_limit=3)
    with trio.fail_after(30):
        async with serializer_on(settings, sale) as serializer:
            bought = []

            async def alice() -> None:
                bought.append(await serializer.purchase_unchecked(sale, "alice", quantity=3))

            async with sale_row_locked(settings.database_url, sale.id) as release, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(alice)
                while gate_state(settings, sale)[0] != 1:
                    await trio.sleep(0.01)
                started = trio.current_time()
                with pytest.raises(Undecided):
                    await serializer.purchase_unchecked(sale, "bob", trio.current_time() + 0.5,
                                                        quantity=2)
                waited = trio.current_time() - started
                release()
            with pytest.raises(InsufficientStock) as caught:
                await serializer.purchase_unchecked(sale, "bob", quantity=2)
            last = await serializer.purchase_unchecked(sale, "carol")
    assert waited >= 0.45
    assert caught.value.remaining == 1
    assert await rows_of(settings, sale) == {"alice": (bought[0].id, 3), "carol": (last.id, 1)}


async def test_a_second_press_of_a_size_that_fits_is_not_told_the_firsts_refusal(settings):
    """Alice asks 4 of 3 left and, while that is in flight, 1: the 4 is INSUFFICIENT_STOCK
    (3), the 1 is not told so (it fits): it is bought, one row of 1 unit."""
    sale = await make_sale(settings.database_url, stock=3, per_user_limit=4)
    outcomes: dict[int, object] = {}

    async def press(serializer: UserSerializer, quantity: int) -> None:
        try:
            outcomes[quantity] = await serializer.purchase_unchecked(sale, "alice",
                                                                     quantity=quantity)
        except InsufficientStock as exc:
            outcomes[quantity] = exc

    with trio.fail_after(20):
        async with serializer_on(settings, sale) as serializer, trio.open_nursery() as nursery:
            nursery.start_soon(press, serializer, 4)
            await trio.sleep(0)
            nursery.start_soon(press, serializer, 1)
    assert isinstance(outcomes[4], InsufficientStock) and outcomes[4].remaining == 3
    bought = outcomes[1]
    assert not isinstance(bought, Exception) and bought.quantity == 1, bought
    assert serializer.statistics().coalesced == 1, "the second press waited on the first"
    assert {u: n for u, (_, n) in (await rows_of(settings, sale)).items()} == {"alice": 1}
