"""The stock-gate actor against real Redis: batching, answers, release, loading, limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

from actors import AlreadyPurchased, BackendUnavailable, LedgerState, Overloaded, Sale, SoldOut
from actors.stock_gate import GateConfig, StockGate, open_stock_gate

from ..helpers import gate_keys, redis_client


def a_sale(stock: int = 10) -> Sale:
    """An in-memory sale running now; the gate never reads PostgreSQL itself."""
    now = datetime.now(UTC)
    return Sale(uuid.uuid4(), "Widget", stock, now - timedelta(minutes=1), now + timedelta(hours=1))


@dataclass
class Loader:
    """A ledger stand-in that reports a fixed committed state and counts its calls."""

    sold: int = 0
    buyers: dict[str, str] = field(default_factory=dict)
    calls: int = 0

    async def __call__(self, sale: Sale) -> LedgerState:
        self.calls += 1
        return LedgerState(sale.total_stock, self.sold, dict(self.buyers))


@asynccontextmanager
async def gate_for(settings, loader=None, **knobs) -> AsyncIterator[StockGate]:
    """A stock gate on the test's Redis prefix, inside an asyncio bridge."""
    knobs.setdefault("recheck_s", 60.0)
    config = GateConfig(redis_url=settings.redis_url, key_prefix=settings.key_prefix, **knobs)
    async with trio_asyncio.open_loop():
        async with open_stock_gate(config, loader=loader or Loader()) as gate:
            yield gate


