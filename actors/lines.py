"""The lines actor: the fair line of each waiting room, moved on by PostgreSQL's clock.

A sale with a waiting room lets buyers take a ticket from ``opens_before_s`` before its
start. PostgreSQL decides every step (:mod:`actors.places_sql`, migration 0005): at the
opening, the tickets taken before it are placed in the order the sale's committed seed gives,
later ones go to the back as they come, and positions are admitted in order at the sale's
rate. Every process moves every open line on every ``tick_s``; the line's row lock makes each
step happen once, whoever takes it, so a worker killed or a server restarted loses nothing.

What a process learns on its tick it tells its own watchers without a query each: the line
("admitted up to N") is one value per sale, and each stream waits on its own position's
event, woken only when that position is admitted or the line closes. So admitting k tickets
wakes k streams, not the whole line, and a line of n never costs n squared.

The line closes when its sale is sold out for good (every unit confirmed: :attr:`Tally.sold_out
<actors.model.Tally.sold_out>`, the final ``SOLD_OUT``) or ends; every waiting stream is woken
for its final event, and new joins are refused.
"""

from __future__ import annotations

import heapq
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from . import places_sql
from ._nursery import open_actor_nursery
from .errors import BackendUnavailable
from .ledger import Ledger
from .model import Line, Sale, Ticket
from .places_sql import Entered

log = logging.getLogger(__name__)

#: How far back the admission rate is measured.
RATE_SPAN_S = 30.0
#: How long after its end a sale's line is still moved on (to close it).
AFTER_END = timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinesConfig:
    """The waiting room's knobs; the application builds this from its settings."""

    tick_s: float


@dataclass(frozen=True, slots=True)
class LinesStatistics:
    """What the waiting room did in this process, for /metrics and tests."""

    lines: int
    ticks: int
    failed_ticks: int
    joined: int
    watching: int


