"""The per-user serializer on a real gate: one 201 per user, final 409s, doubt, rollback."""

from __future__ import annotations

import gc
import math
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
    CommitResult,
    LedgerState,
    Overloaded,
    Purchase,
    Sale,
    SaleNotActive,
    SaleNotFound,
    SoldOut,
    Tally,
    utc_now,
)
from actors.errors import Undecided
from actors.ledger import CommitOutcome, open_ledger
from actors.stock_gate import StockGate, open_stock_gate
from actors.user_serializer import SerializerConfig, open_user_serializer
from flashflow.settings import Settings

from ..helpers import fetch, gate_keys, gate_state, make_sale, on_defaults, pg, redis_client

#: The serializer's configuration by default.
DEFAULTS = Settings().serializer_config()


def a_sale(stock: int = 5, *, ends_in: timedelta = timedelta(hours=1)) -> Sale:
    """An in-memory sale running now, for tests whose ledger is a fake."""
    now = datetime.now(UTC)
    return Sale(uuid.uuid4(), "Widget", stock, now - timedelta(minutes=1), now + ends_in)


@dataclass
class FakeLedger:
    """A ledger stand-in: answers every commit with ``outcome`` or raises ``error``.

    When ``hold`` is set, each commit waits for it first. ``standing`` is what lookups find;
    ``lost`` is what a commit whose reply was lost turns out to be.
    """

    outcome: CommitResult = CommitResult.COMMITTED
    error: BaseException | None = None
    hold: trio.Event | None = None
    commits: list[Purchase] = field(default_factory=list)
    standing: dict[str, Purchase] = field(default_factory=dict)
    lost: CommitResult = CommitResult.ABSENT

    async def commit(self, purchase: Purchase, deadline: float = math.inf) -> CommitOutcome:
        self.commits.append(purchase)
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        if self.outcome is CommitResult.DUPLICATE:
            other = Purchase(uuid.uuid4(), purchase.sale_id, purchase.user_id, utc_now())
            return CommitOutcome(self.outcome, other)
        return CommitOutcome(self.outcome, purchase if self.outcome is CommitResult.COMMITTED
                             else None)

    async def find_purchase(self, sale_id: uuid.UUID, user_id: str,
                            deadline: float = math.inf) -> Purchase | None:
        return self.standing.get(user_id)

    async def inquire(self, purchase: Purchase) -> CommitOutcome:
        return CommitOutcome(self.lost, purchase if self.lost is CommitResult.COMMITTED
                             else None)


def fixed_loader(buyers: dict[str, str] | None = None):
    """A gate loader reporting nothing sold and the given buyers."""
    async def load(sale: Sale) -> LedgerState:
        return LedgerState(sale.total_stock, 0, dict(buyers or {}))
    return load


async def nothing_sold(sale_id: uuid.UUID) -> Tally:
    """A gate counter for a ledger that holds no purchase (of a stock it does not say)."""
    return Tally(1, 0)


@asynccontextmanager
async def gate_for(settings, loader) -> AsyncIterator[StockGate]:
    """A real stock gate on the test's Redis prefix, inside an asyncio bridge."""
    config = on_defaults(settings).gate_config()
    async with (
        trio_asyncio.open_loop(),
        open_stock_gate(config, loader=loader, counter=nothing_sold) as gate,
    ):
        yield gate


def knobs(**overrides) -> SerializerConfig:
    """Serializer settings with short waits, for tests."""
    return replace(DEFAULTS, **{"wait_s": 0.5, "poll_s": 0.02, **overrides})