async def until(predicate, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` holds; the caller's ``fail_after`` bounds the wait."""
    while not predicate():
        await trio.sleep(interval)


async def reserve_all(gate: StockGate, sale: Sale, users: list[str]) -> dict[str, object]:
    """Reserve for every user concurrently; map each user to its stock left or its error."""
    answers: dict[str, object] = {}

    async def one(user: str) -> None:
        try:
            answers[user] = await gate.reserve(sale, user, uuid.uuid4())
        except (SoldOut, AlreadyPurchased, Overloaded, BackendUnavailable) as exc:
            answers[user] = exc

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(one, user)
    return answers


async def test_concurrent_reserves_are_batched_and_each_user_reserved_once(settings):
    """N concurrent reserves take fewer than N Redis round trips and reserve each user once."""
    sale, users = a_sale(stock=100), [f"user-{i}" for i in range(50)]
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await reserve_all(gate, sale, users)
            stats = gate.statistics()
    assert sorted(answers.values()) == list(range(50, 100))
    assert stats.batches < len(users)
    assert stats.largest_batch > 1
    assert stats.reserved_requests == len(users)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    assert r.get(stock_key) == "50"
    assert sorted(r.hgetall(buyers_key)) == sorted(users)


async def test_second_reserve_of_a_user_is_already_purchased(settings):
    """A user who holds a reservation is told AlreadyPurchased and no second unit is taken."""
    sale = a_sale(stock=5)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == 4
            with pytest.raises(AlreadyPurchased):
                await gate.reserve(sale, "alice", uuid.uuid4())
            assert await gate.remaining(sale) == 4


async def test_one_batch_never_reserves_more_than_the_stock(settings):
    """Within a single batch, only as many users as there is stock are reserved."""
    sale = a_sale(stock=2)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await reserve_all(gate, sale, [f"user-{i}" for i in range(6)])
            stats = gate.statistics()
    assert stats.batches == 1
    assert sorted(v for v in answers.values() if isinstance(v, int)) == [0, 1]
    assert sum(isinstance(v, SoldOut) for v in answers.values()) == 4
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    assert r.get(stock_key) == "0"
    assert r.hlen(buyers_key) == 2


async def test_release_with_restock_returns_the_unit_and_reopens_the_gate(settings):
    """Releasing with restock puts the unit back, drops the buyer and clears the sold-out flag."""
    sale = a_sale(stock=1)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            assert await gate.reserve(sale, "alice", pid) == 0
            await until(lambda: gate.statistics().sold_out_sales == 1)
            assert await gate.release(sale.id, "alice", pid, restock=True) is True
            assert gate.statistics().sold_out_sales == 0
            assert r.get(stock_key) == "1"
            assert r.hexists(buyers_key, "alice") is False
            assert await gate.reserve(sale, "bob", uuid.uuid4()) == 0


async def test_release_is_idempotent_and_only_undoes_the_named_reservation(settings):
    """A second release, or one naming another purchase id, returns False and changes nothing."""
    sale = a_sale(stock=3)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", pid)
            await gate.reserve(sale, "bob", uuid.uuid4())
            assert await gate.release(sale.id, "bob", uuid.uuid4(), restock=True) is False
            assert await gate.release(sale.id, "alice", pid, restock=True) is True
            assert await gate.release(sale.id, "alice", pid, restock=True) is False
    assert r.get(stock_key) == "2"
    assert r.hkeys(buyers_key) == ["bob"]


async def test_missing_gate_is_loaded_from_the_ledger(settings):
    """A reserve on a sale Redis does not hold loads stock and buyers from the ledger first."""
    sale = a_sale(stock=10)
    loader = Loader(sold=3, buyers={"u-1": str(uuid.uuid4()), "u-2": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.is_loaded(sale) is False
            with pytest.raises(AlreadyPurchased):
                await gate.reserve(sale, "u-1", uuid.uuid4())
            assert await gate.is_loaded(sale) is True
            assert await gate.reserve(sale, "newcomer", uuid.uuid4()) == 6
            assert loader.calls == 1
    _, buyers_key = gate_keys(settings, sale.id)
    held = redis_client(settings).hget(buyers_key, "u-2")
    assert held.partition(":")[0] == loader.buyers["u-2"]


async def test_reservations_report_holders_and_when_they_reserved(settings):
    """reservations() lists each holder's purchase id and Redis reservation time (0 if loaded)."""
    sale, pid = a_sale(stock=5), uuid.uuid4()
    loaded = str(uuid.uuid4())
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=1, buyers={"old": loaded})) as gate:
            await gate.reserve(sale, "alice", pid)
            now_ms, held = await gate.reservations(sale.id)
            empty = await gate.reservations(uuid.uuid4())
    assert set(held) == {"old", "alice"}
    assert held["old"] == (loaded, 0)
    assert held["alice"][0] == str(pid)
    assert now_ms - 10_000 < held["alice"][1] <= now_ms
    assert empty[1] == {}


async def test_remaining_loads_the_gate_and_never_goes_below_zero(settings):
    """remaining() builds a missing gate, and an oversold ledger reads as 0 left."""
    sale, oversold = a_sale(stock=10), a_sale(stock=2)
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=4)) as gate:
            assert await gate.remaining(sale) == 6
            assert await gate.remaining(oversold) == 0
            assert await gate.ping() is True


async def test_ensure_loaded_does_not_clobber_a_loaded_gate(settings):
    """A gate already in Redis is left untouched by a later load."""
    sale = a_sale(stock=10)
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    r.set(stock_key, 2)
    r.hset(buyers_key, "other-process-user", "pid")
    loader = Loader(sold=0, buyers={"ledger-user": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.ensure_loaded(sale) is False
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == 1
    assert r.get(stock_key) == "1"
    assert sorted(r.hkeys(buyers_key)) == ["alice", "other-process-user"]


async def test_full_inbox_answers_overloaded(settings):
    """With a one-slot inbox, a burst is partly refused Overloaded; the rest are served."""
    sale, users = a_sale(stock=100), [f"user-{i}" for i in range(20)]
    with trio.fail_after(10):
        async with gate_for(settings, inbox_size=1) as gate:
            answers = await reserve_all(gate, sale, users)
    served = [u for u, v in answers.items() if isinstance(v, int)]
    refused = [u for u, v in answers.items() if isinstance(v, Overloaded)]
    assert refused and served
    assert len(served) + len(refused) == len(users)
    assert all(answers[u].actor == "stock_gate" for u in refused)
    _, buyers_key = gate_keys(settings, sale.id)
    assert sorted(redis_client(settings).hkeys(buyers_key)) == sorted(served)


async def test_redis_error_during_a_batch_fails_its_requests(settings):
    """A Redis error while serving a batch answers each request BackendUnavailable."""
    sale = a_sale(stock=5)
    stock_key, _ = gate_keys(settings, sale.id)
    redis_client(settings).set(stock_key, "garbage")  # the Lua script fails on it
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await reserve_all(gate, sale, ["alice", "bob"])
            assert gate.statistics().sold_out_sales == 0
    assert all(isinstance(v, BackendUnavailable) for v in answers.values()), answers


async def test_unreadable_ledger_fails_reserves_on_a_missing_gate(settings):
    """If the gate is missing and the ledger cannot be read, reserves fail BackendUnavailable."""
    async def broken(sale: Sale) -> LedgerState:
        raise BackendUnavailable("postgres")

    sale = a_sale(stock=5)
    with trio.fail_after(10):
        async with gate_for(settings, loader=broken) as gate:
            answers = await reserve_all(gate, sale, ["alice", "bob"])
            assert await gate.is_loaded(sale) is False
    assert all(isinstance(v, BackendUnavailable) for v in answers.values()), answers


async def test_unreachable_redis_fails_at_open(settings):
    """Opening a gate on a closed port raises BackendUnavailable, not an ExceptionGroup."""
    config = GateConfig(redis_url="redis://127.0.0.1:1/0", timeout_s=1.0)
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                async with open_stock_gate(config, loader=Loader()):
                    pytest.fail("the gate opened without Redis")  # pragma: no cover
    assert caught.value.backend == "redis"
