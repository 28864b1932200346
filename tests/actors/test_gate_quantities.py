"""The gate's scripts with quantities, against real Redis: a request takes all its units or
none, served in order first fit; every script moves a holder's units, not one."""

from __future__ import annotations

import uuid

import trio

from actors import Tally
from actors.keys import holder_quantity, holder_value, parse_holder

from ..helpers import redis_client
from .test_stock_gate import Loader, a_sale, gate_for, keys_of, reserved


def test_a_holder_value_names_its_units_beyond_one():
    """One unit: "<id>:<ms>", as before quantities; more: ":<n>" after it, read back as n."""
    pid = uuid.uuid4()
    assert holder_value(pid, 1234) == f"{pid}:1234"
    assert holder_value(pid, 1234, 3) == f"{pid}:1234:3"
    assert holder_value(pid, 0, 2) == f"{pid}:0:2"
    assert parse_holder(f"{pid}:1234:3") == (str(pid), 1234)
    assert parse_holder(f"{pid}:1234".encode()) == (str(pid), 1234)
    assert holder_quantity(f"{pid}:1234:3".encode()) == 3
    assert holder_quantity(f"{pid}:1234") == 1


async def test_a_request_larger_than_the_stock_is_refused_whole(settings):
    """Three units asked with two left: nothing taken, the stock and the holders unchanged."""
    sale = a_sale(stock=2, per_user_limit=4)
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await gate.store.reserve(sale, [("alice", str(uuid.uuid4()), 3)])
    assert answers == [None]
    assert r.get(keys.stock) == "2"
    assert r.hlen(keys.buyers) == 0
    assert r.zcard(keys.pending) == 0


async def test_one_batch_serves_its_requests_in_order_first_fit(settings):
    """Requests of 3, 1 and 1 in one call with two left: the 3 is refused, both 1s served
    after it; the holders hold their units and the stock is what they left."""
    sale = a_sale(stock=2, per_user_limit=4)
    pids = {user: str(uuid.uuid4()) for user in ("big", "small", "other")}
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            answers = await gate.store.reserve(
                sale, [("big", pids["big"], 3), ("small", pids["small"], 1),
                       ("other", pids["other"], 1)])
    assert answers == [None, reserved(1), reserved(0)]
    assert r.get(keys.stock) == "0"
    assert sorted(r.hkeys(keys.buyers)) == ["other", "small"]


async def test_a_reservation_of_three_sent_again_is_the_same(settings):
    """A resend of the same reservation (a lost reply) answers the same and takes nothing
    more; its holder names its three units; another id of the user is told of the hold."""
    sale, pid = a_sale(stock=5, per_user_limit=4), uuid.uuid4()
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            first = await gate.reserve(sale, "alice", pid, quantity=3)
            again = await gate.reserve(sale, "alice", pid, quantity=3)
            other = await gate.store.reserve(sale, [("alice", str(uuid.uuid4()), 1)])
    assert first == again == reserved(2)
    assert other[0] is not None and other[0].holder == str(pid)
    assert r.get(keys.stock) == "2"
    value = r.hget(keys.buyers, "alice")
    stamp = parse_holder(value)[1]
    assert stamp > 0 and value == holder_value(pid, stamp, 3)
    assert r.zscore(keys.pending, "alice") == stamp


async def test_release_with_restock_returns_every_unit_of_the_holder(settings):
    """Releasing a 3-unit reservation with restock puts 3 units back; without, none."""
    sale = a_sale(stock=10, per_user_limit=4)
    keys, r = keys_of(settings, sale), redis_client(settings)
    kept, back = uuid.uuid4(), uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", back, quantity=3)
            await gate.reserve(sale, "bob", kept, quantity=2)
            assert r.get(keys.stock) == "5"
            assert await gate.release(sale.id, "alice", back, restock=True) is True
            assert r.get(keys.stock) == "8"
            assert await gate.release(sale.id, "bob", kept, restock=False) is True
    assert r.get(keys.stock) == "8"
    assert r.hlen(keys.buyers) == 0


