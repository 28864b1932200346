"""The reconciler keeps every gate to the ledger's truth: stale holds back, drift repaired."""

from __future__ import annotations

import uuid
from dataclasses import replace

import trio

from actors.keys import sale_keys
from flashflow.runtime import open_runtime

from ..helpers import gate_keys, make_sale, redis_client


async def test_stale_reservation_without_ledger_row_is_returned(settings):
    """A reservation with no ledger row, older than the grace period, goes back on sale."""
    settings = replace(settings, reservation_grace_s=0.3, reconcile_interval_s=0.1)
    sale = await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            await runtime.serializer.purchase_unchecked(sale, "real-buyer")
            # A worker that died between the gate and the ledger leaves exactly this behind.
            await runtime.gate.reserve(sale, "ghost-buyer", uuid.uuid4())
            stock_key, buyers_key = gate_keys(settings, sale.id)
            assert redis_client(settings).get(stock_key) == "1"
            while runtime.reconciler.statistics().returned < 1:
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            returned = runtime.reconciler.statistics().returned
    r = redis_client(settings)
    assert returned == 1
    assert r.get(stock_key) == "2"
    assert set(r.hkeys(buyers_key)) == {"real-buyer"}


async def test_young_reservation_is_left_alone(settings):
    """A reservation younger than the grace period may still commit, so it is not touched."""
    settings = replace(settings, reservation_grace_s=60, reconcile_interval_s=0.05)
    sale = await make_sale(settings.database_url, stock=2)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            await runtime.gate.reserve(sale, "in-flight", uuid.uuid4())
            await trio.sleep(0.5)
            assert runtime.reconciler.statistics().runs >= 3
            assert (await runtime.reconciler.reconcile(sale)).returned == 0
    stock_key, buyers_key = gate_keys(settings, sale.id)
    assert redis_client(settings).get(stock_key) == "1"
    assert redis_client(settings).hexists(buyers_key, "in-flight")


async def test_committed_purchase_missing_from_the_gate_is_recorded_again(settings):
    """A commit whose unit went back to Redis (its reply was lost) is put back in the gate."""
    settings = replace(settings, reconcile_interval_s=0.1)
    sale = await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            bought = await runtime.serializer.purchase_unchecked(sale, "lost-reply")
            # What a rollback after an ambiguous ledger failure leaves: row kept, unit back.
            await runtime.gate.release(sale.id, "lost-reply", bought.id, restock=True)
            stock_key, buyers_key = gate_keys(settings, sale.id)
            # No look at the drifted gate here: a pass may already be repairing it. Had the
            # release not returned the unit, there would be nothing to claim and this waits
            # until the time runs out.
            while runtime.reconciler.statistics().claimed < 1:
                await trio.sleep(0.05)
    r = redis_client(settings)
    assert r.get(stock_key) == "2"
    assert r.hget(buyers_key, "lost-reply") == f"{bought.id}:0"


async def until_reconciled(runtime, predicate) -> None:
    """Wait for reconciler passes until ``predicate()`` holds; the caller bounds the time."""
    while not predicate():
        await trio.sleep(0.05)


async def test_drifted_counters_and_an_emptied_buyers_hash_heal(settings):
    """Stock set to 0, then to 100,000, then the buyers hash emptied: each heals to the truth."""
    settings = replace(settings, reconcile_interval_s=0.1)
    sale = await make_sale(settings.database_url, stock=10)
    keys, r = sale_keys(settings.key_prefix, sale.id), redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            for user in ("a", "b", "c"):
                await runtime.serializer.purchase_unchecked(sale, user)
            r.set(keys.stock, 0)
            await until_reconciled(runtime, lambda: r.get(keys.stock) == "7")
            r.set(keys.stock, 100_000)
            await until_reconciled(runtime, lambda: r.get(keys.stock) == "7")
            r.delete(keys.buyers)
            await until_reconciled(runtime, lambda: r.hlen(keys.buyers) == 3)
            await until_reconciled(runtime, lambda: r.get(keys.stock) == "7")
            # A pass counts what it repaired once it ends, after its writes are seen.
            await until_reconciled(runtime, lambda: runtime.reconciler.statistics().claimed)
            stats = runtime.reconciler.statistics()
    assert set(r.hkeys(keys.buyers)) == {"a", "b", "c"}
    assert stats.claimed == 3
    assert stats.recounted >= 2


