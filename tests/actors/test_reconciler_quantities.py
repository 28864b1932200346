"""The reconciler with quantities: a sale whose buyers take several units heals to
stock = total - the units of its rows, its holders the rows unit for unit."""

from __future__ import annotations

import uuid
from dataclasses import replace

import trio

from actors.keys import holder_value, sale_keys
from flashflow.runtime import open_runtime

from ..helpers import make_sale, redis_client
from .test_holds_quantities import rows_of


async def test_a_drifted_gate_of_a_quantity_sale_heals_to_the_rows_units(settings):
    """Purchases of 3, 2 and 1 of 10: the holders deleted and the stock set to 9, then to
    100,000, then a holder's units written wrong and a ghost added: each pass heals to
    stock 4 with the holders exactly the rows."""
    settings = replace(settings, reconcile_interval_s=3600)
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=4)
    keys, r = sale_keys(settings.key_prefix, sale.id), redis_client(settings)
    with trio.fail_after(30):
        async with open_runtime(settings) as runtime:
            for user, quantity in (("alice", 3), ("bobby", 2), ("carol", 1)):
                await runtime.serializer.purchase_unchecked(sale, user, quantity=quantity)
            rows = await rows_of(settings, sale)
            reconcile = runtime.reconciler.reconcile
            await reconcile(sale)  # the commits' settle marks, whenever they land

            r.delete(keys.buyers)
            r.set(keys.stock, 9)
            emptied = await reconcile(sale)
            healed = (r.get(keys.stock), await runtime.gate.store.holdings(sale.id))
            again = await reconcile(sale)

            r.set(keys.stock, 100_000)
            high = await reconcile(sale)
            after_high = r.get(keys.stock)

            r.hset(keys.buyers, "ghost", holder_value(uuid.uuid4(), 0, 4))
            r.set(keys.stock, 0)
            ghost = await reconcile(sale)
            final = (r.get(keys.stock), await runtime.gate.store.holdings(sale.id))
    assert rows == {"alice": (rows["alice"][0], 3), "bobby": (rows["bobby"][0], 2),
                    "carol": (rows["carol"][0], 1)}
    assert emptied.claimed == 3
    assert healed == ("4", rows)
    assert again.claimed == 0 and not again.recounted
    assert (high.stock_before, high.stock_after) == (100_000, 4)
    assert after_high == "4"
    assert ghost.claimed == 1
    assert final == ("4", rows)
