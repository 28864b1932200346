"""Holds lapsing all at once: every unit of a big sale held, a long waitlist behind them, and
every hold ending within the same second.

The sale and its holds are written straight into PostgreSQL (a hold is a purchases row with
``expires_at``; a place is a waitlist row), then one or more sweeper processes open the actor
tree with :func:`flashflow.runtime.open_runtime`, exactly as a server worker does: the first
loads the gate from the ledger (every holder), and each runs the holds actor's sweep
(:class:`actors.holds.Holds`) every ``hold_sweep_s``. Only then are the holds' ends set,
spread over one second a few seconds ahead, and the benchmark watches:

- when the last hold's lapse and the last offer to the waitlist were committed, by
  PostgreSQL's clock (each lapse and its offer commit together);
- when the gate in Redis had them all: its holders were exactly the rows (a lapse takes its
  holder out, an offer puts the new holder in), its stock ``total - rows``, and every
  ending was recorded as told.

Then the result is checked: each hold lapsed once, the first ``min(holds, waiting)`` places
were each handed one unit in the order of their places, ``sold`` counts the rows, and the
gate holds exactly the rows with ``stock = total - rows``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from actors.keys import SaleKeys, sale_keys
from actors.redis_url import sync_client

from ..database import run_on_connection
from ..invariants import Check, gate_snapshot, ledger_snapshot
from ..runtime import open_runtime
from ..settings import Settings
from ._common import load_average
from .harness import create_sale

#: How long the sale lasts, and the window of the holds the waitlist is handed: far longer
#: than any run, so nothing but the holds set to end does.
SALE_LASTS_S = 12 * 3600
OFFER_HOLD_S = 3600
#: The holds' ends are set this far ahead of the moment they are written.
LEAD_S = 5.0
#: How often the end of the run is looked for (PostgreSQL, Redis).
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class LapsesRun:
    """The figures of one run, and the checks they stand on. Times in seconds after the
    last hold's end, by PostgreSQL's clock, unless said otherwise.

    Attributes:
        holds, waiting, sweepers, window_s: the set-up.
        first_lapse_s: the first lapse, after the *first* hold's end.
        last_lapse_s: the last hold's lapse committed.
        last_offer_s: the last unit handed to the waitlist committed.
        gate_s: the gate's holders were the rows: the last lapse and offer applied in Redis.
        stock_s: the gate's stock reached its end value, ``total - rows``.
        told_s: every ending recorded as told to the gate.
        lapsed_by, offered_by: what each sweeper process lapsed and handed on.
        failed_sweeps: sweeps that failed, over all sweepers.
        load: the machine's 1-minute load average before and after.
    """

    holds: int
    waiting: int
    sweepers: int
    window_s: float
    first_lapse_s: float
    last_lapse_s: float
    last_offer_s: float | None
    gate_s: float
    stock_s: float
    told_s: float
    lapsed_by: list[int]
    offered_by: list[int]
    failed_sweeps: int
    load: tuple[float, float]
    checks: list[Check] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """Whether every check held."""
        return bool(self.checks) and all(c.held for c in self.checks)

    @property
    def lapses_per_s(self) -> float:
        """Holds lapsed per second, from the first lapse to the last."""
        span = self.last_lapse_s + self.window_s - self.first_lapse_s
        return self.holds / span if span > 0 else float("inf")

    def as_dict(self) -> dict[str, object]:
        """Every field, and the derived figures."""
        return {**asdict(self), "lapses_per_s": self.lapses_per_s, "held": self.held}


async def _seed(conn: Any, sale_id: uuid.UUID, holds: int, waiting: int) -> None:
    """Every unit held (ending a day from now, until :func:`_set_ends`), and the line."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO purchases (id, sale_id, user_id, purchased_at, expires_at) "
            "SELECT gen_random_uuid(), $1, 'holder-' || lpad(g::text, 8, '0'), "
            "clock_timestamp(), clock_timestamp() + interval '1 day' "
            "FROM generate_series(1, $2) g", sale_id, holds)
        await conn.execute(
            "INSERT INTO waitlist (sale_id, user_id, place) "
            "SELECT $1, u, nextval('waitlist_places') FROM "
            "(SELECT 'waiter-' || lpad(g::text, 8, '0') AS u FROM generate_series(1, $2) g "
            " ORDER BY g) line", sale_id, waiting)


async def _set_ends(conn: Any, sale_id: uuid.UUID, lead_s: float,
                    window_s: float) -> tuple[datetime, datetime, datetime]:
    """Spread the holds' ends evenly over ``window_s`` from ``lead_s`` ahead; return the
    first end, the last end and PostgreSQL's clock once committed."""
    first = await conn.fetchval("SELECT clock_timestamp() + make_interval(secs => $1)", lead_s)
    await conn.execute(
        "UPDATE purchases p SET expires_at = $2::timestamptz + make_interval(secs => n.rank * $3) "
        "FROM (SELECT id, (row_number() OVER (ORDER BY user_id) - 1)::float8 "
        "      / count(*) OVER () AS rank FROM purchases WHERE sale_id = $1) n "
        "WHERE p.id = n.id", sale_id, first, window_s)
    last = await conn.fetchval("SELECT max(expires_at) FROM purchases WHERE sale_id = $1",
                               sale_id)
    return first, last, await conn.fetchval("SELECT clock_timestamp()")