class Lines:
    """Handle to the running lines actor; see :func:`open_lines`."""

    def __init__(self, ledger: Ledger, sales: Callable[[], list[Sale]],
                 now: Callable[[], datetime], config: LinesConfig) -> None:
        self._ledger = ledger
        self._sales = sales
        self._now = now
        self._config = config
        self._lines: dict[uuid.UUID, Line] = {}
        self._changed: dict[uuid.UUID, trio.Event] = defaultdict(trio.Event)
        # Each watched position's event, woken when it is admitted or the line closes.
        self._turns: dict[uuid.UUID, dict[int, trio.Event]] = defaultdict(dict)
        self._due: dict[uuid.UUID, list[int]] = defaultdict(list)
        self._positions: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
        self._reading: dict[uuid.UUID, trio.Lock] = defaultdict(trio.Lock)
        self._loading: dict[uuid.UUID, trio.Lock] = defaultdict(trio.Lock)
        self._moments: dict[uuid.UUID, dict[int, datetime]] = defaultdict(dict)
        self._samples: dict[uuid.UUID, deque[tuple[float, int]]] = defaultdict(deque)
        self._ticks = 0
        self._failed = 0
        self._joined = 0

    def line(self, sale_id: uuid.UUID) -> Line | None:
        """The sale's line as this process last read it; None before its first read."""
        return self._lines.get(sale_id)

    async def read(self, sale: Sale) -> Line | None:
        """The sale's line, moved on now (None: the sale has no waiting room).

        Raises:
            BackendUnavailable: PostgreSQL is down or too slow.
        """
        line = await self._ledger.call(places_sql.advance_line, sale.id)
        if line is not None:
            await self._load_moments(line)
            self._learn(line)
        return line

    def admitted_at(self, sale_id: uuid.UUID, position: int) -> datetime | None:
        """When the ticket at ``position`` was admitted, as this process last read it."""
        return self._moments[sale_id].get(position)

    async def _load_moments(self, line: Line) -> None:
        """Read when the positions admitted since the last read were admitted: one query a
        pass for the whole process, before their streams wake to tell them."""
        moments = self._moments[line.sale_id]
        async with self._loading[line.sale_id]:
            upto = max(moments, default=0)
            if line.admitted > upto:
                moments.update(await self._ledger.call(places_sql.admission_moments,
                                                       line.sale_id, upto, line.admitted))

    async def join(self, sale: Sale, user_id: str) -> tuple[Entered, Ticket | None]:
        """Give ``user_id`` a ticket in the sale's line (their own again if they have one).

        Raises:
            BackendUnavailable: PostgreSQL is down or too slow.
        """
        entered, ticket = await self._ledger.call(places_sql.join_line, sale.id, user_id)
        if entered is Entered.JOINED:
            self._joined += 1
        if ticket is not None and ticket.position is not None:
            self._positions[sale.id][ticket.id] = ticket.position
        return entered, ticket

    async def ticket(self, sale: Sale, ticket: uuid.UUID | None = None,
                     user_id: str | None = None) -> Ticket | None:
        """A ticket of the sale, by id or by user, as PostgreSQL holds it now."""
        return await self._ledger.call(places_sql.find_ticket, sale.id, ticket, user_id)

    async def audit(self, sale: Sale) -> tuple[Line | None, list[Ticket]]:
        """The sale's line and every ticket in it, in arrival order."""
        return await self._ledger.call(places_sql.line_audit, sale.id)

    async def position(self, sale: Sale, ticket: Ticket) -> int | None:
        """The ticket's position: None until the opening placed it. Read from this process's
        copy of the placed line, loaded once per opening, not once per ticket."""
        if ticket.position is not None:
            return ticket.position
        known = self._positions[sale.id]
        if ticket.id in known:
            return known[ticket.id]
        line = self._lines.get(sale.id)
        if line is None or not line.ordered:
            return None
        # Every stream of the line asks at the opening: one of them reads, the others wait
        # for its answer instead of each reading the whole line.
        async with self._reading[sale.id]:
            if ticket.id not in known:
                known.update(await self._ledger.call(places_sql.line_positions, sale.id,
                                                     max(known.values(), default=0)))
        return known.get(ticket.id)

    def rate(self, sale: Sale) -> float:
        """Tickets admitted a second, as measured over the last :data:`RATE_SPAN_S` while
        the line had tickets waiting; the sale's own rate until there is a measure."""
        assert sale.waiting_room is not None
        samples = self._samples.get(sale.id)
        if samples and len(samples) > 1 and samples[-1][0] - samples[0][0] >= 2.0:
            (t0, a0), (t1, a1) = samples[0], samples[-1]
            if a1 > a0:
                return (a1 - a0) / (t1 - t0)
        return sale.waiting_room.admit_per_s

    async def changed(self, sale_id: uuid.UUID) -> None:
        """Wait until this process next learns something new of the sale's line."""
        await self._changed[sale_id].wait()

    async def turn(self, sale_id: uuid.UUID, position: int) -> None:
        """Wait until the ticket at ``position`` is admitted or the line closes."""
        line = self._lines.get(sale_id)
        if line is not None and (line.admits(position) or line.closed is not None):
            return
        # Streams of the same ticket share one event; it is dropped once set.
        turns = self._turns[sale_id]
        if position not in turns:
            turns[position] = trio.Event()
            heapq.heappush(self._due[sale_id], position)
        await turns[position].wait()

    def statistics(self) -> LinesStatistics:
        """A snapshot of the room's work in this process."""
        return LinesStatistics(lines=len(self._lines), ticks=self._ticks,
                              failed_ticks=self._failed, joined=self._joined,
                              watching=sum(len(t) for t in self._turns.values()))

    def _learn(self, line: Line) -> None:
        """Take a line read from PostgreSQL: wake the positions it admitted, or every one if
        it closed, and whoever watches the line."""
        before = self._lines.get(line.sale_id)
        self._lines[line.sale_id] = line
        if line.ordered and line.closed is None and line.admitted < line.length:
            samples = self._samples[line.sale_id]
            samples.append((trio.current_time(), line.admitted))
            while samples and samples[0][0] < trio.current_time() - RATE_SPAN_S:
                samples.popleft()
        if before == line:
            return
        turns, due = self._turns[line.sale_id], self._due[line.sale_id]
        # The positions watched, smallest first: an admission wakes only those it admits.
        while due and (line.closed is not None or due[0] <= line.admitted):
            turns.pop(heapq.heappop(due)).set()
        self._changed.pop(line.sale_id, trio.Event()).set()

    def _open_lines(self) -> list[Sale]:
        """The sales whose line may move now: from the opening (a line only takes tickets
        before it, which needs no pass) to just past the end (to close it)."""
        now = self._now()
        return [sale for sale in self._sales()
                if sale.waiting_room is not None
                and sale.start_time - timedelta(seconds=self._config.tick_s) <= now
                and now < sale.end_time + AFTER_END
                and (self._lines.get(sale.id) is None
                     or self._lines[sale.id].closed is None)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move every open line on, and close it once its sale is sold out for good."""
        task_status.started()
        while True:
            for sale in self._open_lines():
                try:
                    await self._tick(sale)
                except BackendUnavailable:
                    self._failed += 1
                    log.warning("could not move the line of sale %s on; trying again",
                                sale.id)
            self._ticks += 1
            await trio.sleep(self._config.tick_s)

    async def _tick(self, sale: Sale) -> None:
        line = await self.read(sale)
        if line is None or line.closed is not None:
            return
        if (await self._ledger.tally(sale.id)).sold_out:
            await self._ledger.call(places_sql.close_line, sale.id, "sold_out")
            await self.read(sale)


@asynccontextmanager
async def open_lines(ledger: Ledger, sales: Callable[[], list[Sale]],
                            now: Callable[[], datetime],
                            config: LinesConfig) -> AsyncIterator[Lines]:
    """Run the waiting room: every ``config.tick_s``, move each open line on.

    Args:
        ledger: the ledger whose PostgreSQL holds the lines.
        sales: every sale this process knows (the catalog's).
        now: the clock the lines' windows are judged by (the catalog's, PostgreSQL's).
        config: the room's knobs.
    """
    room = Lines(ledger, sales, now, config)
    async with open_actor_nursery() as nursery:
        await nursery.start(room.run)
        yield room
        nursery.cancel_scope.cancel()


__all__ = ["Lines", "LinesConfig", "LinesStatistics", "open_lines"]
