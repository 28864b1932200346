"""Many workers and many hosts: agreement rests on Redis and PostgreSQL, not process memory."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from ..helpers import make_sale
from ..integration.test_stampede import check_invariants, stampede
from .fleet import established, reconciler_returns, wait_until_serving, worker_pids
from .recorder import Recorder

pytestmark = pytest.mark.slow


async def test_two_workers_and_a_second_host_sell_exactly(fault_settings, launch, figures):
    """`serve --workers 2` plus another server on another port, spammed together, sell exactly."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=60)
    users = [f"multi-{i:04d}" for i in range(400)]
    multi = await launch(settings, "--workers", "2")
    host_b = await launch(settings)
    for server in (multi, host_b):
        await wait_until_serving(server.base_url)
    workers = worker_pids(multi)
    assert len(workers) == 2
    port = urlsplit(multi.base_url).port
    busiest = dict.fromkeys(workers, 0)

    async def sample_connections(task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            for pid in workers:
                busiest[pid] = max(busiest[pid],
                                   await trio.to_thread.run_sync(established, pid, port))
            await trio.sleep(0.05)

    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            limits = httpx.Limits(max_connections=100)
            clients = [await stack.enter_async_context(
                httpx.AsyncClient(base_url=s.base_url, timeout=30, limits=limits))
                for s in (multi, multi, host_b)]
            async with trio.open_nursery() as nursery:
                await nursery.start(sample_connections)
                results = await stampede(clients, users, clicks=3, concurrency=240)
                nursery.cancel_scope.cancel()

    recorder = Recorder()
    recorder.add("after", results)
    codes = [await trio.to_thread.run_sync(s.stop) for s in (multi, host_b)]
    figures.update(
        requests=len(results),
        statuses={str(k): v for k, v in sorted(Counter(st for _, st, _ in results).items())},
        winners=len(recorder.winners),
        total_stock=sale.total_stock,
        connections_per_worker_max=list(busiest.values()),
        reconciler_returned=reconciler_returns(multi, host_b),
        exit_codes=codes,
    )
    assert codes == [0, 0], "a server did not shut down cleanly on SIGTERM"
    assert all(count > 0 for count in busiest.values()), f"a worker took no connection: {busiest}"
    await check_invariants(settings, sale, results, expected_sold=60)
