"""Graceful shutdown: SIGTERM in the middle of a stampede."""

from __future__ import annotations

import signal
import socket
from dataclasses import replace
from functools import partial

import httpx
import psutil
import pytest
import trio

from flashflow.http.wire import CURRENT_EVENTS, CURRENT_PURCHASE

from ..helpers import gate_state, make_sale, sale_row_locked
from ..integration.test_stampede import stampede
from .checks import check_sale_after_faults, phase_figures
from .fleet import wait_until_serving, worker_pids
from .load import open_clients, recover, spam
from .recorder import NO_ANSWER, Recorder
from .stores import committed_rows, wait_for_gate_to_agree, wait_for_sold

pytestmark = pytest.mark.slow

STOCK = 300


async def test_sigterm_drains_in_flight_purchases(fault_settings, launch, figures):
    """SIGTERM mid-stampede: stops accepting, drains in-flight purchases, exits 0, 201s durable."""
    # A grace longer than the purchase wait, as the server asks: with the fault tests' short
    # grace, a reconciler may return a reservation whose commit is still queued behind the
    # row lock, and the server may exit before its next pass claims the committed row back.
    settings = replace(fault_settings, graceful_timeout_s=4.0,
                       reservation_grace_s=fault_settings.purchase_wait_s + 2)
    sale = await make_sale(settings.database_url, stock=STOCK)
    users = [f"gs-{i:04d}" for i in range(900)]
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    workers = worker_pids(server)
    assert len(workers) == 2
    recorder, late = Recorder(), Recorder(phase="draining")
    with trio.fail_after(120):
        async with open_clients(server, server) as clients:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(spam, recorder, clients, users, stop=stop,
                                           rate_per_s=200))
                await wait_for_sold(settings, sale, 50, timeout_s=20)
                # Commits wait on a row lock, so purchases are in flight when SIGTERM lands.
                async with sale_row_locked(settings.database_url, sale.id) as release:
                    await trio.sleep(0.5)
                    recorder.phase = "draining"
                    server.process.send_signal(signal.SIGTERM)
                    signalled_at = trio.current_time()
                    await trio.sleep(0.3)
                    _, held = gate_state(settings, sale)
                    rows = await committed_rows(settings, sale)
                    in_flight = {u: p for u, p in held.items() if rows.get(u) != p}
                    # A new connection after SIGTERM must never be served.
                    fresh = httpx.AsyncClient(base_url=server.base_url,
                                              timeout=settings.graceful_timeout_s + 15)
                    nursery.start_soon(late.press, fresh, "gs-late-comer")
                    await trio.sleep(0.7)
                    release()
                code = await trio.to_thread.run_sync(
                    partial(server.process.wait, settings.graceful_timeout_s + 10))
                drain_s = trio.current_time() - signalled_at
                stop.set()
            await fresh.aclose()

            # Nothing is left half done: Redis holds exactly the committed purchases, with no
            # server (and no reconciler) running.
            agreed_s = await wait_for_gate_to_agree(settings, sale, timeout_s=0.5)
            rows = await committed_rows(settings, sale)
            confirmed = {o.user: o.purchase_id for o in recorder.outcomes if o.status == 201}
            drained = {u for u, p in in_flight.items() if confirmed.get(u) == p == rows.get(u)}

            # A new server finishes the sale.
            successor = await launch(settings)
            clients = [*clients, httpx.AsyncClient(base_url=successor.base_url, timeout=15)]
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(spam, recorder, clients[-1:], users, stop=stop,
                                           rate_per_s=250))
                recovery_s = await recover(recorder)
                await wait_for_sold(settings, sale, STOCK, timeout_s=40)
                stop.set()
            recorder.add("after", await stampede(clients[-1:], users, clicks=1))
            await clients[-1].aclose()

    draining = recorder.in_phase("draining")
    figures.update(
        exit_code=code,
        seconds_from_sigterm_to_exit=round(drain_s, 2),
        graceful_timeout_s=settings.graceful_timeout_s,
        purchases_in_flight_at_sigterm=len(in_flight),
        in_flight_purchases_drained_with_201=len(drained),
        draining=phase_figures(recorder, "draining"),
        new_connection_after_sigterm=late.outcomes[0].status if late.outcomes else None,
        seconds_until_redis_agreed_after_exit=round(agreed_s, 2),
        recovering=phase_figures(recorder, "recovering"),
        seconds_to_recover_with_a_new_server=round(recovery_s, 2),
        after=phase_figures(recorder, "after"),
    )
    figures.update(await check_sale_after_faults(settings, sale, recorder, expected_sold=STOCK,
                                                 settle_s=1))
    assert code == 0
    # The deadline holds (idle keep-alive connections make the workers use all of it: see
    # test_sigterm_with_an_idle_keep_alive_connection_exits_promptly).
    assert drain_s <= settings.graceful_timeout_s + 2
    assert in_flight, "no purchase was in flight when SIGTERM landed"
    assert drained == set(in_flight), "an in-flight purchase was not drained with its 201"
    assert [o.status for o in late.outcomes] == [NO_ANSWER]
    assert all(o.status in (201, 409, 503, NO_ANSWER) for o in draining)


