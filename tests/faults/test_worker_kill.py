"""A worker SIGKILLed with purchases between the gate and the ledger."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from dataclasses import replace
from functools import partial
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import gate_state, make_sale, sale_row_locked
from .checks import check_exact_end, phase_figures
from .fleet import established, wait_for_workers, wait_until_serving, worker_pids
from .load import open_clients, recover_and_sell_out, spam
from .recorder import Recorder
from .stores import committed_rows, wait_for_gate_to_agree, wait_for_sold

pytestmark = pytest.mark.slow

STOCK = 300


async def test_worker_killed_mid_batch_reservations_come_back(fault_settings, launch, figures):
    """A worker SIGKILLed mid-batch: its orphaned reservations return after the grace, exact end."""
    settings = replace(fault_settings, reservation_grace_s=3.0)
    sale = await make_sale(settings.database_url, stock=STOCK)
    users = [f"wk-{i:04d}" for i in range(900)]
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    await wait_for_workers(server, 2, set(), timeout_s=20)
    port = urlsplit(server.base_url).port
    recorder = Recorder()
    with trio.fail_after(120):
        async with open_clients(server, server, server) as clients:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(spam, recorder, clients, users, stop=stop,
                                           rate_per_s=200))
                await wait_for_sold(settings, sale, 60, timeout_s=20)
                # Commits wait on a row lock: reservations pile up between gate and ledger.
                async with sale_row_locked(settings.database_url, sale.id) as release:
                    await trio.sleep(1.0)
                    workers = worker_pids(server)
                    load = {pid: await trio.to_thread.run_sync(established, pid, port)
                            for pid in workers}
                    victim = max(load, key=load.get)
                    recorder.phase = "fault"
                    os.kill(victim, signal.SIGKILL)
                    killed_at = trio.current_time()
                    await trio.sleep(0.3)
                    # Nothing commits while the lock is held: every holder without a row is
                    # in flight, in the survivor (it will commit) or in the victim (never).
                    _, held_at_kill = gate_state(settings, sale)
                    rows = await committed_rows(settings, sale)
                    in_flight = {u: p for u, p in held_at_kill.items() if rows.get(u) != p}
                    release()
                await wait_for_workers(server, 2, {victim}, timeout_s=20)
                replaced_s = trio.current_time() - killed_at
                stop.set()

            await wait_for_gate_to_agree(
                settings, sale, settings.reservation_grace_s + settings.reconcile_interval_s + 3)
            since_kill_s = trio.current_time() - killed_at
            rows = await committed_rows(settings, sale)
            orphaned = {u for u, p in in_flight.items() if rows.get(u) != p}
            assert orphaned, "the killed worker had no reservation in flight"

            recovery_s, sell_out_s = await recover_and_sell_out(recorder, clients, users,
                                                                settings, sale, STOCK)

    figures.update(
        connections_per_worker_at_kill=list(load.values()),
        reservations_in_flight_at_kill=len(in_flight),
        fault=phase_figures(recorder, "fault"),
        orphaned_reservations=len(orphaned),
        seconds_from_kill_to_all_returned=round(since_kill_s, 2),
        seconds_from_kill_to_worker_replaced=round(replaced_s, 2),
    )
    await check_exact_end(figures, settings, sale, recorder, [server],
                          recovery=(recovery_s, sell_out_s))
    # Exactly the victim's reservations came back: none twice, none that was alive.
    assert figures["reconciler_returned"] == len(orphaned)


async def test_user_whose_orphaned_reservation_came_back_can_buy(fault_settings, launch,
                                                                  figures):
    """A user whose purchase died with a worker can buy once the reconciler returned it."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=10)
    doomed, other = await launch(settings), await launch(settings)
    with trio.fail_after(60):
        async with open_clients(doomed, other) as (to_doomed, to_other):
            async with sale_row_locked(settings.database_url, sale.id):
                async def doomed_purchase() -> None:
                    with suppress(httpx.TransportError):  # its server dies under it
                        await to_doomed.post(CURRENT_PURCHASE, json={"userId": "ursula"})

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(doomed_purchase)
                    while "ursula" not in gate_state(settings, sale)[1]:
                        await trio.sleep(0.02)
                    os.kill(doomed.process.pid, signal.SIGKILL)
            # Her press waits while the orphaned hold is in doubt: it buys once the reconciler
            # returns the unit, or is told 503 if its wait runs out first; never 409.
            first = await to_other.post(CURRENT_PURCHASE, json={"userId": "ursula"})
            await wait_for_gate_to_agree(
                settings, sale, settings.reservation_grace_s + settings.reconcile_interval_s + 3)
            again = await to_other.post(CURRENT_PURCHASE, json={"userId": "ursula"})
            read = await to_other.get(CURRENT_PURCHASE, params={"userId": "ursula"})
            status = read.json()["data"]
    figures.update(while_orphaned=first.json(), purchase_status=status, after_return=again.json())
    assert first.status_code in (201, 503), first.json()
    assert [first.status_code, again.status_code].count(201) == 1, (first.json(), again.json())
    if first.status_code == 201:
        assert again.json()["error"]["code"] == "ALREADY_PURCHASED"
    bought = first if first.status_code == 201 else again
    assert status["purchased"] is True
    assert status["purchaseId"] == bought.json()["data"]["purchaseId"]