async def test_a_gate_built_from_the_ledger_holds_each_buyers_units(settings):
    """A rebuild writes each buyer's quantity in its holder, settled, and the stock as the
    ledger counts units."""
    sale = a_sale(stock=10, per_user_limit=4)
    loader = Loader(sold=4, buyers={"alice": str(uuid.uuid4()), "bob": str(uuid.uuid4())},
                    quantities={"alice": 3})
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings, loader=loader) as gate:
            assert await gate.store.ensure_loaded(sale) is True
            holdings = await gate.store.holdings(sale.id)
    assert r.get(keys.stock) == "6"
    assert r.hget(keys.buyers, "alice") == holder_value(loader.buyers["alice"], 0, 3)
    assert r.hget(keys.buyers, "bob") == holder_value(loader.buyers["bob"], 0)
    assert holdings == {"alice": (loader.buyers["alice"], 3), "bob": (loader.buyers["bob"], 1)}
    assert r.zcard(keys.pending) == 0


async def test_a_missing_purchase_of_three_is_claimed_with_its_three_units(settings):
    """A committed 3-unit purchase the gate lacks takes 3 units; claimed again, nothing; a
    pending 1-unit reservation of the user under another id is replaced, the stock moved by
    the difference."""
    sale = a_sale(stock=10, per_user_limit=4)
    keys, r = keys_of(settings, sale), redis_client(settings)
    alice, bob, stale = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4()
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.store.ensure_loaded(sale)
            assert await gate.store.claim(sale.id, {"alice": alice}, {"alice": 3}) == 1
            assert r.get(keys.stock) == "7"
            assert await gate.store.claim(sale.id, {"alice": alice}, {"alice": 3}) == 0
            assert r.get(keys.stock) == "7"
            await gate.reserve(sale, "bob", stale)  # one unit, pending
            assert r.get(keys.stock) == "6"
            assert await gate.store.claim(sale.id, {"bob": bob}, {"bob": 2}) == 1
    assert r.get(keys.stock) == "5"
    assert r.hget(keys.buyers, "alice") == holder_value(alice, 0, 3)
    assert r.hget(keys.buyers, "bob") == holder_value(bob, 0, 2)
    assert r.zcard(keys.pending) == 0


async def test_a_recount_with_quantities_sums_the_holders_units(settings):
    """Holders of 3 and 1 units, the stock wrong: a recount with quantities sets total - 4;
    one without counts each holder once, so only the flag makes it right."""
    sale = a_sale(stock=10, per_user_limit=4)
    keys, r = keys_of(settings, sale), redis_client(settings)
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", uuid.uuid4(), quantity=3)
            await gate.reserve(sale, "bob", uuid.uuid4())
            r.set(keys.stock, 9)
            counted = await gate.recount(sale.id, Tally(10, 0))
            summed = await gate.recount(sale.id, Tally(10, 0), quantities=True)
            floor = await gate.recount(sale.id, Tally(10, 5), quantities=True)
    assert counted == (9, 8)
    assert summed == (8, 6)
    assert floor == (6, 5), "the ledger's committed units are a floor"
    assert r.get(keys.stock) == "5"


async def test_a_handover_moves_three_units_to_two_holders_of_one_and_two(settings):
    """A 3-unit hold leaves and holders of 1 and 2 come in one step: the stock never moves,
    the new holders are pending with their units, and the same moves again change nothing;
    units that go to nobody go back on sale."""
    sale = a_sale(stock=5, per_user_limit=4)
    keys, r = keys_of(settings, sale), redis_client(settings)
    alice, bob, carol = uuid.uuid4(), str(uuid.uuid4()), str(uuid.uuid4())
    moves = ([("alice", str(alice))], [("bob", bob, 1), ("carol", carol, 2)])
    with trio.fail_after(10):
        async with gate_for(settings) as gate:
            await gate.reserve(sale, "alice", alice, quantity=3)
            assert await gate.handover(sale.id, *moves) == 2
            holdings = await gate.store.holdings(sale.id)
            assert await gate.handover(sale.id, *moves) == 2
            assert await gate.store.holdings(sale.id) == holdings
            # carol's two units end and go to dave's one: one unit is back on sale
            dave = str(uuid.uuid4())
            assert await gate.handover(sale.id, [("carol", carol)], [("dave", dave, 1)]) == 3
            after = await gate.store.holdings(sale.id)
    assert holdings == {"bob": (bob, 1), "carol": (carol, 2)}
    assert after == {"bob": (bob, 1), "dave": (dave, 1)}
    assert sorted(r.zrange(keys.pending, 0, -1)) == ["bob", "dave"]
    assert r.get(keys.stock) == "3"