async def test_sigterm_with_an_idle_keep_alive_connection_exits_promptly(fault_settings, launch,
                                                                         figures):
    """SIGTERM with only an idle keep-alive connection open: exit 0 well before the deadline."""
    settings = replace(fault_settings, graceful_timeout_s=8.0)
    await make_sale(settings.database_url, stock=10)
    server = await launch(settings)
    with trio.fail_after(settings.graceful_timeout_s + 20):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            bought = await client.post(CURRENT_PURCHASE,
                                       json={"userId": "keeps-alive"})
            assert bought.status_code == 201
            server.process.send_signal(signal.SIGTERM)
            signalled_at = trio.current_time()
            code = await trio.to_thread.run_sync(
                partial(server.process.wait, settings.graceful_timeout_s + 10))
            exit_s = trio.current_time() - signalled_at
    figures.update(exit_code=code, seconds_from_sigterm_to_exit=round(exit_s, 2),
                   graceful_timeout_s=settings.graceful_timeout_s)
    assert code == 0
    assert exit_s < settings.graceful_timeout_s / 2, "an idle connection held the graceful timeout"


async def test_sigterm_with_open_event_streams_ends_them_and_exits_promptly(fault_settings,
                                                                           launch, figures):
    """SIGTERM with 20 open SSE streams: each stream ends, exit 0 in ~1 s, not the deadline."""
    settings = replace(fault_settings, graceful_timeout_s=8.0)
    await make_sale(settings.database_url, stock=10)
    server = await launch(settings)
    ended: list[float] = []

    async def watch(client: httpx.AsyncClient, started: trio.Event) -> None:
        async with client.stream("GET", CURRENT_EVENTS) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                if b"event: snapshot" in chunk:
                    started.set()
        ended.append(trio.current_time())

    with trio.fail_after(settings.graceful_timeout_s + 20):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=50)) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    started = trio.Event()
                    nursery.start_soon(watch, client, started)
                    await started.wait()
                server.process.send_signal(signal.SIGTERM)
                signalled_at = trio.current_time()
                code = await trio.to_thread.run_sync(
                    partial(server.process.wait, settings.graceful_timeout_s + 10))
                exit_s = trio.current_time() - signalled_at
    figures.update(exit_code=code, streams=20, streams_ended=len(ended),
                   seconds_from_sigterm_to_exit=round(exit_s, 2),
                   graceful_timeout_s=settings.graceful_timeout_s)
    assert code == 0
    assert len(ended) == 20
    assert exit_s < settings.graceful_timeout_s / 2, "streams held the graceful timeout"


@pytest.mark.parametrize("after_s", [0.3, 0.8, 1.5, 3.0])
async def test_sigterm_during_start_up_of_two_workers_always_ends(fault_settings, tmp_path,
                                                                  after_s, figures):
    """`serve --workers 2` signalled while starting: it and its workers exit, the port frees."""
    import subprocess
    import sys

    from flashflow.embedded import free_port

    from ..helpers import server_env

    port = free_port()
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flashflow.cli", "serve", "--workers", "2", "--port",
             str(port)], env=server_env(fault_settings),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await trio.sleep(after_s)
        children = [c.pid for c in psutil.Process(process.pid).children()]
        process.send_signal(signal.SIGTERM)
        signalled_at = trio.current_time()
        code = await trio.to_thread.run_sync(
            partial(process.wait, fault_settings.graceful_timeout_s + 15))
        exit_s = trio.current_time() - signalled_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    left = still_running(children)
    figures.update(after_s=after_s, exit_code=code, seconds_from_sigterm_to_exit=round(exit_s, 2))
    # Signalled before Python could install its handlers, the supervisor simply dies of
    # the signal; once it has workers, it must stop them and exit cleanly.
    assert code == 0 or (code == -signal.SIGTERM and not children), log_path.read_text()[-2000:]
    assert left == []
    with socket_on(port) as sock:  # the port is free again
        assert sock is not None


async def test_a_second_sigterm_while_draining_kills_the_workers_at_once(fault_settings, launch,
                                                                         figures):
    """SIGTERM while a purchase is held in flight, then SIGTERM again: the supervisor kills its
    workers and exits 1 at once instead of waiting for the drain; nothing is left running and
    the port is free."""
    # The held commit could drain for 20 s: only the second signal ends the stop sooner.
    settings = replace(fault_settings, postgres_timeout_s=20.0, purchase_wait_s=25.0,
                       graceful_timeout_s=30.0)
    sale = await make_sale(settings.database_url, stock=10)
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    workers = worker_pids(server)
    assert len(workers) == 2
    port = int(server.base_url.rsplit(":", 1)[1])
    answers: list[object] = []

    async def press(client: httpx.AsyncClient) -> None:
        try:
            answers.append((await client.post(CURRENT_PURCHASE,
                                              json={"userId": "held-buyer"})).status_code)
        except httpx.HTTPError as exc:  # its worker was killed under it
            answers.append(type(exc).__name__)

    with trio.fail_after(60):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=40) as client:
            async with sale_row_locked(settings.database_url, sale.id):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(press, client)
                    while "held-buyer" not in gate_state(settings, sale)[1]:
                        await trio.sleep(0.05)
                    server.process.send_signal(signal.SIGTERM)
                    await trio.sleep(1.0)
                    draining = server.process.poll() is None
                    server.process.send_signal(signal.SIGTERM)
                    signalled_at = trio.current_time()
                    code = await trio.to_thread.run_sync(partial(server.process.wait, 20))
                    exit_s = trio.current_time() - signalled_at
    left = still_running(workers)
    figures.update(exit_code=code, seconds_from_second_sigterm_to_exit=round(exit_s, 2),
                   held_purchase_answer=answers)
    assert draining, "the stop did not wait for the held purchase"
    assert code == 1
    assert exit_s < settings.graceful_timeout_s / 4, "the second signal did not cut the drain"
    assert left == []
    assert answers and answers[0] != 201, "a purchase held by the lock cannot have committed"
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def still_running(pids: list[int]) -> list[int]:
    """Those of ``pids`` whose process has not ended (a zombie has)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def socket_on(port: int):
    """A socket bound to 127.0.0.1:``port`` (raises if something still holds it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock
