"""SOLD_OUT is final: the gate answers it only once the ledger holds every unit.

While the gate reads 0 with holders not yet committed, requests wait in arrival order; a
unit that comes back goes to the first of them, and a deadline that passes is Undecided.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import trio

from actors import AlreadyPurchased, SoldOut
from actors.errors import InsufficientStock, Undecided
from actors.gate_messages import GateAnswer, Seat

from ..helpers import redis_client
from .test_stock_gate import Loader, a_sale, gate_for, keys_of, reserved, until


async def test_zero_stock_with_uncommitted_holders_is_undecided_not_sold_out(settings):
    """The gate at 0 while the ledger counts fewer sold than the stock: a wait, then Undecided."""
    sale = a_sale(stock=1)
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0)) as gate:
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == reserved(0)
            started = trio.current_time()
            with pytest.raises(Undecided):
                await gate.reserve(sale, "bob", uuid.uuid4(),
                                   deadline=trio.current_time() + 0.3)
            assert trio.current_time() - started >= 0.29
            assert gate.statistics().sold_out_sales == 0


async def test_sold_out_once_the_ledger_holds_every_unit_then_from_memory(settings):
    """Once the ledger counts every unit sold, waiters are told SOLD_OUT, then from memory."""
    sale, pid = a_sale(stock=1), uuid.uuid4()
    loader = Loader(sold=0)
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.reserve(sale, "alice", pid) == reserved(0)

            async def commit_later() -> None:
                await trio.sleep(0.2)
                loader.sold, loader.buyers = 1, {"alice": str(pid)}
                gate.queues.poke(sale.id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit_later)
                with pytest.raises(SoldOut):
                    await gate.reserve(sale, "bob", uuid.uuid4(),
                                       deadline=trio.current_time() + 5)
            batches = gate.statistics().batches
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "carol", uuid.uuid4())
            with pytest.raises(AlreadyPurchased):
                await gate.reserve(sale, "alice", uuid.uuid4())
            stats = gate.statistics()
    assert stats.batches == batches, "final answers never reach Redis"
    assert stats.local_sold_out_answers == 2
    assert stats.sold_out_sales == 1


async def test_a_returned_unit_goes_to_the_first_waiter(settings):
    """A unit released while three buyers wait goes to the one that asked first."""
    sale, pid = a_sale(stock=1), uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0)) as gate:
            await gate.reserve(sale, "holder", pid)
            answers: dict[str, object] = {}

            async def wait_for_unit(user: str) -> None:
                try:
                    answers[user] = await gate.reserve(sale, user, uuid.uuid4(),
                                                       deadline=trio.current_time() + 1.5)
                except Undecided as exc:
                    answers[user] = exc

            async with trio.open_nursery() as nursery:
                for user in ("first", "second", "third"):
                    nursery.start_soon(wait_for_unit, user)
                    await trio.sleep(0.1)  # each arrives after the one before is waiting
                assert gate.statistics().waiting == 3
                assert await gate.release(sale.id, "holder", pid, restock=True) is True
    assert answers["first"] == reserved(0)
    assert isinstance(answers["second"], Undecided)
    assert isinstance(answers["third"], Undecided)
    assert redis_client(settings).hkeys(keys_of(settings, sale).buyers) == ["first"]


async def test_a_unit_that_comes_back_from_another_process_reaches_a_waiter(settings):
    """Stock put back in Redis by someone else (a reconciler) is found by the waiting queue."""
    sale = a_sale(stock=1)
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=0), doubt_poll_s=0.05) as gate:
            await gate.reserve(sale, "holder", uuid.uuid4())
            keys, r = keys_of(settings, sale), redis_client(settings)

            async def restock_behind_the_gates_back() -> None:
                await trio.sleep(0.2)
                r.hdel(keys.buyers, "holder")
                r.set(keys.stock, 1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(restock_behind_the_gates_back)
                answer = await gate.reserve(sale, "waiter", uuid.uuid4(),
                                            deadline=trio.current_time() + 5)
    assert answer.seat is Seat.RESERVED


async def test_release_without_restock_keeps_the_stock_and_drops_the_holder(settings):
    """A release without restock (the ledger refused it for stock) takes the holder only."""
    sale, pid = a_sale(stock=1), uuid.uuid4()
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", pid)
            assert await gate.release(sale.id, "alice", pid, restock=False) is True
    assert r.get(keys.stock) == "0"
    assert r.hlen(keys.buyers) == 0
    assert r.zcard(keys.pending) == 0


async def test_learn_sold_out_believes_only_the_ledger(settings):
    """learn_sold_out() marks the sale final only when the ledger holds every unit."""
    sale = a_sale(stock=2)
    loader = Loader(sold=1, buyers={"a": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.queues.learn_sold_out(sale) is False
            loader.sold, loader.buyers["b"] = 2, str(uuid.uuid4())
            assert await gate.queues.learn_sold_out(sale) is True
            with pytest.raises(AlreadyPurchased):
                gate.queues.answer_from_memory(sale, "b")
            gate.queues.forget([sale.id])
            gate.queues.answer_from_memory(sale, "b")  # forgotten: nothing known any more
            assert gate.statistics().sold_out_sales == 0


async def test_a_holder_pressing_again_behind_a_line_hears_of_their_units(settings):
    """A buyer who holds units and presses again while others wait in line is told of their
    own units (HELD), not that too few are left, even past the first batch of the line;
    the waiter before them hears INSUFFICIENT_STOCK with the units left."""
    sale, alice = replace(a_sale(stock=7), per_user_limit=4), uuid.uuid4()
    loader = Loader(sold=0)
    answers: dict[str, object] = {}
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader, batch_max=1) as gate:
            assert await gate.reserve(sale, "alice", alice, quantity=4) == reserved(3)
            bob = uuid.uuid4()
            assert await gate.reserve(sale, "bob", bob, quantity=2) == reserved(1)

            async def ask(user: str, quantity: int) -> None:
                try:
                    answers[user] = await gate.reserve(sale, user, uuid.uuid4(),
                                                       quantity=quantity,
                                                       deadline=trio.current_time() + 5)
                except InsufficientStock as exc:
                    answers[user] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "carol", 3)  # 7 units not yet sold: she waits
                await until(lambda: gate.queues.statistics().waiting == 1)
                nursery.start_soon(ask, "alice", 4)  # behind carol, never asking Redis
                await until(lambda: gate.queues.statistics().waiting == 2)
                loader.sold, loader.buyers = 6, {"alice": str(alice), "bob": str(bob)}
                gate.queues.poke(sale.id)
    assert answers["alice"] == GateAnswer(Seat.HELD, holder=str(alice))
    carol = answers["carol"]
    assert isinstance(carol, InsufficientStock) and carol.remaining == 1
