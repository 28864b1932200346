"""PostgreSQL stopped in the middle of a sale, then started again with its data."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import trio

from ..helpers import gate_state, make_sale, sale_row_locked
from .checks import check_exact_end, phase_figures
from .fleet import lines_in_logs, wait_until_serving
from .load import fault_under_load, open_clients, recover_and_sell_out, spam
from .recorder import Recorder
from .stores import committed_rows, sold_counter, wait_for_gate_to_agree

pytestmark = pytest.mark.slow

STOCK = 400


async def test_postgres_stopped_mid_sale(backends, fault_settings, launch, figures):
    """PostgreSQL stopped mid-sale: 503s, no 201 without a row, stock given back, exact end."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=STOCK)
    users = [f"pg-{i:04d}" for i in range(1000)]
    # Supervised workers: had one died with PostgreSQL it would be started again; the
    # figures count worker deaths (expected: none).
    servers = [await launch(settings, "--workers", "2")]
    recorder = Recorder()
    with trio.fail_after(120):
        async with open_clients(*servers) as clients:
            stopped_at = await fault_under_load(recorder, clients, users, settings, sale,
                                                backends.stop_postgres)
            down_s = trio.current_time() - stopped_at

            # Every attempt of the outage has its answer; what does Redis still hold?
            stock_down, held_down = gate_state(settings, sale)
            restart_s = await trio.to_thread.run_sync(backends.start_postgres)
            ready_s = max([await wait_until_serving(s.base_url) for s in servers])
            rows = await committed_rows(settings, sale)
            held_without_row = sum(1 for u, p in held_down.items() if rows.get(u) != p)
            # No 201 without a committed row, already now.
            told = {o.user: o.purchase_id for o in recorder.outcomes if o.status == 201}
            assert all(rows.get(u) == p for u, p in told.items()), "a 201 without a row"
            # Reservations that could not be written are back on sale (rollback or reconciler).
            returned_s = await wait_for_gate_to_agree(
                settings, sale, settings.reservation_grace_s + settings.reconcile_interval_s + 3)

            recovery_s, sell_out_s = await recover_and_sell_out(recorder, clients, users,
                                                                settings, sale, STOCK)

    figures.update(
        fault=phase_figures(recorder, "fault"),
        seconds_postgres_down=round(down_s, 2),
        seconds_to_restart_postgres=round(restart_s, 2),
        seconds_until_ready=round(ready_s, 2),
        committed_when_back=len(rows),
        redis_stock_at_end_of_outage=stock_down,
        redis_reservations_without_row_at_end_of_outage=held_without_row,
        seconds_until_redis_agreed_with_ledger=round(returned_s, 2),
        ledger_failed_batches=lines_in_logs("ledger batch of", *servers),
    )
    await check_exact_end(figures, settings, sale, recorder, servers,
                          recovery=(recovery_s, sell_out_s))
    figures["workers_died"] = lines_in_logs("exited with", *servers)
    assert figures["fault"]["503"] > 0, "no purchase was refused while PostgreSQL was down"


async def test_server_survives_postgres_stopping_under_a_commit(backends, fault_settings, launch,
                                                                figures):
    """PostgreSQL stopped while a commit is in flight: 503, the server stays up and recovers."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=10)
    server = await launch(settings)
    recorder = Recorder()
    with trio.fail_after(60):
        async with open_clients(server) as (client,):
            async with (sale_row_locked(settings.database_url, sale.id),
                        trio.open_nursery() as nursery):
                nursery.start_soon(recorder.press, client, "mid-commit")
                while "mid-commit" not in gate_state(settings, sale)[1]:
                    await trio.sleep(0.02)
                await trio.sleep(0.2)  # the ledger's INSERT now waits on the row lock
                recorder.phase = "fault"
                await trio.to_thread.run_sync(backends.stop_postgres)
            await trio.sleep(0.5)
            alive_while_down = server.process.poll() is None
            await trio.to_thread.run_sync(backends.start_postgres)
            alive_after = server.process.poll() is None
            if alive_after:
                await wait_until_serving(server.base_url, timeout_s=15)
                recorder.phase = "after"
                await recorder.press(client, "after-restart")
    figures.update(in_flight_answer=recorder.outcomes[0].status,
                   server_alive_while_postgres_down=alive_while_down,
                   server_alive_after_restart=alive_after,
                   server_exit_code=server.process.returncode)
    assert alive_while_down and alive_after, "the server died with PostgreSQL"
    assert recorder.outcomes[0].status == 503
    assert recorder.outcomes[-1].status == 201


async def test_server_survives_postgres_restarts_under_load(backends, fault_settings, launch,
                                                            figures):
    """A lone server (no supervisor) outlives repeated PostgreSQL restarts under load."""
    # Commits cut off by a stop are decided by asking PostgreSQL, which is down until the
    # cycle ends: a short wait keeps each cycle short. This test is about surviving.
    settings = replace(fault_settings, purchase_wait_s=1.0)
    sale = await make_sale(settings.database_url, stock=1_000_000)
    server = await launch(settings)
    recorder = Recorder()
    cycles = 0
    with trio.fail_after(90):
        async with open_clients(server) as clients:
            users = [f"rs-{i:05d}" for i in range(20_000)]
            while cycles < 25:
                cycles += 1
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(spam, recorder, clients, users, stop=stop,
                                               rate_per_s=500, concurrency=128,
                                               repeat_share=0.0))
                    await trio.sleep(0.3)
                    await trio.to_thread.run_sync(backends.stop_postgres)
                    await trio.sleep(0.3)
                    stop.set()
                await trio.to_thread.run_sync(backends.start_postgres)
                if server.process.poll() is not None:
                    break
                await wait_until_serving(server.base_url, timeout_s=15)
    figures.update(postgres_restarts=cycles, server_exit_code=server.process.poll(),
                   sold=await sold_counter(settings, sale),
                   ledger_crash_in_log=lines_in_logs("InternalClientError", server))
    assert server.process.poll() is None, f"the server exited after {cycles} restarts"
