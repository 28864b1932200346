"""The reconciler actor: every gate in Redis is brought back to the ledger's truth.

Every ``interval_s``, for every sale with a gate (upcoming, running, or ended within the last
hour), the reconciler checks the conservation law and repairs any drift, atomically and in
this order:

1. pending holders whose purchase the ledger committed are settled;
2. committed buyers the gate does not hold (a Redis restored from an older snapshot, a
   failover to a lagging replica, a hash emptied by hand) are claimed back;
3. the stock is recomputed as ``total - holders``, never below 0;
4. pending holders older than ``grace_s`` (by Redis's clock) that never committed, asked of
   the ledger under their advisory locks, are released with their unit back on sale.

Only what is in doubt is read each time: the pending holders and a few counters. The whole
buyers hash is read only when the counts prove a committed buyer is missing. A release names
the exact reservation, so reconcilers in many processes never return a unit twice.
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
from .catalog import RECENT, Catalog
from .errors import BackendUnavailable
from .ledger import Ledger
from .model import Sale, Tally
from .stock_gate import InDoubt, StockGate

log = logging.getLogger(__name__)

#: How long after its end a sale's gate is still reconciled: as long as it is listed.
ENDED_WINDOW = RECENT
#: Pending holders read per sale per pass.
PENDING_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Repair:
    """What one pass changed in one sale's gate."""

    settled: int = 0
    claimed: int = 0
    stock_before: int | None = None
    stock_after: int | None = None
    returned: int = 0

    @property
    def recounted(self) -> bool:
        """Whether the stock counter had drifted and was set right."""
        return self.stock_before != self.stock_after


