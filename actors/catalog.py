"""The sale catalog: every scheduled sale, held in memory and refreshed from the ledger.

The purchase path asks the catalog which sale is current without touching PostgreSQL;
the clock decides the status, so transitions happen exactly at ``startTime`` and
``endTime`` however stale the list is. Which sale is current changes only at one of those
instants, so the answer is kept for the span between the two around ``now``, and every
request between them pays a comparison rather than a scan of the list.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from ._nursery import open_actor_nursery
from .errors import BackendUnavailable
from .model import Sale, SaleStatus, pick_current

log = logging.getLogger(__name__)

#: How long after its end a sale is still listed and its gate still reconciled.
RECENT = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class CatalogStatistics:
    """A snapshot of the catalog, for /metrics and tests."""

    sales: int
    refreshes: int
    failed_refreshes: int


class Catalog:
    """Handle to the running catalog; see :func:`open_catalog`."""

    def __init__(self, fetch: Callable[[], Awaitable[list[Sale]]], refresh_s: float) -> None:
        self._fetch = fetch
        self._refresh_s = refresh_s
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

    async def refresh(self) -> None:
        """Reload the list of sales from the ledger now."""
        self._hold(await self._fetch())
        self._refreshes += 1

    def _hold(self, sales: list[Sale]) -> None:
        self._sales = sales
        self._by_id = {sale.id: sale for sale in sales}
        self._instants = sorted({t for sale in sales for t in (sale.start_time, sale.end_time)})
        self._current = None

    def statistics(self) -> CatalogStatistics:
        """Return a snapshot of the catalog's counters."""
        return CatalogStatistics(len(self._sales), self._refreshes, self._failed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load once, then refresh every ``refresh_s``, keeping the last list on failure."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except BackendUnavailable:
                self._failed += 1
                log.warning("catalog refresh failed; keeping %d sales", len(self._sales))


@asynccontextmanager
async def open_catalog(fetch: Callable[[], Awaitable[list[Sale]]],
                       refresh_s: float = 1.0) -> AsyncIterator[Catalog]:
    """Open the catalog; yields once the first list of sales has loaded."""
    catalog = Catalog(fetch, refresh_s)
    async with open_actor_nursery() as nursery:
        await nursery.start(catalog.run)
        try:
            yield catalog
        finally:
            nursery.cancel_scope.cancel()
