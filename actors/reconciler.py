"""The reconciler actor: stock held in Redis for purchases that never committed goes back.

A worker killed between the gate and the ledger, or a reply lost to a timeout, leaves a
reservation in Redis with no row in PostgreSQL. Every ``interval_s`` the reconciler looks
at the current sale's holders older than ``grace_s`` (by Redis's clock), asks the ledger
which of them committed, and releases the rest with their unit back on sale. A release
names the exact reservation, so reconcilers in many processes never return a unit twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import trio

from ._nursery import open_actor_nursery
from .catalog import Catalog
from .errors import BackendUnavailable
from .ledger import Ledger
from .model import Sale, SaleStatus
from .stock_gate import StockGate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcilerStatistics:
    """A snapshot of the reconciler, for /metrics and tests."""

    runs: int
    returned: int
    failed_runs: int
    claimed: int


class Reconciler:
    """Handle to the running reconciler; see :func:`open_reconciler`."""

    def __init__(self, gate: StockGate, ledger: Ledger, catalog: Catalog, *, interval_s: float,
                 grace_s: float, clock: Callable[[], datetime]) -> None:
        self._gate = gate
        self._ledger = ledger
        self._catalog = catalog
        self._interval_s = interval_s
        self._grace_ms = int(grace_s * 1000)
        self._clock = clock
        self._runs = 0
        self._returned = 0
        self._failed = 0
        self._claimed = 0

    async def reconcile(self, sale: Sale) -> int:
        """Make the gate of ``sale`` agree with the ledger; return the units put back on sale.

        Units held too long without a ledger row are returned; committed purchases the gate
        does not hold (a commit whose reply was lost) are recorded in it again.
        """
        sale_id = sale.id
        now_ms, holders = await self._gate.reservations(sale_id)
        committed = await self._ledger.committed_users(sale_id, list(holders))
        if len(committed) < await self._ledger.sold(sale_id):
            state = await self._ledger.state(sale)
            missing = {u: p for u, p in state.buyers.items() if u not in holders}
            claimed = await self._gate.claim(sale_id, missing)
            self._claimed += claimed
            if claimed:
                log.warning("recorded %d committed purchases the gate did not hold", claimed,
                            extra={"sale_id": str(sale_id)})
        stale = {user: pid for user, (pid, at_ms) in holders.items()
                 if at_ms and now_ms - at_ms >= self._grace_ms}
        returned = 0
        for user, purchase_id in stale.items():
            if user in committed:
                continue
            if await self._gate.release(sale_id, user, uuid.UUID(purchase_id), restock=True):
                returned += 1
                log.warning("returned a reservation that never committed",
                            extra={"sale_id": str(sale_id), "purchase_id": purchase_id})
        self._returned += returned
        return returned

    def statistics(self) -> ReconcilerStatistics:
        """Return a snapshot of the reconciler's counters."""
        return ReconcilerStatistics(self._runs, self._returned, self._failed, self._claimed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile the current sale every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._interval_s)
            now = self._clock()
            sale = self._catalog.current(now)
            if sale is None or sale.status(now) is not SaleStatus.ACTIVE:
                continue
            try:
                await self.reconcile(sale)
                self._runs += 1
            except BackendUnavailable:
                self._failed += 1


@asynccontextmanager
async def open_reconciler(gate: StockGate, ledger: Ledger, catalog: Catalog, *,
                          interval_s: float = 5.0, grace_s: float = 30.0,
                          clock: Callable[[], datetime]) -> AsyncIterator[Reconciler]:
    """Open the reconciler; its loop stops on exit."""
    reconciler = Reconciler(gate, ledger, catalog, interval_s=interval_s, grace_s=grace_s,
                            clock=clock)
    async with open_actor_nursery() as nursery:
        await nursery.start(reconciler.run)
        try:
            yield reconciler
        finally:
            nursery.cancel_scope.cancel()
