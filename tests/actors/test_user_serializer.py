"""The per-user serializer on a real gate: one 201 per user, memory of buyers, doubt,
backpressure, drain, and the checked entry points."""

from __future__ import annotations

import gc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

from actors import (
    AlreadyPurchased,
    BackendUnavailable,
    Overloaded,
    Purchase,
    Sale,
    SaleNotActive,
    SaleNotFound,
    utc_now,
)
from actors.errors import Undecided
from actors.ledger import open_ledger
from actors.stock_gate import open_stock_gate
from actors.user_serializer import open_user_serializer

from ..helpers import fetch, gate_state, make_sale, on_defaults, pg
from .serializer_fakes import DEFAULTS, FakeLedger, a_sale, expect, fixed_loader, gate_for, knobs


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
                outer.start_soon(expect, BackendUnavailable, serializer.purchase_unchecked,
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
