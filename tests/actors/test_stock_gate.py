"""The stock-gate actor against real Redis: batching, answers, loading on demand, limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

from actors import (
    AlreadyPurchased,
    BackendUnavailable,
    LedgerState,
    Overloaded,
    Sale,
    SoldOut,
    Tally,
)
from actors.errors import Undecided
from actors.keys import parse_holder, sale_keys
from actors.stock_gate import GateAnswer, Seat, StockGate, open_stock_gate

from ..helpers import on_defaults, redis_client


def a_sale(stock: int = 10, per_user_limit: int = 1) -> Sale:
    """An in-memory sale running now; the gate never reads PostgreSQL itself."""
    now = datetime.now(UTC)
    return Sale(uuid.uuid4(), "Widget", stock, now - timedelta(minutes=1), now + timedelta(hours=1),
                per_user_limit=per_user_limit)


@dataclass
class Loader:
    """A ledger stand-in that reports a fixed committed state and counts its calls.

    Called with a sale it is the gate's loader; its ``count`` is the gate's counter. The
    stock it reports is the one of the sale it last loaded, unless ``totals`` says otherwise
    (an operator's change the gate's copy of the sale does not know of).
    """

    sold: int = 0
    buyers: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    totals: dict[uuid.UUID, int] = field(default_factory=dict)
    #: The buyers whose purchase takes more than one unit, and how many.
    quantities: dict[str, int] = field(default_factory=dict)

    async def __call__(self, sale: Sale) -> LedgerState:
        self.calls += 1
        total = self.totals.setdefault(sale.id, sale.total_stock)
        return LedgerState(total, self.sold, dict(self.buyers), dict(self.quantities))

    async def count(self, sale_id: uuid.UUID) -> Tally:
        return Tally(self.totals.get(sale_id, 0), self.sold)


@asynccontextmanager
async def gate_for(settings, loader=None, **knobs) -> AsyncIterator[StockGate]:
    """A stock gate on the test's Redis prefix, inside an asyncio bridge."""
    loader = loader or Loader()
    counter = getattr(loader, "count", None) or Loader().count
    config = replace(on_defaults(settings).gate_config(), **knobs)
    async with (
        trio_asyncio.open_loop(),
        open_stock_gate(config, loader=loader, counter=counter) as gate,
    ):
        yield gate


def reserved(stock: int) -> GateAnswer:
    """The gate's answer for a unit reserved with ``stock`` left."""
    return GateAnswer(Seat.RESERVED, stock=stock)


def keys_of(settings, sale: Sale):
    """The gate's Redis keys for ``sale``."""
    return sale_keys(settings.key_prefix, sale.id)


async def until(predicate, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` holds; the caller's ``fail_after`` bounds the wait."""
    while not predicate():
        await trio.sleep(interval)


async def reserve_all(gate: StockGate, sale: Sale, users: list[str],
                      wait_s: float = 0.3) -> dict[str, object]:
    """Reserve for every user concurrently; map each user to its stock left or its error."""
    answers: dict[str, object] = {}
    deadline = trio.current_time() + wait_s

    async def one(user: str) -> None:
        try:
            answers[user] = (await gate.reserve(sale, user, uuid.uuid4(), deadline=deadline)).stock
        except (SoldOut, AlreadyPurchased, Overloaded, BackendUnavailable, Undecided) as exc:
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
    keys, r = keys_of(settings, sale), redis_client(settings)
    assert r.get(keys.stock) == "50"
    assert sorted(r.hgetall(keys.buyers)) == sorted(users)
    assert sorted(r.zrange(keys.pending, 0, -1)) == sorted(users), "new holders are in doubt"


async def test_second_reserve_of_a_user_reports_the_hold(settings):
    """A user who holds a reservation is told which one, and no second unit is taken."""
    sale, pid = a_sale(stock=5), uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            assert await gate.reserve(sale, "alice", pid) == reserved(4)
            again = await gate.reserve(sale, "alice", uuid.uuid4())
            assert again == GateAnswer(Seat.HELD, holder=str(pid))
            assert await gate.reserve(sale, "alice", pid) == reserved(4), "a resend is the same"
            assert await gate.store.remaining(sale) == 4


async def test_one_batch_never_reserves_more_than_the_stock(settings):
    """Within a single batch only the stock is reserved; the rest wait, never told SOLD_OUT.

    The holders have not committed (the ledger counts 0 sold), so the others' answer is in
    doubt: they wait for their deadline and are told Undecided.
    """
    sale = a_sale(stock=2)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await reserve_all(gate, sale, [f"user-{i}" for i in range(6)])
            stats = gate.statistics()
    assert stats.batches == 1
    assert sorted(v for v in answers.values() if isinstance(v, int)) == [0, 1]
    assert sum(isinstance(v, Undecided) for v in answers.values()) == 4, answers
    keys, r = keys_of(settings, sale), redis_client(settings)
    assert r.get(keys.stock) == "0"
    assert r.hlen(keys.buyers) == 2


async def test_missing_gate_is_loaded_from_the_ledger(settings):
    """A reserve on a sale Redis does not hold loads stock and buyers from the ledger first."""
    sale = a_sale(stock=10)
    loader = Loader(sold=3, buyers={"u-1": str(uuid.uuid4()), "u-2": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.store.is_loaded(sale) is False
            held = await gate.reserve(sale, "u-1", uuid.uuid4())
            assert held == GateAnswer(Seat.HELD, holder=loader.buyers["u-1"])
            assert await gate.store.is_loaded(sale) is True
            assert await gate.reserve(sale, "newcomer", uuid.uuid4()) == reserved(6)
            assert loader.calls == 1
    keys, r = keys_of(settings, sale), redis_client(settings)
    assert parse_holder(r.hget(keys.buyers, "u-2")) == (loader.buyers["u-2"], 0)
    assert r.zrange(keys.pending, 0, -1) == ["newcomer"], "loaded holders are settled"


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
    assert sorted(redis_client(settings).hkeys(keys_of(settings, sale).buyers)) == sorted(served)


async def test_redis_error_during_a_batch_fails_its_requests(settings):
    """A Redis error while serving a batch answers each request BackendUnavailable."""
    sale = a_sale(stock=5)
    redis_client(settings).set(keys_of(settings, sale).stock, "garbage")  # the script fails
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
            assert await gate.store.is_loaded(sale) is False
    assert all(isinstance(v, BackendUnavailable) for v in answers.values()), answers


async def test_unreachable_redis_fails_at_open(settings):
    """Opening a gate on a closed port raises BackendUnavailable, not an ExceptionGroup."""
    config = replace(on_defaults(settings).gate_config(), redis_url="redis://127.0.0.1:1/0",
                     timeout_s=1.0)
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                async with open_stock_gate(config, loader=Loader(), counter=Loader().count):
                    pytest.fail("the gate opened without Redis")  # pragma: no cover
    assert caught.value.backend == "redis"
