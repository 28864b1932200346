"""The invariants under a stampede, proven against real Redis and PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta

import httpx
import trio

from actors.keys import sale_keys
from flashflow.http.replies import read_reply
from flashflow.http.wire import CURRENT_PURCHASE, purchase_path
from loadtests.records import PURCHASE as PURCHASE_KIND
from loadtests.records import Record

from ..helpers import judge, live_server, make_sale, redis_client, spawn_server


async def stampede(clients, users: list[str], clicks: int | tuple[int, int],
                   concurrency: int = 200, paths: Sequence[str] = (CURRENT_PURCHASE,),
                   body: Callable[[str], dict] | None = None):
    """Every user presses Buy ``clicks`` times (or a random count in a range) concurrently,
    spread over ``clients`` and over the purchase routes in ``paths`` (of one sale), sending
    ``body(user)`` (by default the user id alone).

    Returns a list of (user, status, body) for every response.
    """
    results: list[tuple[str, int, dict]] = []
    limiter = trio.CapacityLimiter(concurrency)
    low, high = (clicks, clicks) if isinstance(clicks, int) else clicks
    attempts = [(u, random.choice(clients), random.choice(paths)) for u in users
                for _ in range(random.randint(low, high))]
    random.shuffle(attempts)

    async def press(user: str, client, path: str) -> None:
        async with limiter:
            response = await client.post(path, json=body(user) if body else {"userId": user})
        results.append((user, response.status_code, response.json()))

    async with trio.open_nursery() as nursery:
        for user, client, path in attempts:
            nursery.start_soon(press, user, client, path)
    return results


def as_records(results: list[tuple[str, int, dict]]) -> list[Record]:
    """The results of :func:`stampede` as the load test's records (untimed)."""
    records = []
    for user, status, body in results:
        reply = read_reply(status, body)
        records.append(Record(PURCHASE_KIND, user, status, 0.0, 0.0,
                              purchase_id=reply.purchase_id if status == 201 else None,
                              code=reply.error_code))
    return records


async def check_invariants(settings, sale, results, *, expected_sold: int) -> None:
    """Exactly ``expected_sold`` 201s, only 201s and 409s, nothing left in doubt in the gate,
    and every invariant of :func:`flashflow.invariants.verify`."""
    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] == expected_sold, f"{statuses[201]} x 201 for {expected_sold} units"
    pending = sale_keys(settings.key_prefix, sale.id).pending
    r = redis_client(settings)
    with trio.move_on_after(10):  # committed purchases leave pending, batched, soon after
        while r.zcard(pending):
            await trio.sleep(0.05)
    assert r.zcard(pending) == 0, "a committed purchase is still in doubt in the gate"
    ledger, _ = await judge(settings, sale, as_records(results))
    assert ledger.sold == expected_sold


async def test_stampede_sells_exactly_the_stock(settings):
    """Stock 40, 300 users clicking 4 times each: exactly 40 users win, once, and all agree."""
    sale = await make_sale(settings.database_url, stock=40)
    users = [f"user-{i:04d}" for i in range(300)]
    with trio.fail_after(120):
        async with live_server(settings) as server:
            results = await stampede([server.client], users, clicks=4)
    assert len(results) == 1200
    await check_invariants(settings, sale, results, expected_sold=40)


async def test_demand_below_stock_sells_to_every_user_once(settings):
    """Stock 100, 60 users clicking 3 times: each user holds exactly one purchase."""
    sale = await make_sale(settings.database_url, stock=100)
    users = [f"buyer-{i:03d}" for i in range(60)]
    with trio.fail_after(120):
        async with live_server(settings) as server:
            results = await stampede([server.client], users, clicks=3)
    await check_invariants(settings, sale, results, expected_sold=60)


async def test_two_servers_one_with_two_workers_stay_exact(settings, tmp_path):
    """A 2-worker server and a second server, every user pressing 3-4 times: 201s = stock."""
    sale = await make_sale(settings.database_url, stock=30)
    results = await stampede_two_servers(settings, tmp_path, [f"both-{i:04d}" for i in range(200)])
    await check_invariants(settings, sale, results, expected_sold=30)


async def stampede_two_servers(settings, tmp_path, users: list[str]):
    """A 2-worker ``flashflow serve`` and a second one, both on ``settings``, every user
    pressing 3-4 times across both; both must then stop cleanly on SIGTERM. Returns the
    results."""
    servers = [await trio.to_thread.run_sync(
        lambda a=args: spawn_server(settings, tmp_path, *a))
        for args in (("--workers", "2"), ())]
    try:
        with trio.fail_after(120):
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(
                    httpx.AsyncClient(base_url=s.base_url, timeout=30)) for s in servers]
                results = await stampede(clients, users, clicks=(3, 4))
    finally:
        codes = [server.stop() for server in servers]
    assert codes == [0, 0], "a server did not shut down cleanly on SIGTERM"
    return results


async def test_two_overlapping_sales_stampeded_at_once_each_sell_exactly(settings):
    """Two sales open together, each stampeded at once (one through /current and its id, the
    other by id): each sells its stock, one 201 per user per sale, and each gate is reconciled."""
    settings = replace(settings, reconcile_interval_s=0.5)
    first = await make_sale(settings.database_url, stock=25, lasts=timedelta(minutes=30))
    second = await make_sale(settings.database_url, stock=35)
    users = [f"shopper-{i:04d}" for i in range(150)]  # the same crowd wants both
    runs: dict = {}
    with trio.fail_after(120):
        async with live_server(settings) as server:
            assert server.runtime.serializer.sale().id == first.id

            async def run(sale, paths) -> None:
                # Half the usual crowd each: together they fill the one server's backlog.
                runs[sale.id] = await stampede([server.client], users, clicks=(2, 3),
                                               concurrency=100, paths=paths)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, first, (CURRENT_PURCHASE, purchase_path(first.id)))
                nursery.start_soon(run, second, (purchase_path(second.id),))
            # Drift both counters; the reconciler of every sale with a gate heals them.
            r = redis_client(settings)
            for sale in (first, second):
                r.set(sale_keys(settings.key_prefix, sale.id).stock, 500)
            with trio.move_on_after(20):
                while any(int(r.get(sale_keys(settings.key_prefix, s.id).stock)) != 0
                          for s in (first, second)):
                    await trio.sleep(0.1)
    for sale in (first, second):
        await check_invariants(settings, sale, runs[sale.id], expected_sold=sale.total_stock)
