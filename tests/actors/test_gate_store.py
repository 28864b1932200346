"""The gates in Redis against real Redis: release, loading from the ledger, what is in doubt."""

from __future__ import annotations

import uuid

import trio

from actors.keys import parse_holder

from ..helpers import redis_client
from .test_stock_gate import Loader, a_sale, gate_for, keys_of, reserved


async def test_release_with_restock_returns_the_unit(settings):
    """Releasing with restock puts the unit back and drops the holder and its doubt."""
    sale = a_sale(stock=1)
    keys, r = keys_of(settings, sale), redis_client(settings)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            assert await gate.reserve(sale, "alice", pid) == reserved(0)
            assert await gate.release(sale.id, "alice", pid, restock=True) is True
            assert r.get(keys.stock) == "1"
            assert r.hexists(keys.buyers, "alice") is False
            assert r.zscore(keys.pending, "alice") is None
            assert await gate.reserve(sale, "bob", uuid.uuid4()) == reserved(0)


async def test_release_is_idempotent_and_only_undoes_the_named_reservation(settings):
    """A second release, or one naming another purchase id, returns False and changes nothing."""
    sale = a_sale(stock=3)
    keys, r = keys_of(settings, sale), redis_client(settings)
    pid = uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", pid)
            await gate.reserve(sale, "bob", uuid.uuid4())
            assert await gate.release(sale.id, "bob", uuid.uuid4(), restock=True) is False
            assert await gate.release(sale.id, "alice", pid, restock=True) is True
            assert await gate.release(sale.id, "alice", pid, restock=True) is False
    assert r.get(keys.stock) == "2"
    assert r.hkeys(keys.buyers) == ["bob"]
    assert r.zrange(keys.pending, 0, -1) == ["bob"]


async def test_a_gate_is_rebuilt_in_chunks_and_appears_whole(settings, monkeypatch):
    """A rebuild larger than one chunk writes every holder, and no staging hash is left."""
    monkeypatch.setattr("actors.gate_store.LOAD_CHUNK_SIZE", 7)
    sale = a_sale(stock=100)
    loader = Loader(sold=30, buyers={f"u-{i}": str(uuid.uuid4()) for i in range(30)})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.store.ensure_loaded(sale) is True
    keys, r = keys_of(settings, sale), redis_client(settings)
    assert r.get(keys.stock) == "70"
    assert {u: parse_holder(v)[0] for u, v in r.hgetall(keys.buyers).items()} == loader.buyers
    assert list(r.scan_iter(match=f"{keys.buyers}:build:*")) == []


async def test_in_doubt_reports_pending_holders_and_when_they_reserved(settings):
    """in_doubt() counts holders and pending ones, and lists pending ones with their Redis time."""
    sale, pid = a_sale(stock=5), uuid.uuid4()
    loaded = str(uuid.uuid4())
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=1, buyers={"old": loaded})) as gate:
            await gate.reserve(sale, "alice", pid)
            view = await gate.store.in_doubt(sale.id)
            assert await gate.store.settle(sale.id, {"alice": str(pid)}) == 1
            settled = await gate.store.in_doubt(sale.id)
            empty = await gate.store.in_doubt(uuid.uuid4())
            holders = await gate.store.holders(sale.id)
    assert (view.stock, view.holders, view.pending) == (3, 2, 1)
    assert set(view.oldest) == {"alice"}
    assert view.oldest["alice"][0] == str(pid)
    assert view.now_ms - 10_000 < view.oldest["alice"][1] <= view.now_ms
    assert (settled.holders, settled.pending, settled.oldest) == (2, 0, {})
    assert empty.stock is None
    assert holders == {"old": loaded, "alice": str(pid)}


async def test_remaining_loads_the_gate_and_never_goes_below_zero(settings):
    """remaining() builds a missing gate, and an oversold ledger reads as 0 left."""
    sale, oversold = a_sale(stock=10), a_sale(stock=2)
    with trio.fail_after(10):
        async with gate_for(settings, loader=Loader(sold=4)) as gate:
            assert await gate.store.remaining(sale) == 6
            assert await gate.store.remaining(oversold) == 0
            assert await gate.store.ping() is True


async def test_ensure_loaded_does_not_clobber_a_loaded_gate(settings):
    """A gate already in Redis is left untouched by a later load."""
    sale = a_sale(stock=10)
    keys, r = keys_of(settings, sale), redis_client(settings)
    r.set(keys.stock, 2)
    r.hset(keys.buyers, "other-process-user", "pid")
    loader = Loader(sold=0, buyers={"ledger-user": str(uuid.uuid4())})
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.store.ensure_loaded(sale) is False
            assert await gate.reserve(sale, "alice", uuid.uuid4()) == reserved(1)
    assert r.get(keys.stock) == "1"
    assert sorted(r.hkeys(keys.buyers)) == ["alice", "other-process-user"]
