"""A sale with holds under the faults of a sale without them: Redis killed and restarted
empty, a gate drifted from the ledger, commit replies lost. Buyers press, pay or walk away,
and wait in line through each; every rule of holds and the waitlist holds after it."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis
import trio

from actors.keys import sale_keys
from flashflow.embedded import start_redis
from flashflow.http.wire import CURRENT

from ..helpers import make_sale
from .checkout import ADMIN, Checkout, judge_checkout, open_buyer_clients, run_buyers
from .checks import redis_fault_bound_s
from .fleet import wait_until_serving
from .test_lost_commit_reply import CommitReplyDropper

pytestmark = pytest.mark.slow

STOCK, HOLD_S, BUYERS = 30, 3, 150
#: When the fault comes: the holds are made, some paid, the line formed, none lapsed yet.
FAULT_AT_S = 1.5


def hold_settings(fault_settings):
    """The fault tests' settings, with the payment step's token and a short gate retry."""
    return replace(fault_settings, admin_token=ADMIN, hold_gate_retry_s=1.0)


async def checkout_through(settings, sale, servers, fault: Callable[[], Awaitable[Any]],
                           figures: dict[str, Any], users_tag: str) -> Checkout:
    """Run the buyers, bring ``fault`` on at :data:`FAULT_AT_S` (it returns once the servers
    have recovered), and judge the whole run; the answers given meanwhile are the faulted."""
    checkout = Checkout()
    users = [f"{users_tag}-{i:04d}" for i in range(BUYERS)]
    window: list[float] = []

    async def bring_fault() -> None:
        await trio.sleep(FAULT_AT_S)
        window.append(time.time())
        figures["fault"] = await fault()
        window.append(time.time())

    with trio.fail_after(120):
        async with open_buyer_clients(*servers) as clients, trio.open_nursery() as nursery:
            nursery.start_soon(bring_fault)
            await run_buyers(checkout, clients, sale, users, random.Random(users_tag))
    await judge_checkout(settings, sale, checkout, figures, fault_window=tuple(window))
    return checkout


async def test_holds_through_a_redis_restart(backends, fault_settings, launch, figures):
    """Redis SIGKILLed while holds are live and a line waits, restarted empty: lapses and
    offers made meanwhile reach the rebuilt gate once, and every rule holds."""
    settings = hold_settings(fault_settings)
    sale = await make_sale(settings.database_url, stock=STOCK, hold_seconds=HOLD_S)
    servers = [await launch(settings, traced=False), await launch(settings, traced=False)]

    async def restart() -> dict[str, float]:
        backends.kill_redis()
        await trio.sleep(redis_fault_bound_s(settings) + 0.5)
        restart_s = await trio.to_thread.run_sync(backends.start_redis_empty)
        ready_s = max([await wait_until_serving(s.base_url) for s in servers])
        # A reader of the sale, as the page is, has the gate built again from the ledger.
        async with httpx.AsyncClient(base_url=servers[0].base_url) as reader:
            assert (await reader.get(CURRENT)).status_code == 200
        for server in servers:
            await wait_until_serving(server.base_url, checks=("redis", "postgres", "gate"))
        return {"restart_s": round(restart_s, 2), "ready_s": round(ready_s, 2)}

    await checkout_through(settings, sale, servers, restart, figures, "hr")


async def test_holds_through_a_drifted_gate(backends, fault_settings, launch, figures):
    """The gate's stock set to 100,000, its holders deleted, then Redis restored from an
    older snapshot, while holds lapse into the line: the reconciler and the handover heal
    it, and every rule holds."""
    settings = hold_settings(fault_settings)
    sale = await make_sale(settings.database_url, stock=STOCK, hold_seconds=HOLD_S)
    servers = [await launch(settings, traced=False)]
    keys = sale_keys(settings.key_prefix, sale.id)

    async def drift() -> dict[str, Any]:
        r = redis.Redis.from_url(backends.redis.url, decode_responses=True)
        try:
            r.save()  # the snapshot a restart will come back from
            r.set(keys.stock, 100_000)
            await trio.sleep(settings.reconcile_interval_s * 2)
            r.delete(keys.buyers)
            await trio.sleep(HOLD_S)  # holds lapse and go down the line meanwhile
        finally:
            r.close()
        backends.kill_redis()
        backends.redis = start_redis(backends.data_dir, port=backends.redis_port)
        await wait_until_serving(servers[0].base_url)
        return {"restored": True}

    await checkout_through(settings, sale, servers, drift, figures, "hd")


async def test_holds_through_lost_commit_replies(backends, fault_settings, launch, figures):
    """The replies of commits (holds, confirms, lapses, places) swallowed: each is settled
    by asking the ledger or told to the gate again, a confirm sent again answers the same,
    and every rule holds."""
    direct = hold_settings(fault_settings)
    proxy = CommitReplyDropper(backends.postgres_port, mute_s=6.0)
    async with trio.open_nursery() as proxy_nursery:
        port = await proxy_nursery.start(proxy.serve)
        proxied = replace(direct, database_url=f"postgresql://postgres@127.0.0.1:{port}/"
                          + direct.database_url.rsplit("/", 1)[1])
        sale = await make_sale(direct.database_url, stock=STOCK, hold_seconds=HOLD_S)
        servers = [await launch(proxied, traced=False)]

        async def swallow() -> dict[str, int]:
            proxy.arm(6)
            with trio.move_on_after(HOLD_S * 3):
                while proxy.armed:
                    await trio.sleep(0.1)
            # The last swallowed connection stays mute, then the ledger's timeout runs out.
            await trio.sleep(proxy.mute_s + direct.postgres_timeout_s)
            return {"swallowed": proxy.swallowed, "dropped_bytes": proxy.dropped_bytes}

        await checkout_through(direct, sale, servers, swallow, figures, "hl")
        proxy_nursery.cancel_scope.cancel()
    assert proxy.swallowed > 0, "the proxy swallowed no COMMIT reply"
