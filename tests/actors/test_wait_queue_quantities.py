"""INSUFFICIENT_STOCK is final, like SOLD_OUT: a request for more units than the gate has
waits while the units in doubt could still serve it, and is refused only once fewer units
than it asks are left unsold for good."""

from __future__ import annotations

import uuid

import pytest
import trio

from actors import SoldOut
from actors.errors import InsufficientStock, Undecided

from ..helpers import redis_client
from .test_stock_gate import Loader, a_sale, gate_for, keys_of, reserved


async def test_more_than_is_left_with_nothing_in_doubt_is_final(settings):
    """Three units left, all of them free in the ledger too: four asked is refused at once
    with the three named, and the stock is untouched."""
    sale = a_sale(stock=5, per_user_limit=4)
    loader = Loader(sold=2, buyers={"early": str(uuid.uuid4())}, quantities={"early": 2})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            started = trio.current_time()
            with pytest.raises(InsufficientStock) as caught:
                await gate.reserve(sale, "bob", uuid.uuid4(), quantity=4,
                                   deadline=trio.current_time() + 5)
            waited = trio.current_time() - started
            assert await gate.reserve(sale, "carol", uuid.uuid4(), quantity=3) == reserved(0)
    assert caught.value.remaining == 3
    assert "3 units" in str(caught.value)
    assert waited < 2, "a final answer does not wait for the deadline"
    assert redis_client(settings).hkeys(keys_of(settings, sale).buyers) == ["early", "carol"]


async def test_a_request_units_in_doubt_could_serve_waits_and_is_never_refused(settings):
    """Alice's three units reserved, not committed (the ledger counts none sold): two asked
    with one left in the gate waits to its deadline (Undecided), never INSUFFICIENT_STOCK;
    five asked is more than could ever be sold, and is refused at once."""
    sale = a_sale(stock=4, per_user_limit=5)
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0)) as gate:
            assert await gate.reserve(sale, "alice", uuid.uuid4(), quantity=3) == reserved(1)
            started = trio.current_time()
            with pytest.raises(Undecided):
                await gate.reserve(sale, "bob", uuid.uuid4(), quantity=2,
                                   deadline=trio.current_time() + 0.3)
            assert trio.current_time() - started >= 0.29
            with pytest.raises(InsufficientStock) as caught:
                await gate.reserve(sale, "carol", uuid.uuid4(), quantity=5,
                                   deadline=trio.current_time() + 5)
            assert gate.statistics().sold_out_sales == 0
    assert caught.value.remaining == 4


async def test_a_waiter_is_answered_by_what_becomes_of_the_units_in_doubt(settings):
    """Bob waits for two units while alice's three are in doubt: her commit makes his answer
    final (one unit left); had she rolled back, carol's wait for two ends with them."""
    sale, alice = a_sale(stock=4, per_user_limit=4), uuid.uuid4()
    loader = Loader(sold=0)
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader, doubt_poll_s=0.05) as gate:
            await gate.reserve(sale, "alice", alice, quantity=3)

            async def commit_later() -> None:
                await trio.sleep(0.2)
                loader.sold, loader.buyers, loader.quantities = (
                    3, {"alice": str(alice)}, {"alice": 3})
                gate.queues.poke(sale.id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit_later)
                with pytest.raises(InsufficientStock) as caught:
                    await gate.reserve(sale, "bob", uuid.uuid4(), quantity=2,
                                       deadline=trio.current_time() + 5)
            # One unit still sells to whoever asks for one.
            assert await gate.reserve(sale, "dave", uuid.uuid4()) == reserved(0)
    assert caught.value.remaining == 1

    other, carol_pid = a_sale(stock=4, per_user_limit=4), uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0)) as gate:
            await gate.reserve(other, "alice", alice, quantity=3)

            async def roll_back_later() -> None:
                await trio.sleep(0.2)
                await gate.release(other.id, "alice", alice, restock=True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(roll_back_later)
                answer = await gate.reserve(other, "carol", carol_pid, quantity=2,
                                            deadline=trio.current_time() + 5)
    assert answer == reserved(2)


async def test_a_waiter_that_fits_is_served_past_one_that_does_not(settings):
    """Two units come back (two more still in doubt) while a request for three waits ahead
    of one for two: the two are served (first fit), and the three waits on, in doubt."""
    sale, returned = a_sale(stock=4, per_user_limit=3), uuid.uuid4()
    answers: dict[str, object] = {}
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0)) as gate:
            await gate.reserve(sale, "returned", returned, quantity=2)
            await gate.reserve(sale, "in-doubt", uuid.uuid4(), quantity=2)

            async def wait_for(user: str, quantity: int) -> None:
                try:
                    answers[user] = await gate.reserve(sale, user, uuid.uuid4(),
                                                       quantity=quantity,
                                                       deadline=trio.current_time() + 1.0)
                except Undecided as exc:
                    answers[user] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for, "three", 3)
                await trio.sleep(0.1)
                nursery.start_soon(wait_for, "two", 2)
                await trio.sleep(0.1)
                assert gate.statistics().waiting == 2
                await gate.release(sale.id, "returned", returned, restock=True)
    assert answers["two"] == reserved(0)
    assert isinstance(answers["three"], Undecided), answers
    assert sorted(redis_client(settings).hkeys(keys_of(settings, sale).buyers)) == [
        "in-doubt", "two"]


async def test_sold_out_not_insufficient_once_nothing_is_left(settings):
    """Every unit committed: any quantity is told SOLD_OUT, never INSUFFICIENT_STOCK of 0."""
    sale = a_sale(stock=3, per_user_limit=3)
    loader = Loader(sold=3, buyers={"alice": str(uuid.uuid4())}, quantities={"alice": 3})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            for quantity in (2, 1):
                with pytest.raises(SoldOut):
                    await gate.reserve(sale, f"buyer-{quantity}", uuid.uuid4(),
                                       quantity=quantity, deadline=trio.current_time() + 5)
