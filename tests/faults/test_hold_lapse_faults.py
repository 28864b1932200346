"""Holds that reach their end while the process that would lapse them dies and PostgreSQL
stalls, and endings whose process died before telling the gate.

A sale of ``HOLDERS`` units, each held, with ``WAITERS`` in line behind them: the holds end
inside a stall of PostgreSQL (the sale's row locked, or the server SIGSTOPped) that lasts
past ``postgres_timeout_s``, and a worker that was about to lapse them is SIGKILLed. Each
hold still lapses exactly once, late by no more than the stall and ``LATE_PAST_STALL_S``,
and its unit goes to the first in line, once; the gate ends as the ledger's truth.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import httpx
import psutil
import pytest
import trio

from flashflow.http.metrics import SYNC_INTERVAL_S
from flashflow.http.wire import purchase_path

from ..helpers import ServerProcess, fetch, make_sale, pg, sale_row_locked
from .fleet import wait_until_serving, worker_pids
from .holds import hold_rule_breaks, holds_ledger, metric, with_payments
from .load import open_clients
from .stores import wait_for_gate_to_agree

pytestmark = pytest.mark.slow

HOLDERS = 10
WAITERS = 15
HOLD_S = 3
#: The window of the holds the line is handed.
OFFERED_HOLD_S = 60
SWEEP_S = 0.25
#: How long past the last hold's end PostgreSQL stays stalled: past ``postgres_timeout_s``,
#: so the sweeps that were waiting give up and start again.
STALL_PAST_END_S = 5.0
#: How late past the stall's end a lapse may commit: the sweep that finds it (every
#: ``SWEEP_S``) and a second of slack for a busy 2-core machine.
LATE_PAST_STALL_S = SWEEP_S + 1.0


async def hold_and_line_up(client: httpx.AsyncClient, sale, tag: str, holders: int = HOLDERS,
                           waiters: int = WAITERS) -> tuple[dict[uuid.UUID, datetime], list[str]]:
    """``holders`` users hold a unit each, then ``waiters`` take places one after another.

    Returns:
        The holds (purchase id -> expiresAt, as PostgreSQL set it), and the waiting users in
        the order of their places.
    """
    holds: dict[uuid.UUID, datetime] = {}
    for i in range(holders):
        response = await client.post(purchase_path(sale.id), json={"userId": f"{tag}-h{i:02d}"})
        assert response.status_code == 201, response.text
        holds[uuid.UUID(response.json()["data"]["purchaseId"])] = datetime.fromisoformat(
            response.json()["data"]["expiresAt"])
    line = []
    for i in range(waiters):
        user = f"{tag}-w{i:02d}"
        response = await client.post(purchase_path(sale.id), json={"userId": user})
        assert response.status_code == 202, response.text
        assert response.json()["data"]["position"] == i + 1, response.text
        line.append(user)
    return holds, line


def process_with_port(servers: list[ServerProcess], port: int) -> int | None:
    """The server process or worker whose TCP connection has local ``port``."""
    for server in servers:
        for pid in [server.process.pid, *worker_pids(server)]:
            try:
                if any(c.laddr and c.laddr.port == port
                       for c in psutil.Process(pid).net_connections("tcp")):
                    return pid
            except psutil.NoSuchProcess:
                continue
    return None


async def first_in_line_for_the_sale(settings, sale) -> int | None:
    """The client port of the session first in line for the sale's row lock: it holds the
    row's tuple lock while it waits for the holder's transaction (those behind it wait for
    the tuple lock itself)."""
    rows = await pg(settings.database_url, fetch,
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.locktype = 'tuple' AND l.granted "
                    "AND l.relation = 'flash_sales'::regclass AND a.query LIKE '%FOR UPDATE%'")
    return rows[0]["client_port"] if rows else None


def who(servers: list[ServerProcess], pid: int) -> str:
    """Which process of ``servers`` ``pid`` is, in words."""
    for i, server in enumerate(servers):
        if pid == server.process.pid:
            return f"server {i}"
        if pid in worker_pids(server):
            return f"a worker of server {i}"
    return "unknown"


async def kill_first_in_line(settings, sale, servers: list[ServerProcess]) -> str:
    """SIGKILL the process whose sweep is first in line to lapse the sale's holds."""
    while True:
        port = await first_in_line_for_the_sale(settings, sale)
        pid = port and await trio.to_thread.run_sync(process_with_port, servers, port)
        if pid:
            victim = who(servers, pid)
            os.kill(pid, signal.SIGKILL)
            return victim
        await trio.sleep(0.02)


async def kill_a_worker(settings, sale, servers: list[ServerProcess]) -> str:
    """SIGKILL a worker of the first server: PostgreSQL is SIGSTOPped, so each process's
    sweep is waiting on it, this one's too."""
    [pid, *_] = worker_pids(servers[0])
    os.kill(pid, signal.SIGKILL)
    return who(servers, pid)


