"""The sale catalog: every scheduled sale, held in memory and refreshed from the ledger.

The purchase path asks the catalog which sale is current without touching PostgreSQL;
the clock decides the status, so transitions happen exactly at ``startTime`` and
``endTime`` however stale the list is. Which sale is current changes only at one of those
instants, so the answer is kept for the span between the two around ``now``, and every
request between them pays a comparison rather than a scan of the list.

An operator's change reaches every process at once: whoever writes it publishes a notice,
and :meth:`Catalog.nudge` reloads the list now (retried quickly while it fails); the
periodic refresh stays as the backstop for a notice that was lost. Sales whose stock or
window changed are reported to ``on_change``, so what was concluded from the old
definition (a sale known to be sold out) is dropped.

The window is judged by PostgreSQL's clock, as the commit is: each refresh measures the
offset of the local clock from the database's, and :meth:`Catalog.now` applies it, so a
host whose clock runs ahead does not open a sale the database still holds closed.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from ._nursery import open_actor_nursery
from .errors import BackendUnavailable
from .model import Sale, SaleStatus, pick_current, utc_now

log = logging.getLogger(__name__)

#: How long after its end a sale is still listed and its gate still reconciled.
RECENT = timedelta(hours=1)
#: How soon a refresh asked for by a change notice is tried again when it fails.
NUDGE_RETRY_S = 0.25

OnChange = Callable[[list[uuid.UUID]], None]
DatabaseTime = Callable[[], Awaitable[datetime]]


@dataclass(frozen=True, slots=True)
class CatalogStatistics:
    """A snapshot of the catalog, for /metrics and tests."""

    sales: int
    refreshes: int
    failed_refreshes: int


class Catalog:
    """Handle to the running catalog; see :func:`open_catalog`."""

    def __init__(self, fetch: Callable[[], Awaitable[list[Sale]]], refresh_s: float, *,
                 on_change: Iterable[OnChange] = (), database_time: DatabaseTime | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._on_change = tuple(on_change)
        self._database_time = database_time
        self._clock = clock
        self._offset = timedelta(0)
        self._nudged = trio.Event()
        self._sales: list[Sale] = []
        self._by_id: dict[uuid.UUID, Sale] = {}
        # Every start and end, sorted; and the current sale with the span it holds for.
        self._instants: list[datetime] = []
        self._current: tuple[datetime | None, datetime | None, Sale | None] | None = None
        self._refreshes = 0
        self._failed = 0

    def current(self, now: datetime) -> Sale | None:
        """The sale whose window holds ``now``, else the next upcoming, else the last ended."""
        kept = self._current
        if kept is not None:
            since, until, sale = kept
            if (since is None or since <= now) and (until is None or now < until):
                return sale
        sale = pick_current(self._sales, now)
        # Statuses, and so the pick, hold from the last instant at or before now to the next.
        at = bisect.bisect_right(self._instants, now)
        self._current = (self._instants[at - 1] if at else None,
                         self._instants[at] if at < len(self._instants) else None, sale)
        return sale

    def sales(self) -> list[Sale]:
        """Every scheduled sale, as last loaded."""
        return list(self._sales)

    def recent(self, now: datetime) -> list[Sale]:
        """Every sale upcoming or running at ``now``, or ended within :data:`RECENT`, by start."""
        return [s for s in self._sales
                if s.status(now) is not SaleStatus.ENDED or now - s.end_time < RECENT]

    def get(self, sale_id: uuid.UUID) -> Sale | None:
        """A sale by id, or None."""
        return self._by_id.get(sale_id)

    def now(self) -> datetime:
        """The time by PostgreSQL's clock, as last measured (the local clock without one)."""
        return self._clock() + self._offset

    def nudge(self) -> None:
        """A sale changed: reload the list now, not at the next periodic refresh."""
        self._nudged.set()

    async def refresh(self) -> None:
        """Reload the list of sales from the ledger now (and measure the database's clock)."""
        if self._database_time is not None:
            before = self._clock()
            database_now = await self._database_time()
            after = self._clock()
            self._offset = database_now - (before + (after - before) / 2)
        changed = self._hold(await self._fetch())
        self._refreshes += 1
        if changed:
            log.info("sales changed: %s", ", ".join(str(s) for s in changed))
            for notify in self._on_change:
                notify(changed)

    def _hold(self, sales: list[Sale]) -> list[uuid.UUID]:
        """Hold ``sales``; return the ids of those whose stock or window changed."""
        old = self._by_id
        self._sales = sales
        self._by_id = {sale.id: sale for sale in sales}
        self._instants = sorted({t for sale in sales for t in (sale.start_time, sale.end_time)})
        self._current = None
        return [sale.id for sale in sales
                if (was := old.get(sale.id)) is not None and _definition(was) != _definition(sale)]

    def statistics(self) -> CatalogStatistics:
        """Return a snapshot of the catalog's counters."""
        return CatalogStatistics(len(self._sales), self._refreshes, self._failed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load once, then refresh every ``refresh_s``, keeping the last list on failure."""
        await self.refresh()
        task_status.started()
        while True:
            with trio.move_on_after(self._refresh_s):
                await self._nudged.wait()
            nudged = self._nudged.is_set()
            # A notice that arrives during the refresh asks for another one after it.
            self._nudged = trio.Event()
            try:
                await self.refresh()
            except BackendUnavailable:
                self._failed += 1
                log.warning("catalog refresh failed; keeping %d sales", len(self._sales))
                if nudged:
                    await trio.sleep(min(NUDGE_RETRY_S, self._refresh_s))
                    self._nudged.set()


def _definition(sale: Sale) -> tuple[int, datetime, datetime]:
    return sale.total_stock, sale.start_time, sale.end_time


@asynccontextmanager
async def open_catalog(fetch: Callable[[], Awaitable[list[Sale]]], refresh_s: float = 1.0, *,
                       on_change: Iterable[OnChange] = (),
                       database_time: DatabaseTime | None = None,
                       clock: Callable[[], datetime] = utc_now) -> AsyncIterator[Catalog]:
    """Open the catalog; yields once the first list of sales has loaded.

    Args:
        fetch: reads every sale from the ledger.
        refresh_s: the period of the backstop refresh.
        on_change: called with the ids of sales whose stock or window a refresh found changed.
        database_time: reads PostgreSQL's clock; with it, :meth:`Catalog.now` follows that
            clock rather than ``clock``.
        clock: the local clock.
    """
    catalog = Catalog(fetch, refresh_s, on_change=on_change, database_time=database_time,
                      clock=clock)
    async with open_actor_nursery() as nursery:
        await nursery.start(catalog.run)
        try:
            yield catalog
        finally:
            nursery.cancel_scope.cancel()
