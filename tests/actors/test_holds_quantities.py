"""Holds and the waitlist with quantities, on real Redis and PostgreSQL: a place waits for
its quantity, an ending offers all its units at once, first fit in place order, and the gate
follows the rows unit for unit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from actors import holds_sql
from actors.errors import InsufficientStock, InvalidInput, Waitlisted
from actors.model import Standing
from flashflow.runtime import open_runtime

from ..helpers import fetch, make_sale, pg
from .test_holds_actor import by_hand


async def wait_in_line(runtime, sale, user: str, quantity: int):
    """Press for ``quantity`` units where too few are free; return the place given."""
    with pytest.raises(Waitlisted) as placed:
        await runtime.serializer.purchase_unchecked(sale, user, quantity=quantity)
    return placed.value.place


async def rows_of(settings, sale) -> dict[str, tuple[str, int]]:
    """The sale's rows, held or confirmed: user -> (purchase id, quantity)."""
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id, id, quantity FROM purchases WHERE sale_id = $1", sale.id)
    return {r["user_id"]: (str(r["id"]), r["quantity"]) for r in rows}


async def endings_of(settings, sale) -> list:
    """The sale's hold endings with their offers."""
    return await pg(settings.database_url, fetch,
                    "SELECT user_id, outcome, quantity, offered_to, offered_user, offered_also, "
                    "offered_also_users, gate_done FROM hold_endings WHERE sale_id = $1",
                    sale.id)


async def assert_gate_holds_the_rows(runtime, settings, sale) -> None:
    """The gate's holders are the rows, unit for unit, and its stock what they leave."""
    rows = await rows_of(settings, sale)
    assert await runtime.gate.store.holdings(sale.id) == rows
    assert await runtime.gate.store.stock(sale.id) == sale.total_stock - sum(
        n for _, n in rows.values())


async def test_a_buyer_asking_more_than_is_free_waits_for_that_many(settings):
    """Stock 3, a hold of 2: bob asking 2 (1 free) gets a place for 2, while carol's 1 takes
    the free unit; the hold's cancel gives bob both units at once, and his cancel puts
    both back on sale."""
    sale = await make_sale(settings.database_url, stock=3, hold_seconds=600, per_user_limit=3)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            alice = await runtime.serializer.purchase_unchecked(sale, "alice", quantity=2)
            place = await wait_in_line(runtime, sale, "bobby", 2)
            carol = await runtime.serializer.purchase_unchecked(sale, "carol")
            waiting = await pg(settings.database_url, fetch,
                               "SELECT user_id, quantity FROM waitlist WHERE sale_id = $1",
                               sale.id)
            ending = await runtime.holds.cancel(sale.id, alice.id)
            bob = await runtime.holds.status(sale.id, "bobby")
            await assert_gate_holds_the_rows(runtime, settings, sale)
            # Nobody waits now: bob's two units go back on sale when his hold ends.
            await runtime.holds.cancel(sale.id, bob.purchase.id)
            await assert_gate_holds_the_rows(runtime, settings, sale)
            back = await runtime.gate.store.stock(sale.id)
    assert alice.held and alice.quantity == 2
    assert (place.position, place.length, place.quantity) == (1, 1, 2)
    assert [(r["user_id"], r["quantity"]) for r in waiting] == [("bobby", 2)]
    assert carol.held and carol.quantity == 1
    assert [(o.user_id, o.quantity) for o in ending.offers] == [("bobby", 2)]
    assert bob.standing is Standing.HELD and bob.purchase.quantity == 2
    assert bob.purchase.id == ending.offers[0].id
    assert set(await rows_of(settings, sale)) == {"carol"}
    assert back == 2


async def test_a_lapse_of_two_units_goes_whole_to_the_first_place_that_wants_two(settings):
    """A 2-unit hold lapses with a place for 2, then one for 1, in line: the first gets
    both units; the place for 1 waits on, first in line and open."""
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=2, per_user_limit=2)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            await runtime.serializer.purchase_unchecked(sale, "alice", quantity=2)
            await wait_in_line(runtime, sale, "bobby", 2)
            await wait_in_line(runtime, sale, "carol", 1)
            await trio.sleep(2.2)
            assert await runtime.holds.sweep() == 1
            bob = await runtime.holds.status(sale.id, "bobby")
            carol = await runtime.holds.status(sale.id, "carol")
            alice = await runtime.holds.status(sale.id, "alice")
            await assert_gate_holds_the_rows(runtime, settings, sale)
    assert bob.standing is Standing.HELD and bob.purchase.quantity == 2
    assert carol.standing is Standing.WAITLISTED
    assert (carol.place.position, carol.place.quantity) == (1, 1)
    assert alice.standing is Standing.LAPSED
    [ended] = await endings_of(settings, sale)
    assert (ended["user_id"], ended["outcome"], ended["quantity"]) == ("alice", "lapsed", 2)
    assert (ended["offered_to"], ended["offered_user"]) == (bob.purchase.id, "bobby")
    assert ended["offered_also"] is None and ended["gate_done"]


