"""A drifted gate heals: counters set wrong, holders lost, Redis restored from an old snapshot.

Each drift is made on a live sale served by a real server on this test's own PostgreSQL and
Redis; the reconciler must bring Redis back to the ledger's truth within one reconcile
interval plus the grace period, and the sale must then sell out exactly.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import httpx
import psutil
import pytest
import redis
import trio

from actors.keys import sale_keys
from flashflow.embedded import start_redis
from flashflow.http.replies import read_reply
from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, METRICS

from ..helpers import make_sale
from .checks import check_sale_after_faults, phase_figures
from .fleet import stopped, wait_until_serving
from .load import asking, open_clients, recover_and_sell_out
from .recorder import Recorder

#: Sales of 5 run back to back: about 30 s, three times what a server remembers of ended sales
#: (5 s after the end, swept every 5 s), so a server that forgot nothing would show all 300.
SHORT_SALES = 60


async def remaining(client: httpx.AsyncClient) -> int:
    """What ``GET /current`` says is left."""
    response = await client.get(CURRENT)
    return read_reply(response.status_code, response.json()).remaining_stock


async def healed(client: httpx.AsyncClient, r: redis.Redis, keys, want: int,
                 within_s: float) -> float:
    """Wait until Redis and ``GET /current`` both show ``want`` left; return the seconds."""
    started = trio.current_time()
    with trio.fail_after(within_s):
        while True:
            stock = r.get(keys.stock)
            if stock is not None and int(stock) == want and await remaining(client) == want:
                return trio.current_time() - started
            await trio.sleep(0.05)


async def buy_each(recorder: Recorder, client: httpx.AsyncClient, users: list[str]) -> None:
    """Each user presses once, one after the other."""
    for user in users:
        await recorder.press(client, user)


@pytest.mark.parametrize("most", [1, 4], ids=["one-unit", "quantities"])
async def test_drifted_gate_heals_then_sells_out_exactly(backends, fault_settings, launch,
                                                         figures, most):
    """Stock set to 0 and to 100,000, buyers emptied, Redis restored from an old snapshot;
    with buyers of one unit each, and of 1 to 4 units (limit 4): every heal is to the units
    the rows take."""
    settings = fault_settings
    users = [f"drift-{i:03d}" for i in range(120)]
    recorder = Recorder(quantities=asking(users, most))
    # Units for the first 30 buyers and 30 more: 60 when each takes one.
    stock = sum(recorder.quantities[u] for u in users[:30]) + 30
    units = [stock - sum(recorder.quantities[u] for u in users[:n]) for n in (10, 20, 30)]
    sale = await make_sale(settings.database_url, stock=stock, per_user_limit=most)
    server = await launch(settings)
    # Two workers that never see the first buyers: after the restore, their answers to those
    # buyers can come only from Redis and the ledger, not from a worker's memory.
    fresh = await launch(settings, "--workers", "2")
    for s in (server, fresh):
        await wait_until_serving(s.base_url)
    keys = sale_keys(settings.key_prefix, sale.id)
    r = redis.Redis.from_url(backends.redis.url, decode_responses=True)
    bound = settings.reconcile_interval_s + settings.reservation_grace_s + 3  # a busy machine
    heal: dict[str, float] = {}
    try:
        async with open_clients(server, fresh) as (client, stranger):
            await buy_each(recorder, client, users[:10])
            assert len(recorder.winners) == 10

            r.set(keys.stock, 0)  # units left, the gate says none
            heal["counter_set_to_0"] = await healed(client, r, keys, units[0], bound)
            await buy_each(recorder, client, users[10:20])

            r.set(keys.stock, 100_000)  # a phantom stock
            heal["counter_set_to_100000"] = await healed(client, r, keys, units[1], bound)

            r.delete(keys.buyers)  # every holder lost
            started = trio.current_time()
            with trio.fail_after(bound):
                while r.hlen(keys.buyers) != 20:
                    await trio.sleep(0.05)
            await healed(client, r, keys, units[1], bound)
            heal["buyers_emptied"] = trio.current_time() - started

            r.save()  # the snapshot an RDB-persisted Redis would restart from
            await buy_each(recorder, client, users[20:30])
            assert len(recorder.winners) == 30
            # The servers stand still until the test has seen what Redis came back with:
            # a reconcile pass (every 0.5 s) would otherwise heal it first.
            with stopped(server, fresh):
                os.kill(backends.redis.pid, signal.SIGKILL)
                backends.redis.process.wait(10)
                backends.redis = start_redis(backends.data_dir, port=backends.redis_port)
                r = redis.Redis.from_url(backends.redis.url, decode_responses=True)
                assert int(r.get(keys.stock)) == units[1], \
                    "Redis came back from the older snapshot"
            # Everyone who bought, before the snapshot and after it, is told so at once by
            # workers that never saw them: the restored Redis lacks the last ten holders.
            await wait_until_serving(fresh.base_url)
            for user in users[:30]:
                outcome = await recorder.press(stranger, user)
                assert outcome.code == "ALREADY_PURCHASED", outcome
            heal["restored_from_old_snapshot"] = await healed(client, r, keys, units[2],
                                                              bound + 5)
            recorder.phase = "during"
            _, sell_out_s = await recover_and_sell_out(
                recorder, [client], users, settings, sale, stock)
            left = await remaining(client)
    finally:
        r.close()
    figures["heal_seconds"] = heal
    figures["heal_bound_seconds"] = bound
    figures["units_left_after_10_20_30_buyers"] = units
    figures["sell_out_seconds"] = round(sell_out_s, 2)
    figures["after"] = phase_figures(recorder, "after")
    figures.update(await check_sale_after_faults(settings, sale, recorder, expected_sold=stock,
                                                 settle_s=bound))
    assert left == 0
    assert figures["sold_out_told_to_users_who_then_bought"] == 0
    assert figures["already_purchased_told_to_users_without_a_row"] == 0


async def test_many_short_sales_keep_memory_flat(backends, fault_settings, launch, figures):
    """60 short sales back to back on one server: its memory of sales stays bounded."""
    settings = fault_settings
    server = await launch(settings)
    await wait_until_serving(server.base_url)
    process = psutil.Process(server.process.pid)
    rss: list[int] = []
    async with open_clients(server) as (client,):
        for n in range(SHORT_SALES):
            sale = await make_sale(settings.database_url, stock=5,
                                   starts_in=timedelta(seconds=-0.2),
                                   lasts=timedelta(seconds=0.8))
            with trio.fail_after(20):
                while (await client.get(CURRENT)).json().get("data", {}).get("id") != str(sale.id):
                    await trio.sleep(0.05)
            for i in range(10):
                response = await client.post(CURRENT_PURCHASE, json={"userId": f"s{n}-u{i}"})
                assert response.status_code in (201, 409, 503), response.text
            if n in (0, SHORT_SALES - 1):
                rss.append(process.memory_info().rss)
        metrics = (await client.get(METRICS)).text
    figures["rss_first_mb"] = round(rss[0] / 2**20, 1)
    figures["rss_last_mb"] = round(rss[1] / 2**20, 1)
    remembered = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("flashflow_serializer_known_buyers"))
    figures["known_buyers_at_end"] = remembered
    figures["buyers_over_all_sales"] = 5 * SHORT_SALES
    assert rss[1] < rss[0] * 1.5, figures
    # Only the sales of the last few seconds are remembered, not all 60 (300 buyers).
    assert remembered < 150, figures