async def test_concurrent_purchases_of_one_user_get_one_success(settings):
    """20 concurrent presses by one user: one gets the purchase, 19 ALREADY_PURCHASED; one row."""
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    bought: list[Purchase] = []
    refused: list[AlreadyPurchased] = []

    async def buy() -> None:
        try:
            bought.append(await serializer.purchase_unchecked(sale, "alice"))
        except AlreadyPurchased as exc:
            refused.append(exc)

    with trio.fail_after(20):
        async with (
            trio_asyncio.open_loop(),
            open_ledger(on_defaults(settings).ledger_config()) as ledger,
            open_stock_gate(on_defaults(settings).gate_config(),
                            loader=ledger.state, counter=ledger.tally) as gate,
            open_user_serializer(gate, ledger, config=DEFAULTS) as serializer,
        ):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(buy)
            stats = serializer.statistics()
    assert len(bought) == 1 and len(refused) == 19
    assert stats.coalesced == 19
    assert stats.in_flight == 0 and stats.known_buyers == 1
    rows = await pg(url, fetch, "SELECT id FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["id"] for r in rows] == [bought[0].id]
    assert gate_state(settings, sale) == (4, {"alice": str(bought[0].id)})


async def test_a_buyer_is_answered_from_memory(settings):
    """After a purchase, the same user is refused AlreadyPurchased without a second reservation."""
    sale, ledger = a_sale(stock=5), FakeLedger()
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                first = await serializer.purchase_unchecked(sale, "alice")
                for _ in range(2):
                    with pytest.raises(AlreadyPurchased):
                        await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
    assert stats.answered_from_memory == 2
    assert ledger.commits == [first]
    assert gate_state(settings, sale) == (4, {"alice": str(first.id)})


async def test_known_buyers_are_kept_as_values_the_garbage_collector_does_not_walk(settings):
    """200 buyers remembered: each is known with its purchase, and none is kept as an object
    that every full collection walks (a big sale's collections would slow as it fills)."""
    sale, ledger = a_sale(stock=200), FakeLedger()
    bought: dict[str, tuple[uuid.UUID, datetime]] = {}
    with trio.fail_after(20):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                for i in range(200):
                    purchase = await serializer.purchase_unchecked(sale, f"buyer-{i:03d}")
                    bought[purchase.user_id] = (purchase.id, purchase.purchased_at)
                del purchase
                ledger.commits.clear()
                gc.collect()
                kept = [o for o in gc.get_objects() if isinstance(o, Purchase)
                        and o.sale_id == sale.id]
                known = {user: serializer.known_purchase(sale.id, user) for user in bought}
    assert kept == []
    assert {user: (p.id, p.purchased_at) for user, p in known.items() if p} == bought


async def test_a_holder_without_a_committed_purchase_is_undecided_not_refused(settings):
    """A user the gate holds but the ledger does not is never told ALREADY_PURCHASED.

    The hold may still be rolled back or returned by the reconciler, and then the user must be
    able to buy: the purchase waits, asking again, and answers Undecided at its deadline.
    """
    sale, ledger = a_sale(stock=5), FakeLedger()
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader({"alice": str(uuid.uuid4())})) as gate:
            async with open_user_serializer(gate, ledger, config=knobs(wait_s=0.3)) as serializer:
                with pytest.raises(Undecided):
                    await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
    assert (stats.known_buyers, stats.answered_from_memory) == (0, 0)
    assert gate.statistics().reserved_requests > 2, "the hold was asked about again"
    assert ledger.commits == []


async def test_a_holder_whose_purchase_committed_is_already_purchased_and_remembered(settings):
    """A held user the ledger holds a purchase for is told ALREADY_PURCHASED, then from memory."""
    sale = a_sale(stock=5)
    standing = Purchase(uuid.uuid4(), sale.id, "alice", utc_now())
    ledger = FakeLedger(standing={"alice": standing})
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader({"alice": str(standing.id)})) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                for _ in range(2):
                    with pytest.raises(AlreadyPurchased):
                        await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
                assert serializer.known_purchase(sale.id, "alice") == standing
    assert (stats.known_buyers, stats.answered_from_memory) == (1, 1)


async def test_ledger_failure_rolls_back_a_reservation_the_ledger_does_not_hold(settings):
    """A commit that fails and that the ledger says never landed: unit back, 503 to the caller."""
    sale, ledger = a_sale(stock=5), FakeLedger(error=BackendUnavailable("postgres"))
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=knobs()) as serializer:
                for _ in range(2):  # a retry is not refused from memory
                    with pytest.raises(BackendUnavailable):
                        await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.known_buyers, stats.in_flight) == (2, 0, 0)
    assert stats.lost_replies == 2
    assert len(ledger.commits) == 2
    assert gate_state(settings, sale) == (5, {})


async def test_a_commit_whose_reply_was_lost_but_landed_is_a_success(settings):
    """A commit that timed out but that the ledger holds is the user's purchase: never a 503."""
    sale = a_sale(stock=5)
    ledger = FakeLedger(error=BackendUnavailable("postgres"), lost=CommitResult.COMMITTED)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=knobs()) as serializer:
                bought = await serializer.purchase_unchecked(sale, "alice")
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase_unchecked(sale, "alice")
    assert bought == ledger.commits[0]
    assert gate_state(settings, sale) == (4, {"alice": str(bought.id)})


async def test_a_commit_outside_the_window_returns_the_unit(settings):
    """The ledger refusing a commit after the sale's end is SALE_NOT_ACTIVE, unit back."""
    sale, ledger = a_sale(stock=5), FakeLedger(outcome=CommitResult.ENDED)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                with pytest.raises(SaleNotActive) as caught:
                    await serializer.purchase_unchecked(sale, "alice")
    assert caught.value.started is True
    assert gate_state(settings, sale) == (5, {})


async def test_duplicate_outcome_rolls_back_with_restock(settings):
    """A DUPLICATE from the ledger returns the unit, drops the buyer and says AlreadyPurchased."""
    sale, ledger = a_sale(stock=5), FakeLedger(outcome=CommitResult.DUPLICATE)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase_unchecked(sale, "alice")
                with pytest.raises(AlreadyPurchased):
                    await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.answered_from_memory) == (1, 1)
    assert gate_state(settings, sale) == (5, {})


async def test_no_stock_outcome_drops_the_buyer_without_restock(settings):
    """A NO_STOCK from the ledger drops the reservation, keeps the unit off sale, says SoldOut."""
    sale, ledger = a_sale(stock=5), FakeLedger(outcome=CommitResult.NO_STOCK)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                with pytest.raises(SoldOut):
                    await serializer.purchase_unchecked(sale, "alice")
                stats = serializer.statistics()
    assert (stats.rolled_back, stats.known_buyers) == (1, 0)
    assert gate_state(settings, sale) == (4, {})