async def test_an_ending_of_three_units_serves_places_first_fit_and_the_gate_follows(settings):
    """A 3-unit hold cancelled with places for 2, 2 and 1 in line: the first 2 and the 1 are
    offered at once, the second 2 waits; the ending records both offers; the backlog gives
    them back with their units, and telling the gate makes its holders the rows. Once 2 are
    paid, the place for 2 is closed while a place for 1 is open, and 2 asked is final."""
    sale = await make_sale(settings.database_url, stock=3, hold_seconds=600, per_user_limit=3)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            alice = await runtime.serializer.purchase_unchecked(sale, "alice", quantity=3)
            for user, quantity in (("bobby", 2), ("carol", 2), ("dave1", 1)):
                await wait_in_line(runtime, sale, user, quantity)
            # Ended in the ledger only: the gate is told by the backlog below.
            ending = await runtime.ledger.call(holds_sql.cancel, sale.id, alice.id, None)
            recorded = await endings_of(settings, sale)
            holders_before = await runtime.gate.store.holdings(sale.id)
            backlog = await runtime.ledger.call(holds_sql.gate_backlog, 0.0, 100, 120.0)
            runtime.holds._config = replace(runtime.holds._config, gate_retry_s=0.0)
            assert await runtime.holds.retry_gate() == 1
            assert await runtime.holds.retry_gate() == 0
            await assert_gate_holds_the_rows(runtime, settings, sale)
            statuses = await runtime.ledger.call(holds_sql.buyer_statuses, sale.id,
                                                 ["bobby", "carol", "dave1"])
            bob = ending.offers[0]
            await runtime.holds.confirm(sale.id, bob.id)
            await wait_in_line(runtime, sale, "erin1", 1)
            after = await runtime.ledger.call(holds_sql.buyer_statuses, sale.id,
                                              ["carol", "erin1"])
            with pytest.raises(InsufficientStock) as short:
                await runtime.serializer.purchase_unchecked(sale, "frank", quantity=2)
    assert ending.quantity == 3
    assert [(o.user_id, o.quantity) for o in ending.offers] == [("bobby", 2), ("dave1", 1)]
    [row] = recorded
    assert (row["offered_to"], row["offered_user"]) == (ending.offers[0].id, "bobby")
    assert (row["offered_also"], row["offered_also_users"]) == ([ending.offers[1].id], ["dave1"])
    assert row["quantity"] == 3 and not row["gate_done"]
    assert holders_before == {"alice": (str(alice.id), 3)}, "the gate waited for its telling"
    [told] = backlog
    assert (told.user_id, told.purchase_id, told.quantity) == ("alice", alice.id, 3)
    assert [(o.id, o.user_id, o.quantity) for o in told.offers] == [
        (o.id, o.user_id, o.quantity) for o in ending.offers]
    assert [r["gate_done"] for r in await endings_of(settings, sale)] == [True]
    assert statuses["bobby"].standing is Standing.HELD
    assert statuses["dave1"].standing is Standing.HELD
    assert statuses["carol"].standing is Standing.WAITLISTED
    assert (statuses["carol"].place.position, statuses["carol"].place.quantity) == (1, 2)
    assert after["carol"].standing is Standing.CLOSED and after["carol"].place.closed
    assert after["erin1"].standing is Standing.WAITLISTED
    assert (after["erin1"].place.quantity, after["erin1"].place.closed) == (1, False)
    assert short.value.remaining == 1


async def test_no_place_over_the_ledgers_limit_and_the_holds_still_end(settings):
    """A press from a copy of the sale allowing 5 where the ledger allows 2, finding too few
    units free: 3 asked is InvalidInput naming 2 and gets no place; so the holds' returns,
    which would offer it 3 units, still end and go back on sale."""
    sale = await make_sale(settings.database_url, stock=3, hold_seconds=600, per_user_limit=2)
    stale = replace(sale, per_user_limit=5)
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            alice = await runtime.serializer.purchase_unchecked(sale, "alice", quantity=2)
            bob = await runtime.serializer.purchase_unchecked(sale, "bobby")
            with pytest.raises(InvalidInput) as caught:
                await runtime.serializer.purchase_unchecked(stale, "greedy", quantity=3)
            line = await pg(settings.database_url, fetch,
                            "SELECT user_id FROM waitlist WHERE sale_id = $1", sale.id)
            await runtime.holds.cancel(sale.id, alice.id)
            await runtime.holds.cancel(sale.id, bob.id)
            await assert_gate_holds_the_rows(runtime, settings, sale)
    assert caught.value.field == "quantity" and "from 1 to 2" in str(caught.value)
    assert line == []
    assert await rows_of(settings, sale) == {}
