"""A whole sale end to end: a large crowd of distinct users against a real stock, timed to
the last committed unit and checked against PostgreSQL and Redis afterwards."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from ..backends import gate_keys, gate_snapshot, ledger_snapshot
from ..verify import Check, GateSnapshot, LedgerSnapshot
from . import lua, wrk
from .scenarios import Options, purchase_args
from .server import BenchServer, bench_sale, cpu_seconds


class SellOutClock:
    """Watches Redis and PostgreSQL from a thread of its own; notes when the gate reads 0
    (``gate_s``) and when the ledger holds the whole stock (``ledger_s``), in seconds
    from :meth:`start`."""

    def __init__(self, database_url: str, redis_url: str, stock_key: str, sale_id: uuid.UUID,
                 total: int) -> None:
        self._args = database_url, redis_url, stock_key, sale_id, total
        self.gate_s: float | None = None
        self.ledger_s: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        """Start the clock and the watching."""
        self._t0 = time.monotonic()
        self._thread.start()

    async def _poll(self) -> None:
        database_url, redis_url, stock_key, sale_id, total = self._args
        conn = await asyncpg.connect(database_url)
        client = aioredis.Redis.from_url(redis_url)
        try:
            while not self._done.is_set() and self.ledger_s is None:
                now = time.monotonic() - self._t0
                if self.gate_s is None and int(await client.get(stock_key) or 1) <= 0:
                    self.gate_s = now
                sold = await conn.fetchval("SELECT sold FROM flash_sales WHERE id = $1", sale_id)
                if sold >= total:
                    self.ledger_s = now
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
            await client.aclose()

    def stop(self) -> None:
        """Stop watching and wait for the thread."""
        self._done.set()
        self._thread.join(10)


@dataclass(frozen=True)
class SaleRun:
    """What a whole sale measured."""

    workers: int
    stock: int
    users: int
    connections: int
    gate_sold_out_s: float | None
    ledger_sold_out_s: float | None
    duration_s: float
    purchases_per_s: float
    p50_ms: float
    p99_ms: float
    answers: dict[str, int]
    socket_errors: dict[str, int]
    generator_cpu: float
    server_cpu: float
    rss_start_mb: float
    rss_peak_mb: float
    invariants: list[Check]

    @property
    def held(self) -> bool:
        """Whether every invariant held."""
        return all(c.held for c in self.invariants)


def sale_checks(result: wrk.WrkResult, users: int, ledger: LedgerSnapshot,
                gate: GateSnapshot) -> list[Check]:
    """The invariants of the whole sale, from wrk's answers and the backends' state."""
    told = dict(result.won)
    repeats = Counter(user for user, _ in result.won)
    rows, total = ledger.purchases, ledger.total_stock
    bad = {k: n for k, n in result.answers.items() if k not in ("201", "409 SOLD_OUT")}
    errors = sum(result.socket_errors.values())
    asked = sum(result.answers.values())
    return [
        Check("every user asked once", asked == users, f"{asked} answers for {users} users"),
        Check("no overselling", len(rows) == ledger.sold == total,
              f"committed {len(rows)}, sold counter {ledger.sold}, stock {total}"),
        Check("one purchase per user", all(n == 1 for n in repeats.values()),
              f"{len(told)} users told 201"),
        Check("201s and rows are the same purchases", told == rows,
              f"{len(told)} told, {len(rows)} rows, "
              f"{sum(rows.get(u) == p for u, p in told.items())} identical"),
        Check("gate agrees with ledger", gate.stock == total - len(rows) and gate.buyers == rows,
              f"Redis stock {gate.stock}, buyers {len(gate.buyers)}"),
        Check("losers get 409 SOLD_OUT, never a 5xx or a dropped connection",
              not bad and errors == 0, f"other answers {bad or 'none'}, socket errors {errors}"),
    ]


def run_sale(workers: int | None, admin_url: str, redis_url: str, options: Options,
             log_dir: Path, stock: int = 10_000, users: int = 100_000) -> SaleRun:
    """Sell ``stock`` units to ``users`` distinct users, at the most connections asked for."""
    threads, connections = options.threads, max(options.connections)
    per_thread = -(-users // threads)
    with bench_sale(admin_url, redis_url, stock) as (scratch, sale_id):
        server = BenchServer.start(scratch, workers, log_dir, options.auth_secret)
        try:
            rss_start = server.sampler.sample()
            clock = SellOutClock(scratch.database_url, redis_url,
                                 gate_keys(scratch.key_prefix, sale_id)[0], sale_id, stock)
            args = purchase_args("sale", per_thread, options, log_dir, per_thread)
            cpu_before = cpu_seconds(server.root)
            clock.start()
            result = wrk.run(server.url, lua.PURCHASE, connections=connections,
                             threads=threads, duration_s=900, args=args)
            server_cpu = cpu_seconds(server.root) - cpu_before
            time.sleep(1.0)
            clock.stop()
            checks = sale_checks(result, per_thread * threads,
                                 ledger_snapshot(scratch.database_url, sale_id),
                                 gate_snapshot(redis_url, scratch.key_prefix, sale_id))
            cores = os.cpu_count() or 1
            return SaleRun(
                workers=workers or 1, stock=stock, users=per_thread * threads,
                connections=connections, gate_sold_out_s=clock.gate_s,
                ledger_sold_out_s=clock.ledger_s, duration_s=result.duration_s,
                purchases_per_s=sum(result.answers.values()) / result.duration_s,
                p50_ms=result.p50_ms, p99_ms=result.p99_ms, answers=result.answers,
                socket_errors=result.socket_errors,
                generator_cpu=result.cpu_s / (result.duration_s * cores),
                server_cpu=server_cpu / (result.duration_s * cores),
                rss_start_mb=rss_start / 2**20, rss_peak_mb=server.sampler.peak_rss / 2**20,
                invariants=checks)
        finally:
            server.stop()
