"""A 3-shard Redis Cluster with a replica per shard: sales on different shards at once, and a
master SIGKILLed mid-sale with its replica promoted."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from actors.errors import FlashFlowError
from actors.keys import sale_keys
from flashflow.http.errors import ERROR_TABLE
from flashflow.runtime import open_runtime

from ..helpers import make_sale
from ..integration.test_stampede import check_invariants
from ..servers import Cluster, wait_for
from .checks import check_exact_end, phase_figures
from .fleet import wait_until_serving
from .load import fault_under_load, open_clients, recover_and_sell_out
from .recorder import Recorder

pytestmark = pytest.mark.slow


async def sales_on_two_shards(settings, cluster: Cluster, stock: int):
    """Two running sales whose hash tags are served by different masters."""
    first = await make_sale(settings.database_url, stock=stock)
    shard = cluster.owner(sale_keys(settings.key_prefix, first.id).stock).port
    for _ in range(50):
        second = await make_sale(settings.database_url, stock=stock)
        if cluster.owner(sale_keys(settings.key_prefix, second.id).stock).port != shard:
            return first, second
    raise AssertionError("50 sales in a row on one shard")


async def test_two_sales_on_two_shards_sell_exactly_at_once(fault_settings, cluster):
    """Two sales on different shards, 150 users pressing 2-3 times on each at once: exact."""
    settings = replace(fault_settings, redis_url=cluster.url, redis_timeout_s=5.0)
    sales = await sales_on_two_shards(settings, cluster, stock=40)
    users = [f"cl-{i:03d}" for i in range(150)]
    results: dict = {sale.id: [] for sale in sales}

    async def press(runtime, sale, user: str) -> None:
        try:
            purchase, _ = await runtime.serializer.buy(user, "127.0.0.1", sale.id)
        except FlashFlowError as exc:
            status, code, _ = ERROR_TABLE[type(exc)]
            results[sale.id].append((user, status, {"error": {"code": code}}))
        else:
            results[sale.id].append((user, 201, {"data": {"purchaseId": str(purchase.id)}}))

    with trio.fail_after(90):
        async with open_runtime(settings) as runtime, trio.open_nursery() as nursery:
            for user in users:
                for sale in sales:
                    for _ in range(2 + hash(user) % 2):
                        nursery.start_soon(press, runtime, sale, user)
    for sale in sales:
        await check_invariants(settings, sale, results[sale.id], expected_sold=40)


async def test_master_killed_replica_promoted_mid_sale(fault_settings, cluster, launch, figures):
    """The master of the sale's shard SIGKILLed: 503s until its replica is promoted, then exact."""
    settings = replace(fault_settings, redis_url=cluster.url)
    sale = await make_sale(settings.database_url, stock=300)
    victim = cluster.owner(sale_keys(settings.key_prefix, sale.id).stock)
    users = [f"ck-{i:04d}" for i in range(900)]
    servers = [await launch(settings), await launch(settings)]
    recorder = Recorder()
    with trio.fail_after(120):
        async with open_clients(*servers) as clients:
            killed_at = await fault_under_load(recorder, clients, users, settings, sale,
                                               lambda: cluster.kill(victim), sold_before=60)
            key = sale_keys(settings.key_prefix, sale.id).stock
            await trio.to_thread.run_sync(lambda: wait_for(
                lambda: cluster.owner(key).port != victim.port, 30, "a replica is promoted"))
            await trio.to_thread.run_sync(cluster.wait_healthy)
            promoted_s = trio.current_time() - killed_at
            ready_s = max([await wait_until_serving(s.base_url) for s in servers])
            recovery = await recover_and_sell_out(recorder, clients, users, settings, sale,
                                                  sale.total_stock)
    figures.update(fault=phase_figures(recorder, "fault"),
                   seconds_until_promoted=round(promoted_s, 2),
                   seconds_until_ready=round(ready_s, 2))
    await check_exact_end(figures, settings, sale, recorder, servers, recovery=recovery)
    assert figures["fault"]["503"] > 0, "no purchase was refused while the master was down"
