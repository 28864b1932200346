"""Redis SIGSTOPped past its timeout mid-reservation: lost reservations are undone.

While Redis is stopped, every reservation the gate sends waits in Redis's socket buffer and
the server gives up on it after ``redis_timeout_s`` (503). When Redis runs again it executes
those reservations, whose replies nobody reads: units held for users who were told 503. The
process that sent them releases them; the users' retries must then buy, never hear
``ALREADY_PURCHASED`` for a purchase that does not exist.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace

import pytest
import trio

from actors._redis_scripts import RELEASE, RESERVE

from ..helpers import gate_state, make_sale
from .checks import check_sale_after_faults, phase_figures
from .fleet import reconciler_returns, wait_until_serving
from .load import open_clients, press_until_final
from .recorder import Recorder
from .stores import SoldWatch, committed_rows

pytestmark = pytest.mark.slow

STOCK = 10
#: Buyers before the stall, and during it: together fewer than the stock, so every buyer
#: of the stall can still buy on retry.
BEFORE, DURING = 3, 6
LATER = 10
STALL_S = 3.0


@dataclass
class Monitor:
    """Every command Redis runs, as its ``MONITOR`` feed shows it, with when it arrived."""

    lines: list[tuple[float, str]] = field(default_factory=list)

    def ran(self, script: str, user: str, *, before: float) -> bool:
        """Whether Redis ran ``script`` naming ``user`` before ``time.monotonic()`` ``before``."""
        sha = hashlib.sha1(script.encode()).hexdigest()
        return any(at < before and f'"{sha}"' in line and f'"{user}"' in line
                   for at, line in self.lines)


@contextmanager
def redis_monitor(port: int) -> Iterator[Monitor]:
    """Read Redis's ``MONITOR`` feed on a loopback socket of its own, in a thread."""
    monitor, stop = Monitor(), threading.Event()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"MONITOR\r\n")
    sock.settimeout(0.2)

    def read() -> None:
        pending = b""
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *complete, pending = pending.split(b"\r\n")
            at = time.monotonic()
            monitor.lines += [(at, line.decode(errors="replace")) for line in complete]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield monitor
    finally:
        stop.set()
        reader.join(5)
        with suppress(OSError):
            sock.close()


async def test_redis_sigstopped_mid_reservation(backends, fault_settings, launch, figures):
    """Reservations whose reply was lost are released: every 503'd buyer can buy on retry."""
    # Without the limiter every press goes straight to the gate, so each one sent during
    # the stall is a reservation in Redis's buffer (the limiter is Redis too, and would
    # refuse them before any reservation was sent).
    settings = replace(fault_settings, rate_limit_enabled=False)
    sale = await make_sale(settings.database_url, stock=STOCK)
    servers = [await launch(settings, "--workers", "2")]
    recorder = Recorder()
    watch = SoldWatch(settings, sale)
    before = [f"rb-{i:02d}" for i in range(BEFORE)]
    during = [f"rd-{i:02d}" for i in range(DURING)]
    later = [f"rl-{i:02d}" for i in range(LATER)]
    with trio.fail_after(90):
        async with open_clients(*servers, timeout_s=20) as clients, \
                trio.open_nursery() as watching:
            await watching.start(watch.run)
            for user in before:
                assert (await recorder.press(clients[0], user)).status == 201

            recorder.phase = "fault"
            monitoring = redis_monitor(backends.redis_port)
            monitor = monitoring.__enter__()
            backends.pause_redis()
            try:
                stalled_at = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for user in during:
                        nursery.start_soon(recorder.press, clients[0], user)
                    await trio.sleep(STALL_S)
                    backends.resume_redis()
                    resumed_at = trio.current_time()
            finally:
                backends.resume_redis()
            # What Redis ran once it woke: reservations whose sender had given up.
            await trio.sleep(0.05)
            rows = await committed_rows(settings, sale)
            _, held = gate_state(settings, sale)
            held_without_row = sorted(u for u, p in held.items() if rows.get(u) != p)
            ready_s = max([await wait_until_serving(s.base_url) for s in servers])

            recorder.phase = "recovering"
            refused = sorted({o.user for o in recorder.in_phase("fault") if o.status == 503})
            retried_at = time.monotonic()
            monitoring.__exit__(None, None, None)
            # Reservations Redis ran after their senders had given up, and their undoing.
            lost = [u for u in refused if monitor.ran(RESERVE, u, before=retried_at)]
            undone = [u for u in lost if monitor.ran(RELEASE, u, before=retried_at)]
            rounds = await press_until_final(recorder, clients, refused)
            retry = [o for o in recorder.in_phase("recovering") if o.user in refused]
            # Then more buyers than units are left, until the sale sells out.
            await press_until_final(recorder, clients, later)
            recorder.phase = "after"
            await press_until_final(recorder, clients, before + during + later, rounds=1)
            watching.cancel_scope.cancel()

    fault = recorder.in_phase("fault")
    figures.update(
        stock=STOCK, buyers_before=BEFORE, buyers_during=DURING, buyers_later=LATER,
        seconds_stalled=STALL_S, redis_timeout_s=settings.redis_timeout_s,
        fault=phase_figures(recorder, "fault"),
        fault_max_latency_within_stall=max(o.seconds for o in fault) < resumed_at - stalled_at,
        users_refused_during_stall=len(refused),
        reservations_held_without_a_row_50ms_after_resume=len(held_without_row),
        lost_reservations_redis_ran_after_resume=len(lost),
        lost_reservations_released_before_the_retry=len(undone),
        seconds_until_ready=round(ready_s, 2),
        retry_rounds_of_the_refused=rounds,
        retry_statuses_of_the_refused=sorted({(o.status, o.code or "") for o in retry}),
        retry_latency_ms_max=round(max((o.seconds for o in retry), default=0) * 1000, 1),
        refused_who_bought_on_retry=sum(u in recorder.winners for u in refused),
        recovering=phase_figures(recorder, "recovering"),
        after=phase_figures(recorder, "after"),
        seconds_from_retry_to_sold_out=(
            None if watch.sold_out_at is None else round(watch.sold_out_at - retried_at, 2)),
    )
    figures.update(await check_sale_after_faults(
        settings, sale, recorder, expected_sold=STOCK,
        settle_s=settings.reservation_grace_s + settings.reconcile_interval_s + 3))
    figures["reconciler_returned"] = reconciler_returns(*servers)
    too_soon = watch.told_too_soon(recorder.outcomes)
    figures["sold_out_told_while_units_were_unsold"] = len(too_soon)

    assert refused, "no reservation was caught by the stall"
    assert lost, "Redis ran none of the reservations sent while it was stopped"
    # Fewer buyers than units until then: every one refused during the stall buys on retry.
    assert all(u in recorder.winners for u in refused), figures["retry_statuses_of_the_refused"]
    assert not too_soon, f"SOLD_OUT told before the stock was committed: {too_soon[:3]}"
    assert figures["already_purchased_told_to_users_without_a_row"] == 0
    # Nothing was lost on the PostgreSQL side: rows are exactly the 201s.
    assert figures["committed_without_a_201"] == 0
    assert figures["committed"] == len(recorder.winners) == STOCK