def _sweeper(settings: Settings, ready: Any, stop: Any, out: Any) -> None:
    """A sweeper process: the actor tree of a server worker, until ``stop`` is set."""
    trio.run(_sweep, settings, ready, stop, out)


async def _sweep(settings: Settings, ready: Any, stop: Any, out: Any) -> None:
    async with open_runtime(settings) as runtime:
        ready.set()
        while not stop.is_set():
            await trio.sleep(0.05)
        done = runtime.holds.statistics()
        out.put((done.lapsed, done.offered, done.failed_sweeps))


async def _watch(conn: Any, sale_id: uuid.UUID, last_end: datetime, keys: SaleKeys,
                 redis_url: str, holders: int, stock: int, timeout_s: float
                 ) -> tuple[float, float, float]:
    """Wait until the gate has ``holders`` holders and ``stock`` units left and every ending
    is recorded as told; return the local times (``time.time()``) each was first seen."""
    client = sync_client(redis_url, socket_timeout=10)
    seen: list[float | None] = [None, None, None]
    deadline = time.time() + timeout_s
    try:
        while None in seen:
            if time.time() > deadline:
                raise TimeoutError(f"the holds had not all lapsed {timeout_s} s after their end")
            now = time.time()
            if seen[0] is None and client.hlen(keys.buyers) == holders:
                seen[0] = now
            if seen[1] is None and int(client.get(keys.stock) or -1) == stock:
                seen[1] = now
            if seen[2] is None and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM purchases WHERE sale_id = $1 "
                    "AND expires_at <= $2 AND confirmed_at IS NULL) OR EXISTS (SELECT 1 "
                    "FROM hold_endings WHERE sale_id = $1 AND NOT gate_done)",
                    sale_id, last_end):
                seen[2] = now
            await asyncio.sleep(POLL_S)
    finally:
        client.close()
    return seen[0], seen[1], seen[2]


async def _outcome(conn: Any, sale_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT (SELECT count(*) FROM hold_endings WHERE sale_id = $1) AS endings, "
        " (SELECT count(DISTINCT purchase_id) FROM hold_endings WHERE sale_id = $1) AS once, "
        " (SELECT count(*) FROM hold_endings WHERE sale_id = $1 AND outcome = 'lapsed' "
        "  AND gate_done) AS told, "
        " (SELECT count(*) FROM purchases WHERE sale_id = $1 AND user_id LIKE 'holder-%') "
        "  AS left_held, "
        " (SELECT min(ended_at) FROM hold_endings WHERE sale_id = $1) AS first_ended, "
        " (SELECT max(ended_at) FROM hold_endings WHERE sale_id = $1) AS last_ended, "
        " (SELECT count(*) FROM waitlist w JOIN purchases p ON p.id = w.purchase_id "
        "  AND p.user_id = w.user_id WHERE w.sale_id = $1) AS handed, "
        " (SELECT count(DISTINCT offered_to) FROM hold_endings WHERE sale_id = $1) AS offers, "
        " (SELECT max(p.purchased_at) FROM waitlist w JOIN purchases p ON p.id = w.purchase_id "
        "  WHERE w.sale_id = $1) AS last_offer, "
        " (SELECT coalesce(max(place) FILTER (WHERE offered_at IS NOT NULL), 0) "
        "  < coalesce(min(place) FILTER (WHERE offered_at IS NULL), 9e18) "
        "  FROM waitlist WHERE sale_id = $1) AS in_order", sale_id)


def _checks(found: Any, holds: int, waiting: int, ledger: Any, gate: Any) -> list[Check]:
    handed = min(holds, waiting)
    rows = len(ledger.purchases)
    return [
        Check("each hold lapsed once",
              found["endings"] == found["once"] == found["told"] == holds
              and found["left_held"] == 0,
              f"{found['endings']} endings of {found['once']} holds, {found['told']} told "
              f"to the gate, {found['left_held']} still held, of {holds}"),
        Check("the first in line were each handed one unit, in order",
              found["handed"] == found["offers"] == handed and found["in_order"],
              f"{found['handed']} places handed a hold, {found['offers']} offers, expected "
              f"{handed}; offered before every waiting place: {found['in_order']}"),
        Check("sold counts the rows", ledger.sold == rows == handed,
              f"sold {ledger.sold}, rows {rows}, handed on {handed}"),
        Check("gate agrees with ledger",
              gate.stock == ledger.total_stock - rows and gate.buyers == ledger.purchases,
              f"Redis stock {gate.stock} vs {ledger.total_stock - rows}; Redis holders "
              f"{len(gate.buyers)} vs rows {rows}"
              + ("" if gate.buyers == ledger.purchases else " (they differ)")),
    ]


def run_lapses(database_url: str, redis_url: str, key_prefix: str, *, holds: int,
               waiting: int, sweepers: int = 2, window_s: float = 1.0,
               timeout_s: float = 600.0) -> LapsesRun:
    """Lapse ``holds`` holds ending within ``window_s`` with ``waiting`` in line, swept by
    ``sweepers`` processes; measure and check (see the module's docstring)."""
    sale = create_sale(database_url, "Lapsing sale", holds, SALE_LASTS_S,
                       hold_seconds=OFFER_HOLD_S)
    run_on_connection(database_url, _seed, sale.id, holds, waiting)
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    with tempfile.TemporaryDirectory(prefix="ffcap-") as data_dir:
        settings = Settings(database_url=database_url, redis_url=redis_url,
                            key_prefix=key_prefix, data_dir=Path(data_dir),
                            rate_limit_enabled=False, log_level="WARNING")
        started = []
        try:
            for i in range(sweepers):
                ready = context.Event()
                process = context.Process(
                    target=_sweeper, args=(replace(settings, data_dir=Path(data_dir) / str(i)),
                                           ready, stop, out), daemon=True)
                process.start()
                started.append(process)
                if not ready.wait(120):
                    raise RuntimeError("a sweeper process did not start within 120 s")
            load_before = load_average()
            first_end, last_end, written = run_on_connection(
                database_url, _set_ends, sale.id, LEAD_S, window_s)
            if written >= first_end:
                raise RuntimeError(f"writing the ends took longer than {LEAD_S} s")
            offset = written.timestamp() - time.time()  # PostgreSQL's clock minus ours
            handed = min(holds, waiting)
            moved_at, stock_at, told_at = run_on_connection(
                database_url, _watch, sale.id, last_end, sale_keys(key_prefix, sale.id),
                redis_url, handed, holds - handed, timeout_s)
            load_after = load_average()
        finally:
            stop.set()
            figures = [out.get(timeout=30) for process in started if process.is_alive()]
            for process in started:  # each by its own pid, should it not stop by itself
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
    found = run_on_connection(database_url, _outcome, sale.id)
    ledger = ledger_snapshot(database_url, sale.id)
    gate = gate_snapshot(redis_url, key_prefix, sale.id)
    end = last_end.timestamp()
    return LapsesRun(
        holds=holds, waiting=waiting, sweepers=sweepers, window_s=window_s,
        first_lapse_s=found["first_ended"].timestamp() - first_end.timestamp(),
        last_lapse_s=found["last_ended"].timestamp() - end,
        last_offer_s=(found["last_offer"].timestamp() - end) if found["last_offer"] else None,
        gate_s=moved_at + offset - end, stock_s=stock_at + offset - end,
        told_s=told_at + offset - end,
        lapsed_by=[f[0] for f in figures], offered_by=[f[1] for f in figures],
        failed_sweeps=sum(f[2] for f in figures), load=(load_before, load_after),
        checks=_checks(found, holds, waiting, ledger, gate))


def summary_rows(run: LapsesRun) -> list[tuple[str, str]]:
    """The figures of a run as (figure, value) rows."""
    return [
        ("Holds / waiting / sweeper processes",
         f"{run.holds:,} / {run.waiting:,} / {run.sweepers}"),
        ("Holds' ends spread over", f"{run.window_s:g} s"),
        ("First lapse, after the first end", f"{run.first_lapse_s:,.2f} s"),
        ("Last lapse committed, after the last end", f"{run.last_lapse_s:,.2f} s"),
        ("Last offer committed, after the last end",
         "none" if run.last_offer_s is None else f"{run.last_offer_s:,.2f} s"),
        ("Gate's holders are the rows, after the last end", f"{run.gate_s:,.2f} s"),
        ("Gate's stock is total - rows, after the last end", f"{run.stock_s:,.2f} s"),
        ("Every ending recorded as told, after the last end", f"{run.told_s:,.2f} s"),
        ("Lapses per second", f"{run.lapses_per_s:,.0f}"),
        ("Lapsed / handed on by each sweeper",
         ", ".join(f"{a:,} / {b:,}" for a, b in zip(run.lapsed_by, run.offered_by,
                                                    strict=True))),
        ("Failed sweeps", f"{run.failed_sweeps}"),
        ("Machine load average, start → end", f"{run.load[0]:.1f} → {run.load[1]:.1f}"),
        ("Checks", "held" if run.held else "BROKEN: " + "; ".join(
            f"{c.name} ({c.detail})" for c in run.checks if not c.held)),
    ]


__all__ = ["LapsesRun", "run_lapses", "summary_rows"]
