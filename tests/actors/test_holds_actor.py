"""The holds actor's own decisions, driven by hand on real Redis and PostgreSQL: a place or
why not, and an ending told to a gate that is not there."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from actors.errors import AlreadyPurchased, SaleNotActive, SoldOut, StandingHold, Waitlisted
from flashflow.runtime import open_runtime

from ..helpers import fetch, gate_keys, make_sale, pg, redis_client


def by_hand(settings):
    """The runtime's sweep and gate retry left to the test."""
    return replace(settings, hold_sweep_s=3600.0, hold_gate_retry_s=3600.0,
                   reconcile_interval_s=3600.0)


async def test_a_place_or_why_not(settings):
    """take_a_place: a place when every unit is held; the user's own hold or purchase;
    SOLD_OUT once every unit is paid; a free unit sends the press back to the gate."""
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=600)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            holds, deadline = runtime.holds, trio.current_time() + 10
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
                await holds.take_a_place(sale, "early", deadline, 0.5)  # a unit is free
            held = await runtime.serializer.purchase_unchecked(sale, "alice")
            with pytest.raises(Waitlisted) as placed:
                await holds.take_a_place(sale, "bobby", deadline, 0.01)
            with pytest.raises(StandingHold):
                await holds.take_a_place(sale, "alice", deadline, 0.01)
            await holds.confirm(sale.id, held.id)
            with pytest.raises(AlreadyPurchased):
                await holds.take_a_place(sale, "alice", deadline, 0.01)
            with pytest.raises(SoldOut):
                await holds.take_a_place(sale, "carol", deadline, 0.01)
    assert (placed.value.place.position, placed.value.place.length) == (1, 1)


async def test_no_place_once_the_sale_ended(settings):
    """After the end, no place is made."""
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=600)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            await runtime.serializer.purchase_unchecked(sale, "alice")
            await runtime.ledger.end_sale(sale.id)
            with pytest.raises(SaleNotActive):
                await runtime.holds.take_a_place(sale, "bobby", trio.current_time() + 5, 0.01)


async def test_an_ending_waits_for_a_gate_that_is_not_there(settings):
    """A hold lapses while its sale's gate is gone from Redis: the ending is not marked done
    (a gate build under way may have read the ledger before it); once the gate is built
    again, telling it again changes nothing and marks it done."""
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=1)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            await runtime.serializer.purchase_unchecked(sale, "alice")
            r = redis_client(settings)
            r.delete(*gate_keys(settings, sale.id))
            await trio.sleep(1.2)
            assert await runtime.holds.sweep() == 1
            undone = await pg(settings.database_url, fetch,
                              "SELECT gate_done FROM hold_endings")
            await runtime.gate.store.ensure_loaded(sale)
            runtime.holds._config = replace(runtime.holds._config, gate_retry_s=0.0)
            assert await runtime.holds.retry_gate() == 1
            assert await runtime.holds.retry_gate() == 0
            stock = r.get(gate_keys(settings, sale.id)[0])
    assert [row["gate_done"] for row in undone] == [False]
    assert stock == "2"
