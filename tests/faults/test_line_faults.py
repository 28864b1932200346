"""A waiting room's line through a fault: a worker killed, the server restarted, PostgreSQL
stalled, each while the line admits.

400 tickets are taken before the opening and a few more during the fault; their clients poll
them or follow their streams, and one in four buys with the admission token when admitted.
After the fault the line goes on until the sale sells out and closes. Then every ticket must
still hold the position it was told, the early ones in the seed's order, each admitted once,
in order, and :func:`flashflow.invariants_line.verify_line` must hold on what PostgreSQL holds
and what the clients were told.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from actors import WaitingRoom, ledger_sql
from flashflow.http.wire import queue_path
from flashflow.invariants_line import (
    CLOCK_SLACK_S,
    LineLedger,
    line_snapshot,
    shuffled,
    verify_line,
)

from ..helpers import fetch, make_sale, pg
from .fleet import established, wait_for_workers, wait_until_serving, worker_pids
from .line_crowd import Crowd, positions_of

pytestmark = pytest.mark.slow

STOCK = 50
EARLY = 400
LATE = 30
#: 40 a second: the early tickets take 10 s to admit; the sale sells out about halfway.
ROOM = WaitingRoom(opens_before_s=3600, admit_per_s=40.0, window_s=60)
#: The fault comes this long after the opening: about 60 admitted, most of the line waiting.
FAULT_AFTER = timedelta(seconds=1.5)
#: The sale opens this long after the early tickets are taken: time for every worker's
#: catalog to learn its new start.
OPENS_AFTER_JOINS = timedelta(seconds=3)

Fault = Callable[[Crowd, Callable[[], None]], Awaitable[dict[str, Any]]]


def line_settings(settings):
    """The fault settings with a stream told where the line stands every second."""
    return replace(settings, line_update_s=1.0)


async def run_line(settings, server, fault: Fault, figures: dict) -> tuple[Crowd, LineLedger]:
    """The crowd takes its tickets, the line opens, ``fault`` strikes :data:`FAULT_AFTER` the
    opening (it calls its second argument to send the late joiners), and the line runs until
    it closes; return the crowd and the line as PostgreSQL holds it."""
    sale = await make_sale(settings.database_url, stock=STOCK, waiting_room=ROOM,
                           starts_in=timedelta(minutes=10))
    limits = httpx.Limits(max_connections=800, max_keepalive_connections=800)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15, limits=limits) as client:
        crowd = Crowd(client, sale)
        with trio.fail_after(80):
            while (await client.get(queue_path(sale.id))).status_code != 200:
                await trio.sleep(0.1)
            await trio.sleep(1.0)  # every worker's catalog has the sale
            users = [f"lf-{i:04d}" for i in range(EARLY + LATE)]
            limit = trio.CapacityLimiter(50)

            async def take(user: str) -> None:
                async with limit:
                    await crowd.join(user)

            async with trio.open_nursery() as joining:
                for user in users[:EARLY]:
                    joining.start_soon(take, user)
            joined_s = trio.current_time() - crowd.began
            # However long the joins took on a busy machine, the line opens after them.
            crowd.sale = await pg(settings.database_url, partial(
                ledger_sql.update_sale, start_time=datetime.now(UTC) + OPENS_AFTER_JOINS),
                sale.id)
            async with trio.open_nursery() as watching:
                await watching.start(crowd.watch)
                async with trio.open_nursery() as waiting:
                    for index, ticket in enumerate(list(crowd.tickets)):
                        waiting.start_soon(crowd.wait_in_line, ticket, index)

                    async def late_one(index: int) -> None:
                        await trio.sleep(index * 0.1)
                        ticket = await crowd.join(users[EARLY + index])
                        if ticket is not None:
                            await crowd.wait_in_line(ticket, index)

                    def send_late() -> None:
                        for index in range(LATE):
                            waiting.start_soon(late_one, index)

                    await trio.sleep(max(0.0, (crowd.sale.start_time + FAULT_AFTER
                                               - datetime.now(UTC)).total_seconds()))
                    rows = await pg(settings.database_url, fetch,
                                    "SELECT admitted FROM lines WHERE sale_id = $1", sale.id)
                    figures["admitted_at_fault"] = rows[0]["admitted"]
                    figures.update(await fault(crowd, send_late))
                watching.cancel_scope.cancel()
            await crowd.read_again()
    ledger = await trio.to_thread.run_sync(line_snapshot, settings.database_url, sale.id)
    figures.update(
        seconds_to_join=round(joined_s, 2), seconds_in_all=round(trio.current_time()
                                                                 - crowd.began, 1),
        statuses={str(k): v for k, v in sorted(crowd.statuses.items())},
        line_reads=len(crowd.watched), admitted=ledger.admitted, line_length=ledger.length,
        bought=len(ledger.bought), closed=ledger.closed,
        admissions_told=len(crowd.line_told().admissions),
        late_joined=sum(not t.early for t in ledger.tickets), late_refused=len(crowd.late_refused))
    return crowd, ledger


def check_line(crowd: Crowd, ledger: LineLedger) -> None:
    """Every ticket kept the one position it was told, the line's rules hold, and the
    buyers are exactly the admitted users told they bought, the stock sold to the unit."""
    checks = [*verify_line(ledger, crowd.line_told()), shuffled(ledger)]
    broken = [f"{c.name}: {c.detail}" for c in checks if not c.held]
    assert not broken, "\n".join(broken)
    assert not crowd.false, crowd.false[:5]
    assert not crowd.went_back, f"admittedUpTo went back for {crowd.went_back[:5]}"
    assert len(crowd.watched) >= 2, "the line was never read twice"
    held = positions_of(ledger)
    assert set(held) == set(crowd.tickets), "tickets lost or unknown"
    assert sorted(p or 0 for p in held.values()) == list(range(1, len(held) + 1))
    told_other = [t for t, p in held.items() if crowd.positions[t] != {p}]
    assert not told_other, [(t, crowd.positions[t], held[t]) for t in told_other[:5]]
    assert sum(t.early for t in ledger.tickets) == EARLY
    assert set(ledger.bought) == crowd.bought
    # A join refused SOLD_OUT was refused once the line had closed, not before.
    assert ledger.closed_at is not None
    assert all(at > ledger.closed_at - CLOCK_SLACK_S for at in crowd.late_refused)
    assert len(ledger.bought) == STOCK and ledger.closed == "sold_out"


def check_mid_line(figures: dict, ledger: LineLedger) -> None:
    """The fault came while the line admitted: some admitted, most of it still waiting."""
    assert 0 < figures["admitted_at_fault"] < EARLY // 2 < ledger.admitted, figures


async def test_a_worker_killed_mid_line_loses_no_ticket(fault_settings, launch, figures):
    """A worker SIGKILLed while the line admits: no ticket lost or moved, none admitted
    twice or out of order, the line goes on and sells out to the admitted buyers only."""
    settings = line_settings(fault_settings)
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    await wait_for_workers(server, 2, set(), timeout_s=20)
    port = urlsplit(server.base_url).port

    async def kill(crowd: Crowd, send_late: Callable[[], None]) -> dict[str, Any]:
        load = {pid: await trio.to_thread.run_sync(established, pid, port)
                for pid in worker_pids(server)}
        victim = max(load, key=load.__getitem__)
        os.kill(victim, signal.SIGKILL)
        send_late()
        replaced_s = await wait_for_workers(server, 2, {victim}, timeout_s=20)
        return {"connections_per_worker_at_kill": list(load.values()),
                "seconds_to_worker_replaced": round(replaced_s, 2)}

    crowd, ledger = await run_line(settings, server, kill, figures)
    check_line(crowd, ledger)
    check_mid_line(figures, ledger)


async def test_a_server_restarted_mid_line_keeps_the_order(fault_settings, launch, figures):
    """The whole server stopped and started again on its port while the line admits: every
    position and admission read before is the same after, admission goes on from where it
    stood (never back, no position twice), and the line's rules hold."""
    settings = line_settings(fault_settings)
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    port = urlsplit(server.base_url).port
    seen: dict[str, Any] = {}

    async def restart(crowd: Crowd, send_late: Callable[[], None]) -> dict[str, Any]:
        seen["before"] = await crowd.audit()
        stopped = trio.current_time()
        send_late()  # they join through the restart, asking again until it answers
        code = await trio.to_thread.run_sync(server.stop)
        restarted = await launch(settings, "--workers", "2", port=port)
        back_s = trio.current_time() - stopped
        seen["after"] = await crowd.audit()
        return {"exit_code": code, "seconds_down": round(back_s, 2),
                "restarted_log": restarted.log_path.name}

    crowd, ledger = await run_line(settings, server, restart, figures)
    before, after = seen["before"], seen["after"]
    moved = {t: (was, after.get(t)) for t, was in before.items()
             if was[0] is not None and (after.get(t, (None,))[0] != was[0]
                                        or (was[1] is not None and after[t][1] != was[1]))}
    assert not moved, list(moved.items())[:5]
    assert sum(1 for _, at in before.values() if at is not None) >= figures["admitted_at_fault"]
    check_line(crowd, ledger)
    check_mid_line(figures, ledger)


async def test_postgres_stall_mid_line(backends, fault_settings, launch, figures):
    """PostgreSQL stalled past its timeout while the line admits and late buyers join: every
    answer is a true one or a 503 with Retry-After, the line resumes, and its rules hold."""
    settings = line_settings(fault_settings)
    server = await launch(settings, "--workers", "2")
    await wait_until_serving(server.base_url)
    stall_s = 2 * settings.postgres_timeout_s

    async def stall(crowd: Crowd, send_late: Callable[[], None]) -> dict[str, Any]:
        async with backends.postgres_paused():
            send_late()
            await trio.sleep(stall_s)
        return {"seconds_stalled": stall_s, "unavailable_during_stall": crowd.statuses[503]}

    crowd, ledger = await run_line(settings, server, stall, figures)
    check_line(crowd, ledger)
    check_mid_line(figures, ledger)
    late = [t for t in ledger.tickets if not t.early]
    assert len(late) == LATE - len(crowd.late_refused)
