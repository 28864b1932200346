"""The per-user serializer on a real gate: coalescing, memory, rollback, limits, draining."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

from actors import (
    AlreadyPurchased,
    BackendUnavailable,
    CommitResult,
    LedgerState,
    Overloaded,
    Purchase,
    Sale,
    SoldOut,
)
from actors.ledger import CommitOutcome, LedgerConfig, open_ledger
from actors.stock_gate import GateConfig, StockGate, open_stock_gate
from actors.user_serializer import open_user_serializer, utc_now

from ..helpers import fetch, gate_keys, make_sale, pg, redis_client


def a_sale(stock: int = 5) -> Sale:
    """An in-memory sale running now, for tests whose ledger is a fake."""
    now = datetime.now(UTC)
    return Sale(uuid.uuid4(), "Widget", stock, now - timedelta(minutes=1), now + timedelta(hours=1))


@dataclass
class FakeLedger:
    """A ledger stand-in: answers every commit with ``outcome`` or raises ``error``.

    When ``hold`` is set, each commit waits for it first.
    """

    outcome: CommitResult = CommitResult.COMMITTED
    error: BaseException | None = None
    hold: trio.Event | None = None
    commits: list[Purchase] = field(default_factory=list)

    async def commit(self, purchase: Purchase) -> CommitOutcome:
        self.commits.append(purchase)
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        return CommitOutcome(self.outcome, purchase if self.outcome is CommitResult.COMMITTED
                             else None)


def fixed_loader(buyers: dict[str, str] | None = None):
    """A gate loader reporting nothing sold and the given buyers."""
    async def load(sale: Sale) -> LedgerState:
        return LedgerState(sale.total_stock, 0, dict(buyers or {}))
    return load


@asynccontextmanager
async def gate_for(settings, loader) -> AsyncIterator[StockGate]:
    """A real stock gate on the test's Redis prefix, inside an asyncio bridge."""
    config = GateConfig(redis_url=settings.redis_url, key_prefix=settings.key_prefix,
                        recheck_s=60.0)
    async with trio_asyncio.open_loop():
        async with open_stock_gate(config, loader=loader) as gate:
            yield gate


def gate_state(settings, sale: Sale) -> tuple[str | None, dict[str, str]]:
    """What Redis holds for a sale's gate: (stock, buyer -> purchase id)."""
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    # a buyer's value may carry a ":<reservation time>" suffix after the purchase id
    held = {user: value.partition(":")[0] for user, value in r.hgetall(buyers_key).items()}
    return r.get(stock_key), held


async def test_concurrent_purchases_of_one_user_are_coalesced(settings):
    """20 concurrent purchases by one user share one outcome, one reservation and one row."""
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    bought: list[Purchase] = []

    async def buy() -> None:
        bought.append(await serializer.purchase(sale, "alice"))

    with trio.fail_after(20):
        async with trio_asyncio.open_loop():
            async with (
                open_ledger(LedgerConfig(database_url=url)) as ledger,
                open_stock_gate(GateConfig(redis_url=settings.redis_url,
                                           key_prefix=settings.key_prefix),
                                loader=ledger.state) as gate,
                open_user_serializer(gate, ledger) as serializer,
            ):
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(buy)
                stats = serializer.statistics()
    assert len(bought) == 20 and len({p.id for p in bought}) == 1
    assert stats.coalesced == 19
    assert stats.in_flight == 0 and stats.known_buyers == 1
    rows = await pg(url, fetch, "SELECT id FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["id"] for r in rows] == [bought[0].id]
    assert gate_state(settings, sale) == ("4", {"alice": str(bought[0].id)})


async def test_a_buyer_is_answered_from_memory(settings):
    """After a purchase, the same user is refused AlreadyPurchased without a second reservation."""
    sale, ledger = a_sale(stock=5), FakeLedger()
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                first = await serializer.purchase(sale, "alice")
                for _ in range(2):
                    with pytest.raises(AlreadyPurchased):
                        await serializer.purchase(sale, "alice")
                stats = serializer.statistics()
    assert stats.answered_from_memory == 2
    assert ledger.commits == [first]
    assert gate_state(settings, sale) == ("4", {"alice": str(first.id)})


async def test_a_holder_seen_only_by_the_gate_is_not_remembered(settings):
    """A user the gate already holds is refused, but each retry asks the gate again.

    The gate knows a reservation is held, not that it committed: it may still be rolled
    back or returned by the reconciler, and then the user must be able to buy.
    """
    sale, ledger = a_sale(stock=5), FakeLedger()
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader({"alice": str(uuid.uuid4())})) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase(sale, "alice")
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase(sale, "alice")
                stats = serializer.statistics()
    assert (stats.known_buyers, stats.answered_from_memory) == (0, 0)
    assert gate.statistics().reserved_requests == 2
    assert ledger.commits == []


async def test_ledger_failure_rolls_back_the_reservation(settings):
    """When the commit fails, the unit goes back to Redis and the caller gets BackendUnavailable."""
    sale, ledger = a_sale(stock=5), FakeLedger(error=BackendUnavailable("postgres"))
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                for _ in range(2):  # a retry is not refused from memory
                    with pytest.raises(BackendUnavailable):
                        await serializer.purchase(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.known_buyers, stats.in_flight) == (2, 0, 0)
    assert len(ledger.commits) == 2
    assert gate_state(settings, sale) == ("5", {})


async def test_duplicate_outcome_rolls_back_with_restock(settings):
    """A DUPLICATE from the ledger returns the unit, drops the buyer and says AlreadyPurchased."""
    sale, ledger = a_sale(stock=5), FakeLedger(outcome=CommitResult.DUPLICATE)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase(sale, "alice")
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.answered_from_memory) == (1, 1)
    assert gate_state(settings, sale) == ("5", {})


async def test_no_stock_outcome_drops_the_buyer_without_restock(settings):
    """A NO_STOCK from the ledger drops the reservation, keeps the unit off sale, says SoldOut."""
    sale, ledger = a_sale(stock=5), FakeLedger(outcome=CommitResult.NO_STOCK)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                with pytest.raises(SoldOut):
                    await serializer.purchase(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.known_buyers) == (1, 0)
    assert gate_state(settings, sale) == ("4", {})


async def test_user_refused_for_no_stock_is_not_remembered_as_a_buyer(settings):
    """A user whose purchase the ledger refused for stock is told SoldOut again on retry."""
    sale = a_sale(stock=1)
    ledger = FakeLedger(outcome=CommitResult.NO_STOCK, hold=trio.Event())
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_expect, SoldOut, serializer.purchase, sale, "alice")
                    while gate.statistics().sold_out_sales == 0:
                        await trio.sleep(0.01)
                    ledger.hold.set()
                with pytest.raises(SoldOut):
                    await serializer.purchase(sale, "alice")


async def test_rollback_that_cannot_reach_redis_is_logged_not_raised(settings, caplog):
    """If the gate cannot take a unit back, the caller still gets the ledger's error."""
    sale = a_sale(stock=5)
    ledger = FakeLedger(error=BackendUnavailable("postgres"), hold=trio.Event())
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger) as serializer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_expect, BackendUnavailable, serializer.purchase, sale,
                                       "alice")
                    while not ledger.commits:
                        await trio.sleep(0.01)
                    _, buyers_key = gate_keys(settings, sale.id)
                    redis_client(settings).set(buyers_key, "not a hash")  # RELEASE now fails
                    ledger.hold.set()
    assert "could not return a reservation" in caplog.text
    assert serializer.statistics().rolled_back == 1


async def _expect(error: type[BaseException], fn, *args) -> None:
    with pytest.raises(error):
        await fn(*args)


async def test_max_in_flight_answers_overloaded(settings):
    """Past max_in_flight distinct purchases, a new one is refused Overloaded at once."""
    sale, ledger = a_sale(stock=5), FakeLedger(hold=trio.Event())
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, max_in_flight=1) as serializer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serializer.purchase, sale, "alice")
                    while serializer.statistics().in_flight == 0:
                        await trio.sleep(0.01)
                    with pytest.raises(Overloaded) as caught:
                        await serializer.purchase(sale, "bob")
                    ledger.hold.set()
    assert caught.value.actor == "user_serializer"
    assert [p.user_id for p in ledger.commits] == ["alice"]
    assert set(gate_state(settings, sale)[1]) == {"alice"}


async def test_exit_drains_purchases_in_flight(settings):
    """Leaving the serializer lets a purchase in flight finish within drain_timeout_s."""
    sale, ledger = a_sale(stock=5), FakeLedger(hold=trio.Event())
    bought: list[Purchase] = []

    async def buy() -> None:
        bought.append(await serializer.purchase(sale, "alice"))

    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with trio.open_nursery() as outer:
                async with open_user_serializer(gate, ledger, drain_timeout_s=5) as serializer:
                    outer.start_soon(buy)
                    while not ledger.commits:
                        await trio.sleep(0.01)
                    outer.start_soon(_release_later, ledger.hold)
    assert bought == ledger.commits


async def _release_later(event: trio.Event) -> None:
    await trio.sleep(0.1)
    event.set()


async def test_drain_deadline_fails_purchases_still_in_flight(settings):
    """A purchase still in flight when the drain deadline passes is answered BackendUnavailable."""
    sale, ledger = a_sale(stock=5), FakeLedger(hold=trio.Event())
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with trio.open_nursery() as outer:
                async with open_user_serializer(gate, ledger, drain_timeout_s=0.1) as serializer:
                    outer.start_soon(_expect, BackendUnavailable, serializer.purchase, sale,
                                     "alice")
                    while not ledger.commits:
                        await trio.sleep(0.01)
    assert serializer.statistics().in_flight == 0


async def test_unexpected_error_fails_the_caller_and_surfaces(settings):
    """A non-Flash-Flow error in a purchase fails its caller and is raised from the serializer."""
    sale, ledger = a_sale(stock=5), FakeLedger(error=RuntimeError("boom"))
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            with pytest.raises(RuntimeError, match="boom"):
                async with open_user_serializer(gate, ledger) as serializer:
                    with pytest.raises(BackendUnavailable):
                        await serializer.purchase(sale, "alice")
                    await trio.sleep_forever()


def test_utc_now_is_timezone_aware():
    """The default clock returns an aware UTC datetime."""
    assert utc_now().tzinfo is UTC
