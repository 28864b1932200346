"""The user serializer on a real gate: what each commit outcome, or a lost reply, does to the
reservation (kept, returned to stock, or dropped) and to the caller."""

from __future__ import annotations

import pytest
import trio

from actors import AlreadyPurchased, BackendUnavailable, CommitResult, SaleNotActive, SoldOut
from actors.user_serializer import open_user_serializer

from ..helpers import gate_keys, gate_state, redis_client
from .serializer_fakes import DEFAULTS, FakeLedger, a_sale, expect, fixed_loader, gate_for, knobs


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
                    nursery.start_soon(expect, BackendUnavailable,
                                       serializer.purchase_unchecked, sale, "alice")
                    while not ledger.commits:
                        await trio.sleep(0.01)
                    _, buyers_key = gate_keys(settings, sale.id)
                    redis_client(settings).set(buyers_key, "not a hash")  # RELEASE now fails
                    ledger.hold.set()
    assert "could not return a reservation" in caplog.text
    assert serializer.statistics().rolled_back == 1
