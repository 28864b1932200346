"""The gate alone: reservations decided per second, for 1, 10 and 100 sales at once.

No HTTP and no PostgreSQL: one :class:`~actors.StockGate` is opened with
:func:`~actors.open_stock_gate`, as a server worker opens it, and driven through
:meth:`~actors.StockGate.reserve` by a fixed number of concurrent buyers, each a user of its
own, spread evenly over the sales. Each sale's stock is larger than any run sells, so every
decision is a reservation: the costliest answer the gate gives.

A figure is measured twice over: the rate this one client reached, and Redis's CPU time per
decision, read from INFO on every node. On a machine whose cores the client shares with
Redis, the client is what runs out first; the CPU time says how many decisions one Redis
core (or the busiest shard of a cluster) makes at 100%, which is its ceiling.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import trio

from actors import LedgerState, Sale, Tally, open_stock_gate
from actors._aio import open_asyncio_bridge
from actors.stock_gate import Seat

from ..settings import Settings
from ._common import HTTP_PER_CORE, RedisTarget, load_average

#: Every sale's stock: more than any run reserves, so no answer is "sold out".
STOCK = 10**9


@dataclass(frozen=True, slots=True)
class GateFigure:
    """One measured configuration.

    Attributes:
        target: "one Redis" or "3-shard cluster".
        sales: sales bought at once.
        concurrency: reservations in flight at any time.
        decided: reservations decided in the measured window.
        seconds: the window.
        client_cpu: the client process's CPU time over the window, in cores.
        redis_cpu_us: Redis CPU time per decision, every node summed, in microseconds.
        busiest_share: the busiest node's part of that time.
        shards_used: nodes that did any work.
        load: the machine's 1-minute load average at the end of the window.
        verified: every sale's holders equal the reservations it answered, and its stock is
            what remains of it.
    """

    target: str
    sales: int
    concurrency: int
    decided: int
    seconds: float
    client_cpu: float
    redis_cpu_us: float
    busiest_share: float
    shards_used: int
    load: float
    verified: bool

    @property
    def per_s(self) -> float:
        """Reservations decided per second by this client."""
        return self.decided / self.seconds

    @property
    def ceiling_per_s(self) -> float:
        """Decisions per second when the busiest node's one core is fully used."""
        busiest_us = self.redis_cpu_us * self.busiest_share
        return 1e6 / busiest_us if busiest_us else float("inf")

    def http_cores(self) -> tuple[float, float]:
        """The HTTP cores whose purchases this ceiling decides (at 600 and at 300 /s a core)."""
        low, high = HTTP_PER_CORE
        return self.ceiling_per_s / high, self.ceiling_per_s / low

    def as_dict(self) -> dict[str, object]:
        """Every field, and the derived figures."""
        fewest, most = self.http_cores()
        return {**asdict(self), "per_s": self.per_s, "ceiling_per_s": self.ceiling_per_s,
                "http_cores": [fewest, most]}


def _sale(now: datetime) -> Sale:
    return Sale(uuid.uuid4(), "Capacity", STOCK, now - timedelta(minutes=1),
                now + timedelta(hours=1))


async def _no_sales(sale: Sale) -> LedgerState:
    """The ledger of a sale nobody bought yet: the gate is built empty."""
    return LedgerState(sale.total_stock, 0, {})


async def _none_sold(sale_id: uuid.UUID) -> Tally:
    return Tally(STOCK, 0)


async def measure(target: RedisTarget, key_prefix: str, sales: int, *, concurrency: int,
                  duration_s: float, warmup_s: float, batch_max: int = 512) -> GateFigure:
    """Drive one gate over ``sales`` sales for ``warmup_s`` then ``duration_s``; verify."""
    now = datetime.now(UTC)
    every = [_sale(now) for _ in range(sales)]
    reserved = {sale.id: 0 for sale in every}
    counted = 0
    config = Settings(redis_url=target.url, key_prefix=key_prefix,
                      gate_inbox_size=max(4096, 2 * concurrency), gate_batch_max=batch_max,
                      redis_timeout_s=10.0).gate_config()
    async with open_asyncio_bridge(), \
            open_stock_gate(config, loader=_no_sales, counter=_none_sold) as gate:
        for sale in every:
            await gate.store.ensure_loaded(sale)
        measuring = False
        stop_at = trio.current_time() + warmup_s + duration_s

        async def buyer(n: int) -> None:
            nonlocal counted
            sale = every[n % sales]
            i = 0
            while trio.current_time() < stop_at:
                i += 1
                answer = await gate.reserve(sale, f"b{n}-{i}", uuid.uuid4())
                if answer.seat is not Seat.RESERVED:
                    raise AssertionError(f"user b{n}-{i} was not new to the gate: {answer}")
                reserved[sale.id] += 1
                counted += measuring

        async with trio.open_nursery() as nursery:
            for n in range(concurrency):
                nursery.start_soon(buyer, n)
            await trio.sleep(warmup_s)
            measuring = True
            cpu_before, process_before = target.cpu_seconds(), time.process_time()
            started = trio.current_time()
            await trio.sleep_until(stop_at)
            seconds = trio.current_time() - started
            measuring, decided = False, counted
            cpu_after, process_after = target.cpu_seconds(), time.process_time()
            load = load_average()
        verified = True
        for sale in every:
            view = await gate.store.in_doubt(sale.id, 1)
            verified &= (view.holders == view.pending == reserved[sale.id]
                         and view.stock == STOCK - reserved[sale.id])
    used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    total = sum(used)
    return GateFigure(
        target=target.label, sales=sales, concurrency=concurrency, decided=decided,
        seconds=seconds, client_cpu=(process_after - process_before) / seconds,
        redis_cpu_us=total / decided * 1e6 if decided else 0.0,
        busiest_share=max(used) / total if total else 1.0,
        shards_used=sum(u > 0.05 * total for u in used), load=load, verified=verified)


HEADER = ("Redis", "Sales", "In flight", "Decided/s (this client)", "Client CPU",
          "Redis µs/decision", "Busiest node", "Ceiling decided/s", "HTTP cores served",
          "Load average", "Checked")


def row(f: GateFigure) -> tuple[object, ...]:
    """One figure as a table row."""
    fewest, most = f.http_cores()
    return (f.target, f.sales, f.concurrency, f"{f.per_s:,.0f}", f"{f.client_cpu:.0%}",
            f"{f.redis_cpu_us:.1f}", f"{f.busiest_share:.0%} ({f.shards_used} used)",
            f"{f.ceiling_per_s:,.0f}", f"{fewest:,.0f}–{most:,.0f}", f"{f.load:.1f}",
            "held" if f.verified else "**BROKEN**")