async def test_committed_pending_holders_are_settled(settings):
    """A committed purchase left in pending (its settle mark lost) leaves pending next pass."""
    settings = replace(settings, reconcile_interval_s=0.1)
    sale = await make_sale(settings.database_url, stock=3)
    keys, r = sale_keys(settings.key_prefix, sale.id), redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            await runtime.serializer.purchase_unchecked(sale, "alice")
            await until_reconciled(runtime, lambda: r.zcard(keys.pending) == 0)
            r.zadd(keys.pending, {"alice": 1})  # as if the mark never reached Redis
            await until_reconciled(runtime, lambda: r.zcard(keys.pending) == 0)
            assert runtime.reconciler.statistics().returned == 0
    assert r.get(keys.stock) == "2" and r.hexists(keys.buyers, "alice")


async def test_every_sale_with_a_gate_is_reconciled(settings):
    """Two sales at once, one upcoming: both drifted gates are set right."""
    from datetime import timedelta

    settings = replace(settings, reconcile_interval_s=0.1)
    running = await make_sale(settings.database_url, stock=4)
    upcoming = await make_sale(settings.database_url, stock=6, starts_in=timedelta(hours=1))
    r = redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            for sale in (running, upcoming):
                await runtime.gate.store.ensure_loaded(sale)
                r.set(sale_keys(settings.key_prefix, sale.id).stock, 0)
            await until_reconciled(runtime, lambda: [
                r.get(sale_keys(settings.key_prefix, s.id).stock) for s in (running, upcoming)
            ] == ["4", "6"])


async def test_a_pending_holder_of_another_purchase_takes_the_committed_one(settings):
    """A restored snapshot holds the user pending under a reservation that was rolled back,
    while the ledger has their purchase: the committed one takes its place within a pass,
    long before the grace, and the stock is left as it is."""
    settings = replace(settings, reservation_grace_s=60, reconcile_interval_s=0.1)
    sale = await make_sale(settings.database_url, stock=3)
    keys, r = sale_keys(settings.key_prefix, sale.id), redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            bought = await runtime.serializer.purchase_unchecked(sale, "alice")
            await until_reconciled(runtime, lambda: r.zcard(keys.pending) == 0)
            now_ms = int(r.time()[0]) * 1000
            r.hset(keys.buyers, "alice", f"{uuid.uuid4()}:{now_ms}")
            r.zadd(keys.pending, {"alice": now_ms})
            await until_reconciled(runtime, lambda: r.zcard(keys.pending) == 0)
    assert r.hget(keys.buyers, "alice") == f"{bought.id}:0"
    assert r.get(keys.stock) == "2"


async def test_holders_of_a_sale_with_holds_are_matched_to_its_rows(settings):
    """A sale with holds: a settled holder whose row is gone (a Redis restored from before a
    lapse) goes, and the row's holder it lacked comes, stock unchanged; a pending holder is
    left to its commit."""
    settings = replace(settings, reconcile_interval_s=3600)
    sale = await make_sale(settings.database_url, stock=3, hold_seconds=600)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            alice = await runtime.serializer.purchase_unchecked(sale, "alice")
            await runtime.serializer.purchase_unchecked(sale, "bobby")
            await runtime.gate.reserve(sale, "in-flight", uuid.uuid4())
            stock_key, buyers_key = gate_keys(settings, sale.id)
            r = redis_client(settings)
            # The restored gate: alice's holder gone, a lapsed buyer's still there.
            r.hdel(buyers_key, "alice")
            r.hset(buyers_key, "lapsed-one", f"{uuid.uuid4()}:0")
            repair = await runtime.reconciler.reconcile(sale)
            again = await runtime.reconciler.reconcile(sale)
            holders = r.hgetall(buyers_key)
            stock = r.get(stock_key)
    assert repair.claimed == 2 and again.claimed == 0
    assert set(holders) == {"alice", "bobby", "in-flight"}
    assert holders["alice"].startswith(f"{alice.id}:")
    assert stock == "0"
