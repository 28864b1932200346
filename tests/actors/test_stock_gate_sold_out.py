"""The stock gate's sold-out memory against real Redis: local answers and the re-check loop."""

from __future__ import annotations

import uuid

import pytest
import trio

from actors import AlreadyPurchased, SoldOut

from ..helpers import gate_keys, redis_client
from .test_stock_gate import Loader, a_sale, gate_for, reserve_all, until


async def test_sold_out_is_answered_locally_without_redis(settings):
    """Once the gate has seen stock 0 it answers SoldOut from memory, whatever Redis holds."""
    sale = a_sale(stock=2)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == 1
            assert await gate.reserve(sale, "bob", uuid.uuid4()) == 0
            await until(lambda: gate.statistics().sold_out_sales == 1)
            r.set(stock_key, 5)  # Redis now says 5, but the gate must not ask it
            for user in ("carol", "dave"):
                with pytest.raises(SoldOut):
                    await gate.reserve(sale, user, uuid.uuid4())
            stats = gate.statistics()
    assert stats.local_sold_out_answers == 2
    assert stats.reserved_requests == 2
    assert r.get(stock_key) == "5"
    assert sorted(r.hkeys(buyers_key)) == ["alice", "bob"]


async def test_buyer_of_a_sold_out_sale_is_told_already_purchased_locally(settings):
    """After sold out, a buyer is answered AlreadyPurchased and a non-buyer SoldOut, from memory."""
    sale = a_sale(stock=2)
    loader = Loader(sold=1, buyers={"earlier": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == 0
            await until(lambda: gate.statistics().sold_out_sales == 1)
            for user in ("alice", "earlier"):
                with pytest.raises(AlreadyPurchased):
                    await gate.reserve(sale, user, uuid.uuid4())
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "bob", uuid.uuid4())
            stats = gate.statistics()
    assert stats.local_sold_out_answers == 3
    assert stats.reserved_requests == 1


async def test_requests_queued_behind_the_last_unit_are_sold_out(settings):
    """Requests already queued when the last unit goes are refused SoldOut; one unit is sold."""
    sale = a_sale(stock=1)
    with trio.fail_after(10):
        async with gate_for(settings, batch_max=1) as gate:
            answers = await reserve_all(gate, sale, ["a-1", "b-2", "c-3"])
            stats = gate.statistics()
    assert sorted(v for v in answers.values() if isinstance(v, int)) == [0]
    assert sum(isinstance(v, SoldOut) for v in answers.values()) == 2
    assert stats.batches == 3
    assert stats.local_sold_out_answers == 0


async def test_release_without_restock_drops_the_buyer_but_keeps_stock(settings):
    """Releasing without restock removes the reservation and leaves the sale sold out."""
    sale = a_sale(stock=1)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", pid)
            await until(lambda: gate.statistics().sold_out_sales == 1)
            assert await gate.release(sale.id, "alice", pid, restock=False) is True
            assert gate.statistics().sold_out_sales == 1
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "bob", uuid.uuid4())
    r = redis_client(settings)
    assert r.get(stock_key) == "0"
    assert r.exists(buyers_key) == 0


async def test_user_released_without_restock_is_not_told_already_purchased(settings):
    """A user whose reservation was released holds nothing, so a sold-out gate says SoldOut."""
    sale = a_sale(stock=1)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", pid)
            await until(lambda: gate.statistics().sold_out_sales == 1)
            await gate.release(sale.id, "alice", pid, restock=False)
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "alice", uuid.uuid4())


async def test_recheck_notices_stock_returned_by_another_process(settings):
    """Stock added to Redis behind the gate's back reopens the gate within recheck_s."""
    sale = a_sale(stock=1)
    stock_key, _ = gate_keys(settings, sale.id)
    with trio.fail_after(10):
        async with gate_for(settings, recheck_s=0.1) as gate:
            await gate.reserve(sale, "alice", uuid.uuid4())
            await until(lambda: gate.statistics().sold_out_sales == 1)
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "bob", uuid.uuid4())
            redis_client(settings).incr(stock_key)
            await trio.sleep(0.35)
            assert gate.statistics().sold_out_sales == 0
            assert await gate.reserve(sale, "bob", uuid.uuid4()) == 0


async def test_recheck_rereads_buyers_released_by_another_process(settings):
    """A buyer removed from Redis by another process is forgotten by the gate within recheck_s."""
    sale = a_sale(stock=1)
    _, buyers_key = gate_keys(settings, sale.id)
    with trio.fail_after(10):
        async with gate_for(settings, recheck_s=0.1) as gate:
            await gate.reserve(sale, "alice", uuid.uuid4())
            await until(lambda: gate.statistics().sold_out_sales == 1)
            with pytest.raises(AlreadyPurchased):
                await gate.reserve(sale, "alice", uuid.uuid4())
            redis_client(settings).hdel(buyers_key, "alice")
            await trio.sleep(0.35)
            assert gate.statistics().sold_out_sales == 1
            with pytest.raises(SoldOut):
                await gate.reserve(sale, "alice", uuid.uuid4())


async def test_recheck_keeps_the_flag_when_redis_errors_or_stock_is_zero(settings):
    """A recheck that fails or still reads 0 leaves the sale sold out."""
    sale, other = a_sale(stock=1), a_sale(stock=1)
    stock_key, _ = gate_keys(settings, sale.id)
    r = redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings, recheck_s=0.1) as gate:
            await gate.reserve(sale, "alice", uuid.uuid4())
            await gate.reserve(other, "alice", uuid.uuid4())
            await until(lambda: gate.statistics().sold_out_sales == 2)
            r.delete(stock_key)
            r.hset(stock_key, "not", "a string")  # GET now fails with WRONGTYPE
            await trio.sleep(0.35)
            assert gate.statistics().sold_out_sales == 2
            with pytest.raises(SoldOut):
                await gate.reserve(other, "bob", uuid.uuid4())