async def lapse_through(settings, launch, figures: dict[str, Any],
                        stall: Callable[[Any, Any], AbstractAsyncContextManager[Any]],
                        kill: Callable[..., Any]) -> None:
    """Hold, line up, stall PostgreSQL from before the first hold's end until
    ``STALL_PAST_END_S`` after the last, kill (``kill``) a process meanwhile, then check
    that every hold lapsed once and on time and its unit went to the first in line."""
    sale = await make_sale(settings.database_url, stock=HOLDERS, hold_seconds=HOLD_S)
    servers = [await launch(settings, "--workers", "2"), await launch(settings)]
    for server in servers:
        await wait_until_serving(server.base_url)
    with trio.fail_after(90):
        async with open_clients(*servers) as clients:
            holds, line = await hold_and_line_up(clients[0], sale, "lf")
        # The holds the line is handed last long: none lapses before the test looks.
        await pg(settings.database_url, fetch, "UPDATE flash_sales SET hold_seconds = $2 "
                 "WHERE id = $1 RETURNING id", sale.id, OFFERED_HOLD_S)
        first_end, last_end = min(holds.values()), max(holds.values())
        assert time.time() < first_end.timestamp() - 0.5, "holding took the whole window"
        await trio.sleep(first_end.timestamp() - 0.5 - time.time())
        async with stall(settings, sale):
            stalled_at = time.time()
            await trio.sleep(last_end.timestamp() - time.time() + 0.3)
            victim = await kill(settings, sale, servers)
            killed_at = time.time()
            await trio.sleep(last_end.timestamp() + STALL_PAST_END_S - time.time())
            released_at = time.time()
        while (len((await holds_ledger(settings, sale)).endings) < HOLDERS
               and time.time() < released_at + LATE_PAST_STALL_S + 5):
            await trio.sleep(0.05)
        lapsed_at = time.time()
        agreed_s = await wait_for_gate_to_agree(settings, sale, timeout_s=10)
    ledger = await holds_ledger(settings, sale)
    lateness = {p: (e.ended_at.timestamp() - released_at) for p, e in ledger.endings.items()}
    # A worker copies its counters for /metrics every second: give them two.
    await trio.sleep(2 * SYNC_INTERVAL_S)
    lapsed = [await metric(s, "flashflow_holds_lapsed_total") for s in servers
              if s.process.poll() is None]
    figures.update(
        stalled_before_first_end_s=round(first_end.timestamp() - stalled_at, 2),
        killed_after_last_end_s=round(killed_at - last_end.timestamp(), 2),
        stall_s=round(released_at - stalled_at, 2),
        lapsed_after_the_stall_s={"first": round(min(lateness.values()), 3),
                                  "last": round(max(lateness.values()), 3)},
        all_lapsed_seen_after_the_stall_s=round(lapsed_at - released_at, 2),
        gate_agreed_after_the_lapses_s=round(agreed_s, 2),
        lapsed_by_live_servers=lapsed, killed=victim)

    # Each hold lapsed, once: one ending each, no row left, nothing else ended.
    assert set(ledger.endings) == set(holds), figures
    assert all(e.outcome == "lapsed" for e in ledger.endings.values())
    breaks = hold_rule_breaks(sale, ledger, set(holds))
    assert not breaks, "\n".join(breaks)
    assert sum(lapsed) == HOLDERS, figures
    # Late, but only by the stall and the bound: never before the stall ended (nothing could
    # commit), never more than LATE_PAST_STALL_S after it.
    assert all(0 <= late <= LATE_PAST_STALL_S for late in lateness.values()), figures
    # The units went to the first HOLDERS in line, once each, as new holds of a full window;
    # the rest still wait, in order.
    handed = {e.offered_user: e.offered_to for e in ledger.endings.values()}
    assert set(handed) == set(line[:HOLDERS]), handed
    assert ledger.waiting == line[HOLDERS:], ledger.waiting
    for user, purchase_id in handed.items():
        row = ledger.rows[purchase_id]
        assert row.user_id == user and row.held
        ended = next(e.ended_at for e in ledger.endings.values() if e.offered_to == purchase_id)
        assert abs((row.expires_at - ended).total_seconds() - OFFERED_HOLD_S) < 0.5
    assert len(ledger.rows) == ledger.sold == HOLDERS


def fault_settings_for_holds(settings):
    """The fault settings, with the payment step's token and the default sweep."""
    return with_payments(settings, hold_sweep_s=SWEEP_S, hold_gate_retry_s=2.0)


