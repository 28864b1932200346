"""PostgreSQL stalled past its timeout while a crowd buys: no false 409, nothing lost.

Two stalls, each held for ``STALL_S`` (twice ``postgres_timeout_s``) while 200 users press
Buy once each for a stock of 20: a row lock the test holds on the sale (every commit waits
in PostgreSQL on the sold-counter trigger), and the embedded PostgreSQL SIGSTOPped (every
query waits unanswered). The answers of the stall are checked against what PostgreSQL and
Redis hold: ``SOLD_OUT`` only once every unit is committed, ``ALREADY_PURCHASED`` only with
a committed row, every 201 a row, no 5xx but 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import pytest
import trio

from ..helpers import make_sale, sale_row_locked
from .checks import check_sale_after_faults, phase_figures
from .fleet import reconciler_returns, wait_until_serving
from .load import open_clients, press_until_final
from .recorder import Recorder
from .stores import SoldWatch, committed_rows

pytestmark = pytest.mark.slow

STOCK = 20
USERS = 200
STALL_S = 8.0
#: The crowd's presses are spread over this long, all inside the stall.
SPREAD_S = 2.0


async def crowd(recorder: Recorder, clients, users: list[str], spread_s: float) -> None:
    """Every user presses Buy once, open-loop, the presses spread evenly over ``spread_s``."""
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i, user in enumerate(users):
            await trio.sleep_until(start + spread_s * i / len(users))
            nursery.start_soon(recorder.press, clients[i % len(clients)], user)


async def buy_through_a_stall(settings, sale, servers, stall: Callable[[],
                              AbstractAsyncContextManager[Any]], figures: dict) -> None:
    """The crowd buys during ``stall``, then retries until final; check every answer."""
    users = [f"ps-{i:04d}" for i in range(USERS)]
    recorder = Recorder(phase="fault")
    watch = SoldWatch(settings, sale)
    with trio.fail_after(120):
        async with open_clients(*servers, timeout_s=30) as clients, \
                trio.open_nursery() as watching:
            await watching.start(watch.run)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(crowd, recorder, clients, users, SPREAD_S)
                async with stall():
                    stalled_at = time.monotonic()
                    await trio.sleep(STALL_S)
                stall_ended_at = time.monotonic()
            crowd_done_s = time.monotonic() - stall_ended_at
            rows_after_crowd = len(await committed_rows(settings, sale))
            ready_s = max([await wait_until_serving(s.base_url) for s in servers])

            # Whoever heard no final answer presses again until they do.
            recorder.phase = "recovering"
            waiting = [u for u in users if not any(
                o.user == u and o.status in (201, 409) for o in recorder.outcomes)]
            rounds = await press_until_final(recorder, clients, waiting)
            # Everyone once more: winners hear ALREADY_PURCHASED, the rest SOLD_OUT.
            recorder.phase = "after"
            await press_until_final(recorder, clients, users, rounds=1)
            watching.cancel_scope.cancel()

    fault = recorder.in_phase("fault")
    figures.update(
        stock=STOCK, users=USERS, seconds_stalled=STALL_S,
        postgres_timeout_s=settings.postgres_timeout_s, purchase_wait_s=settings.purchase_wait_s,
        fault=phase_figures(recorder, "fault"),
        fault_sold_out=sum(o.code == "SOLD_OUT" for o in fault),
        fault_201_answered_after_the_stall=sum(
            o.status == 201 and o.answered_at > stall_ended_at for o in fault),
        seconds_from_stall_end_to_last_crowd_answer=round(crowd_done_s, 2),
        committed_when_the_crowd_was_answered=rows_after_crowd,
        seconds_until_ready=round(ready_s, 2),
        retry_rounds=rounds,
        recovering=phase_figures(recorder, "recovering"),
        after=phase_figures(recorder, "after"),
        seconds_from_stall_start_to_sold_out=(
            None if watch.sold_out_at is None else round(watch.sold_out_at - stalled_at, 2)),
        sold_counter_polls=watch.polls,
    )
    figures.update(await check_sale_after_faults(
        settings, sale, recorder, expected_sold=STOCK,
        settle_s=settings.reservation_grace_s + settings.reconcile_interval_s + 3))
    figures["reconciler_returned"] = reconciler_returns(*servers)
    too_soon = watch.told_too_soon(recorder.outcomes)
    figures["sold_out_told_while_units_were_unsold"] = len(too_soon)

    # SOLD_OUT is final: never told while a unit was still unsold, never to a later buyer.
    assert not too_soon, f"SOLD_OUT told before the stock was committed: {too_soon[:3]}"
    assert figures["sold_out_told_to_users_who_then_bought"] == 0
    assert figures["already_purchased_told_to_users_without_a_row"] == 0
    if figures["fault_sold_out"]:
        assert rows_after_crowd == STOCK, "SOLD_OUT during the stall, yet units unsold"
    # The stall really was in doubt for a while: some of the crowd heard 503.
    assert figures["fault"]["503"] > 0, "no purchase was held in doubt by the stall"


async def test_sale_row_locked_past_the_timeout(fault_settings, launch, figures):
    """A row lock stalls every commit for 2 x the timeout: no false 409, exact sell-out."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=STOCK)
    servers = [await launch(settings, "--workers", "2")]
    stall = partial(sale_row_locked, settings.database_url, sale.id)
    await buy_through_a_stall(settings, sale, servers, stall, figures)


async def test_postgres_sigstopped_past_the_timeout(backends, fault_settings, launch, figures):
    """PostgreSQL SIGSTOPped for 2 x the timeout: no false 409, exact sell-out."""
    settings = fault_settings
    sale = await make_sale(settings.database_url, stock=STOCK)
    servers = [await launch(settings, "--workers", "2")]
    await buy_through_a_stall(settings, sale, servers, backends.postgres_paused, figures)
