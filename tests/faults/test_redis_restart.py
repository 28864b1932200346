"""Redis killed and restarted empty in the middle of a sale."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import trio

from flashflow.http.replies import read_reply
from flashflow.http.wire import CURRENT, CURRENT_PURCHASE

from ..helpers import gate_of, gate_state, ledger_of, make_sale
from .checks import check_exact_end, latency_figures, phase_figures, redis_fault_bound_s
from .fleet import wait_until_serving
from .load import asking, fault_under_load, open_clients, recover_and_sell_out
from .recorder import Recorder

pytestmark = pytest.mark.slow

STOCK = 400


async def refresh_gate_connections(client: httpx.AsyncClient, refused: Counter) -> None:
    """Read the sale 64 at a time (the gate's pool size) until no read is refused.

    Works around the stale pooled connections of test_no_503_once_redis_is_back_and_ready:
    each stale connection fails one call, then reconnects. The refusals are counted.
    """
    for _ in range(10):
        statuses: Counter = Counter()

        async def read(statuses: Counter) -> None:
            statuses[(await client.get(CURRENT)).status_code] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(read, statuses)
        refused.update({k: v for k, v in statuses.items() if k != 200})
        if set(statuses) == {200}:
            return
    raise AssertionError(f"reads still refused after Redis came back: {refused}")


async def remaining_stock(client: httpx.AsyncClient, refused: Counter) -> int:
    """``remainingStock`` from GET /current, asking again (and counting) while it is 503."""
    for _ in range(50):
        response = await client.get(CURRENT)
        if response.status_code != 503:
            return read_reply(response.status_code, response.json()).remaining_stock
        refused[response.status_code] += 1
        await trio.sleep(0.05)
    raise AssertionError("GET /current still answers 503 after Redis is back")


@pytest.mark.parametrize("most", [1, 4], ids=["one-unit", "quantities"])
async def test_redis_killed_and_restarted_empty_mid_sale(backends, fault_settings, launch,
                                                         figures, most):
    """Redis SIGKILLed mid-sale: fast 503s while down, gate rebuilt from the ledger, exact
    end; with buyers of one unit each, and of 1 to 4 units (limit 4), rebuilt to the units
    the rows take."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=STOCK, per_user_limit=most)
    users = [f"rk-{i:04d}" for i in range(1000)]
    servers = [await launch(settings), await launch(settings)]
    recorder = Recorder(quantities=asking(users, most))
    with trio.fail_after(100):
        async with open_clients(*servers) as clients:
            # Before and during the fault: steady traffic, Redis killed under it.
            killed_at = await fault_under_load(recorder, clients, users, settings, sale,
                                               backends.kill_redis,
                                               hold_s=redis_fault_bound_s(settings) + 0.5)
            down_s = trio.current_time() - killed_at

            # Back, empty: the first reader rebuilds the gate from the ledger.
            restart_s = await trio.to_thread.run_sync(backends.start_redis_empty)
            assert gate_state(settings, sale) == (None, {}), "the new Redis is not empty"
            ready_s = max([await wait_until_serving(s.base_url) for s in servers])
            refused_reads: Counter = Counter()
            remaining = [await remaining_stock(c, refused_reads) for c in clients]
            ledger = await ledger_of(settings, sale.id)
            rows = ledger.purchases
            gate = gate_of(settings, sale.id)
            assert remaining == [STOCK - ledger.units] * len(servers)
            assert gate.stock == STOCK - ledger.units
            assert gate.buyers == rows, \
                "the rebuilt gate does not hold exactly the committed buyers"
            assert {u: gate.units_of(u) for u in rows} == {u: ledger.units_of(u) for u in rows}
            committed_at_rebuild = len(rows)
            for client in clients:
                await refresh_gate_connections(client, refused_reads)

            # After: the sale continues to the last unit, then everyone is told.
            recovery_s, sell_out_s = await recover_and_sell_out(recorder, clients, users,
                                                                settings, sale, STOCK)

    fault = recorder.in_phase("fault")
    figures.update(
        fault=phase_figures(recorder, "fault"),
        seconds_redis_down=round(down_s, 2),
        seconds_to_restart_redis=round(restart_s, 2),
        seconds_until_ready=round(ready_s, 2),
        committed_when_gate_rebuilt=committed_at_rebuild,
        units_when_gate_rebuilt=STOCK - remaining[0],
        remaining_after_rebuild=remaining[0],
        reads_refused_after_redis_back_stale_connections=sum(refused_reads.values()),
    )
    await check_exact_end(figures, settings, sale, recorder, servers,
                          recovery=(recovery_s, sell_out_s))
    failed = [o for o in fault if o.status == 503]
    assert failed, "no purchase was refused while Redis was down"
    # Fail fast: a refused connection is answered at once, a lost one within the timeout,
    # so most refusals take less than one timeout; none waits for Redis to come back.
    latencies = sorted(o.seconds for o in failed)
    assert latencies[len(latencies) // 2] <= settings.redis_timeout_s + 0.5, \
        latency_figures(failed)
    assert redis_fault_bound_s(settings) < down_s
    assert latencies[-1] <= redis_fault_bound_s(settings), latency_figures(failed)


async def test_no_503_once_redis_is_back_and_ready(backends, fault_settings, launch, figures):
    """Once Redis is back and /readyz is green, concurrent requests get no 503."""
    settings = fault_settings
    await make_sale(settings.database_url, stock=1000)
    server = await launch(settings)
    with trio.fail_after(60):
        async with open_clients(server) as (client,):
            async def burst(n: int, path: str, counts: Counter, body: dict | None = None) -> None:
                async def one(i: int) -> None:
                    if body is None:
                        response = await client.get(path)
                    else:
                        response = await client.post(path, json={"userId": f"{body['p']}-{i}"})
                    counts[response.status_code] += 1

                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(one, i)

            reads, buys = Counter(), Counter()
            for restart in range(3):
                # Concurrent reads grow the gate's connection pool to many connections.
                await burst(60, CURRENT, Counter())
                await trio.to_thread.run_sync(backends.kill_redis)
                await trio.to_thread.run_sync(backends.start_redis_empty)
                await wait_until_serving(server.base_url)
                await burst(60, CURRENT, reads)
                await burst(60, CURRENT_PURCHASE, buys, {"p": f"back{restart}"})
    figures.update(redis_restarts=3, reads_after_ready={str(k): v for k, v in reads.items()},
                   purchases_after_ready={str(k): v for k, v in buys.items()})
    assert reads[503] == 0 and buys[503] == 0, (reads, buys)