@dataclass(frozen=True, slots=True)
class ReconcilerStatistics:
    """A snapshot of the reconciler, for /metrics and tests."""

    runs: int
    returned: int
    failed_runs: int
    claimed: int
    recounted: int
    settled: int


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
        self._recounted = 0
        self._settled = 0

    def sales_to_check(self, now: datetime) -> list[Sale]:
        """Every sale that may have a gate: not ended, or ended within the last hour."""
        return self._catalog.recent(now)

    async def reconcile(self, sale: Sale) -> Repair:
        """Make the gate of ``sale`` agree with the ledger; return what was changed."""
        sale_id = sale.id
        # The committed count is read first: commits landing after it only raise what the
        # gate shows as settled, so a shortfall below it is a committed buyer truly missing.
        # The stock is read with it: this process's copy of the sale may be stale.
        tally = await self._ledger.tally(sale_id)
        sold = tally.sold
        view = await self._gate.store.in_doubt(sale_id, PENDING_LIMIT)
        if view.stock is None:
            return Repair()
        found = await self._ledger.purchases(sale_id, list(view.oldest))
        committed = {u: pid for u, (pid, _) in view.oldest.items()
                     if u in found and str(found[u].id) == pid}
        settled = await self._gate.store.settle(sale_id, committed)
        # A pending holder whose user committed another purchase (a Redis restored from a
        # snapshot older than that reservation's undoing) can never commit: the committed
        # purchase, which the gate did not hold, takes its place now.
        replaced = {u: str(found[u].id) for u, (pid, _) in view.oldest.items()
                    if u in found and str(found[u].id) != pid}
        replaced_n = (await self._gate.store.claim(
            sale_id, replaced, {u: found[u].quantity for u in replaced}) if replaced else 0)
        claimed = 0
        complete = view.pending <= len(view.oldest)
        recount = True
        if complete and (sale.holds or (sale.per_user_limit > 1
                                        and await self._units_drifted(sale, tally, view))):
            # Rows of a sale with holds also leave: a holder the ledger no longer has (a
            # Redis restored from before a lapse) weighs as much as a missing one, so the
            # counts alone cannot show drift. The holders are matched to the rows each pass;
            # in a sale of several units a buyer, when the stock shows drift.
            claimed = await self._true_up_holders(sale)
            # The holders are now the rows: the stock follows them alone. The count read
            # before the pass is no floor here, since rows of a sale with holds also leave.
            tally = Tally(tally.total_stock, 0)
        elif sale.per_user_limit > 1:
            recount = False  # the stock agrees with the ledger: nothing to sum
        elif complete and sold > view.holders - view.pending + len(committed) + len(replaced):
            claimed, tally = await self._claim_missing(sale)
        counts = (await self._gate.recount(sale_id, tally, sale.per_user_limit > 1)
                  if recount else None)
        returned, reclaimed = await self._return_stale(sale_id, view.now_ms, {
            u: pid for u, (pid, at_ms) in view.oldest.items()
            if u not in found and view.now_ms - at_ms >= self._grace_ms})
        before, after = counts or (None, None)
        repair = Repair(settled, claimed + replaced_n + reclaimed, before, after, returned)
        self._record(sale_id, repair)
        return repair

    async def _units_drifted(self, sale: Sale, before: Tally, view: InDoubt) -> bool:
        """Whether the gate of a sale of several units a buyer disagrees with the ledger.

        Read without summing the holders, from the ledger's units and rows read before the
        gate (``before``) and again after it (commits only add to both). A sound gate's
        stock is at most the units the first read left unsold, and at least those the second
        left less what the pending holders may hold (each up to the sale's limit); it has at
        least as many holders as the first read has rows, and no more settled holders than
        the second has.
        """
        after = await self._ledger.tally(sale.id)
        stock = view.stock or 0
        most = before.total_stock - before.sold
        least = after.total_stock - after.sold - view.pending * sale.per_user_limit
        return (not least <= stock <= most or view.holders < before.buyers
                or view.holders - view.pending > after.buyers)

    async def _claim_missing(self, sale: Sale) -> tuple[int, Tally]:
        state = await self._ledger.state(sale)
        held = await self._gate.store.holders(sale.id)
        missing = {u: pid for u, pid in state.buyers.items() if u not in held}
        return (await self._gate.store.claim(sale.id, missing, state.quantities),
                Tally(state.total_stock, state.sold))

    async def _true_up_holders(self, sale: Sale) -> int:
        """Make the holders of a sale with holds or quantities its rows: a settled holder
        without its row goes, a row without its holder comes, in one step so that no unit is
        free in between.

        The holders (and which are pending) are read before the ledger, so a holder that
        ended after the read goes, as its own handover would take it, and one reserved after
        it is not seen; a pending holder is left to the commit in flight or to the grace.
        Each move names its purchase ids, so one applied twice, or beside the ending's own
        handover, changes nothing more. Returns how many holders were moved.
        """
        held = await self._gate.store.holders(sale.id)
        pending = set((await self._gate.store.in_doubt(sale.id, PENDING_LIMIT)).oldest)
        state = await self._ledger.state(sale)
        rows = state.buyers
        stale = [(u, pid) for u, pid in held.items() if rows.get(u) != pid and u not in pending]
        missing = [(u, pid, state.quantities.get(u, 1)) for u, pid in rows.items()
                   if held.get(u) != pid]
        if not stale and not missing:
            return 0
        await self._gate.handover(sale.id, stale, missing)
        log.warning("matched the holders of a sale with holds to its rows: %d gone, %d came",
                    len(stale), len(missing), extra={"sale_id": str(sale.id)})
        return len(stale) + len(missing)

    async def _return_stale(self, sale_id: uuid.UUID, now_ms: int,
                            stale: dict[str, str]) -> tuple[int, int]:
        """Release stale holders that never committed, as the ledger says under their locks.

        Returns (reservations returned, committed purchases recorded in their place).
        """
        if not stale:
            return 0, 0
        resolved = await self._ledger.resolve(sale_id, list(stale))
        returned = claimed = 0
        for user, purchase_id in stale.items():
            standing = resolved.get(user)
            if standing is not None and str(standing.id) == purchase_id:
                self._settled += await self._gate.store.settle(sale_id, {user: purchase_id})
                continue
            if await self._gate.release(sale_id, user, uuid.UUID(purchase_id), restock=True):
                returned += 1
                log.warning("returned a reservation that never committed",
                            extra={"sale_id": str(sale_id), "purchase_id": purchase_id})
            if standing is not None:
                # The user's purchase is another one: the gate holds that one instead.
                claimed += await self._gate.store.claim(sale_id, {user: str(standing.id)},
                                                        {user: standing.quantity})
        return returned, claimed

    def _record(self, sale_id: uuid.UUID, repair: Repair) -> None:
        self._settled += repair.settled
        self._claimed += repair.claimed
        self._returned += repair.returned
        if repair.claimed:
            log.warning("recorded %d committed purchases the gate did not hold", repair.claimed,
                        extra={"sale_id": str(sale_id)})
        if repair.recounted:
            self._recounted += 1
            log.warning("gate stock drifted: %s set to %s", repair.stock_before,
                        repair.stock_after, extra={"sale_id": str(sale_id)})

    def statistics(self) -> ReconcilerStatistics:
        """Return a snapshot of the reconciler's counters."""
        return ReconcilerStatistics(self._runs, self._returned, self._failed, self._claimed,
                                    self._recounted, self._settled)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile every sale with a gate every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._interval_s)
            for sale in self.sales_to_check(self._clock()):
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