async def test_rollback_that_cannot_reach_redis_is_logged_not_raised(settings, caplog):
    """If the gate cannot take a unit back, the caller still gets the ledger's error."""
    sale = a_sale(stock=5)
    ledger = FakeLedger(error=BackendUnavailable("postgres"), hold=trio.Event())
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger, config=knobs()) as serializer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_expect, BackendUnavailable,
                                       serializer.purchase_unchecked, sale, "alice")
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
            async with open_user_serializer(gate, ledger,
                                            config=knobs(max_in_flight=1)) as serializer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serializer.purchase_unchecked, sale, "alice")
                    while serializer.statistics().in_flight == 0:
                        await trio.sleep(0.01)
                    with pytest.raises(Overloaded) as caught:
                        await serializer.purchase_unchecked(sale, "bob")
                    ledger.hold.set()
    assert caught.value.actor == "user_serializer"
    assert [p.user_id for p in ledger.commits] == ["alice"]
    assert set(gate_state(settings, sale)[1]) == {"alice"}


async def test_exit_drains_purchases_in_flight(settings):
    """Leaving the serializer lets a purchase in flight finish within drain_timeout_s."""
    sale, ledger = a_sale(stock=5), FakeLedger(hold=trio.Event())
    bought: list[Purchase] = []

    async def buy() -> None:
        bought.append(await serializer.purchase_unchecked(sale, "alice"))

    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with trio.open_nursery() as outer:
                async with open_user_serializer(gate, ledger,
                                                config=knobs(drain_timeout_s=5)) as serializer:
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
        async with gate_for(settings, fixed_loader()) as gate, trio.open_nursery() as outer:
            async with open_user_serializer(gate, ledger,
                                            config=knobs(drain_timeout_s=0.1)) as serializer:
                outer.start_soon(_expect, BackendUnavailable, serializer.purchase_unchecked,
                                 sale, "alice")
                while not ledger.commits:
                    await trio.sleep(0.01)
    assert serializer.statistics().in_flight == 0


async def test_unexpected_error_fails_the_caller_and_surfaces(settings):
    """A non-Flash-Flow error in a purchase fails its caller and is raised from the serializer."""
    sale, ledger = a_sale(stock=5), FakeLedger(error=RuntimeError("boom"))
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            with pytest.raises(RuntimeError, match="boom"):
                async with open_user_serializer(gate, ledger, config=DEFAULTS) as serializer:
                    with pytest.raises(BackendUnavailable):
                        await serializer.purchase_unchecked(sale, "alice")
                    await trio.sleep_forever()


@dataclass
class FakeCatalog:
    """A catalog holding the given sales; the current one is the first."""

    sales: list[Sale]

    def current(self, now: datetime) -> Sale | None:
        return self.sales[0] if self.sales else None

    def get(self, sale_id: uuid.UUID) -> Sale | None:
        return next((s for s in self.sales if s.id == sale_id), None)


async def test_buy_checks_the_sale_and_its_window_and_status_reads_memory(settings):
    """buy() finds the sale, refuses outside the window; status() answers a known buyer."""
    sale, ended = a_sale(stock=5), a_sale(stock=5, ends_in=timedelta(seconds=-1))
    ledger = FakeLedger()
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, ledger,
                                            catalog=FakeCatalog([sale, ended]),
                                            config=DEFAULTS) as serializer:
                bought, which = await serializer.buy("alice", "127.0.0.1")
                with pytest.raises(SaleNotActive) as caught:
                    await serializer.buy("alice", "127.0.0.1", ended.id)
                with pytest.raises(SaleNotFound):
                    await serializer.buy("alice", "127.0.0.1", uuid.uuid4())
                assert await serializer.status("alice") == (sale, bought)
                assert await serializer.status("bob") == (sale, None)
    assert which == sale and caught.value.started is True


async def test_memory_of_ended_sales_is_dropped(settings):
    """forget_ended() drops the buyers of sales over for a while, and keeps running ones."""
    over, running = a_sale(stock=5, ends_in=timedelta(minutes=-5)), a_sale(stock=5)
    with trio.fail_after(10):
        async with gate_for(settings, fixed_loader()) as gate:
            async with open_user_serializer(gate, FakeLedger(), config=DEFAULTS) as serializer:
                await serializer.purchase_unchecked(over, "alice")
                await serializer.purchase_unchecked(running, "alice")
                assert serializer.forget_ended(utc_now()) == [over.id]
                stats = serializer.statistics()
                assert serializer.known_purchase(over.id, "alice") is None
                assert serializer.known_purchase(running.id, "alice") is not None
    assert (stats.remembered_sales, stats.known_buyers) == (1, 1)


def test_utc_now_is_timezone_aware():
    """The default clock returns an aware UTC datetime."""
    assert utc_now().tzinfo is UTC