def sale_locked(settings, sale):
    """The sale's row locked, as a commit or a sweep that holds it would."""
    return sale_row_locked(settings.database_url, sale.id)


async def test_first_sweeper_in_line_killed_while_the_sale_is_locked_across_the_end(
        fault_settings, launch, figures):
    """The sale's row locked from before the holds end until 5 s after; the worker first in
    line for it SIGKILLed: each hold lapses once, after the lock, to the first in line."""
    await lapse_through(fault_settings_for_holds(fault_settings), launch, figures,
                        sale_locked, kill_first_in_line)


async def test_worker_killed_while_postgres_is_sigstopped_across_the_end(
        backends, fault_settings, launch, figures):
    """PostgreSQL SIGSTOPped from before the holds end until 5 s after, a worker SIGKILLed
    meanwhile: each hold lapses once, after the stall, to the first in line."""
    await lapse_through(fault_settings_for_holds(fault_settings), launch, figures,
                        lambda settings, sale: backends.postgres_paused(), kill_a_worker)


#: How late past ``FLASHFLOW_HOLD_GATE_RETRY_S`` an ending no process told the gate of may
#: reach it: one sweep of a live process, and a second of slack for a busy machine.
RETRY_SLACK_S = SWEEP_S + 1.0


async def endings_told(settings, sale, holds: set[uuid.UUID]) -> int:
    """How many of the endings of ``holds`` are recorded as told to the gate."""
    endings = (await holds_ledger(settings, sale)).endings
    return sum(endings[p].gate_done for p in holds if p in endings)


async def test_endings_a_killed_process_never_told_the_gate_are_told_once_by_another(
        backends, fault_settings, launch, figures):
    """Holds lapse in PostgreSQL while Redis is SIGSTOPped, and the process that lapsed them
    is SIGKILLed before the gate heard of it: another process (itself stalled meanwhile)
    tells the gate, once, within FLASHFLOW_HOLD_GATE_RETRY_S and a sweep of the lapse."""
    settings = fault_settings_for_holds(fault_settings)
    retry_s = settings.hold_gate_retry_s
    holders, waiters = 4, 2
    sale = await make_sale(settings.database_url, stock=holders, hold_seconds=HOLD_S)
    doomed, other = await launch(settings), await launch(settings)
    for server in (doomed, other):
        await wait_until_serving(server.base_url)
    with trio.fail_after(60):
        # The lapse falls anywhere in the other process's own rhythm of sweeps and retries.
        await trio.sleep(random.uniform(0, retry_s))
        async with open_clients(doomed) as (client,):
            holds, line = await hold_and_line_up(client, sale, "gr", holders, waiters)
        first_end, last_end = min(holds.values()), max(holds.values())
        await trio.sleep(first_end.timestamp() - 0.3 - time.time())
        # Only the doomed process may sweep; it will commit the lapses and hang on Redis.
        os.kill(other.process.pid, signal.SIGSTOP)
        try:
            backends.pause_redis()
            try:
                while not set(holds) <= set((ledger := await holds_ledger(settings, sale)).endings):
                    assert time.time() < last_end.timestamp() + 3, "the holds did not lapse"
                    await trio.sleep(0.02)
                told_before_the_kill = sum(ledger.endings[p].gate_done for p in holds)
                os.kill(doomed.process.pid, signal.SIGKILL)
            finally:
                backends.resume_redis()
        finally:
            os.kill(other.process.pid, signal.SIGCONT)
        resumed_at = time.time()
        while await endings_told(settings, sale, set(holds)) < holders:
            await trio.sleep(0.02)
        told_at = time.time()
        await wait_for_gate_to_agree(settings, sale, timeout_s=5)
        retried = await metric(other, "flashflow_holds_gate_retries_total")
    ledger = await holds_ledger(settings, sale)
    ended = [ledger.endings[p] for p in holds]
    last_ended = max(e.ended_at.timestamp() for e in ended)
    figures.update(
        retry_s=retry_s, sweep_s=SWEEP_S,
        told_before_the_kill=told_before_the_kill,
        resumed_after_the_last_lapse_s=round(resumed_at - last_ended, 2),
        told_after_the_last_lapse_s=round(told_at - last_ended, 2),
        endings_told_again_by_the_other_process=retried)

    assert told_before_the_kill == 0, figures
    assert not hold_rule_breaks(sale, ledger, set(holds))
    # Not before the retry was due (a live process's own step is never doubled), and not
    # much after: within the retry time and a sweep.
    assert retry_s <= told_at - last_ended <= retry_s + RETRY_SLACK_S, figures
    # Once: each ending told again exactly once, and the gate holds exactly the rows (the
    # lapsed holders gone, the first in line holding the units handed on).
    assert retried == holders, figures
    assert {e.offered_user for e in ended} - {None} == set(line)
