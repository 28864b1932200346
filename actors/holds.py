"""The holds actor: payment windows that end on time, once, and a waitlist served in order.

In a sale with holds, a winning press commits a hold (:mod:`actors.user_serializer`), and
this actor owns everything after: confirm and cancel, the lapse of unpaid holds, the places
of the waitlist and the buyers' standing. PostgreSQL decides each step
(:mod:`actors.holds_sql`), so whichever process or host runs it, it happens once.

Every process sweeps for holds past their end every ``sweep_s``; PostgreSQL's row locks let
exactly one of them lapse each hold, and the same transaction hands the unit to the first
waiting place. The gate in Redis is told after the commit (:meth:`StockGate.handover
<actors.stock_gate.StockGate.handover>`), and the ending is marked done; an ending a process
died before telling the gate is found by any process's sweep ``gate_retry_s`` later and told
again, which changes nothing if it was already applied.

The buyers' standing is read for every watcher of a sale at once: one query per sale per
``watch_s``, and at once in the process where a change happened (:meth:`Holds.watch`).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import trio

from . import holds_sql, places_sql
from ._nursery import open_actor_nursery
from .errors import (
    AlreadyPurchased,
    BackendUnavailable,
    InsufficientStock,
    InvalidInput,
    SaleNotActive,
    SoldOut,
    StandingHold,
    Undecided,
    Waitlisted,
)
from .holds_sql import Ending
from .ledger import Ledger
from .model import BuyerStatus, Purchase, Sale, Tally
from .places_sql import Joined, JoinOutcome
from .stock_gate import StockGate

log = logging.getLogger(__name__)

#: Holds lapsed per sale per transaction.
LAPSE_BATCH = 1000
#: How long after an ending no gate build can still be under way from a ledger read before
#: it: a build's read is bounded by the ledger's timeout once per page of buyers.
REBUILD_BOUND_S = 120.0
#: How long a sale's tally shown on its page and stream is reused.
TALLY_TTL_S = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldsConfig:
    """The holds actor's knobs; the application builds this from its settings."""

    sweep_s: float
    gate_retry_s: float
    watch_s: float


@dataclass(frozen=True, slots=True)
class HoldsStatistics:
    """What the holds actor did in this process, for /metrics and tests."""

    made: int
    confirmed: int
    lapsed: int
    cancelled: int
    joined: int
    offered: int
    gate_retries: int
    failed_sweeps: int
    watchers: int


class Holds:
    """Handle to the running holds actor; see :func:`open_holds`."""

    def __init__(self, ledger: Ledger, gate: StockGate, config: HoldsConfig,
                 live: Callable[[], bool] = lambda: True) -> None:
        self._ledger = ledger
        self._live = live
        self._gate = gate
        self._config = config
        self._made = self._confirmed = self._lapsed = self._cancelled = 0
        self._joined = self._offered = self._gate_retries = self._failed_sweeps = 0
        # sale id -> user -> the standings their streams last saw, and the event that wakes
        # every stream of the sale when a standing may have changed
        self._watched: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
        self._latest: dict[uuid.UUID, dict[str, BuyerStatus]] = defaultdict(dict)
        self._changed: dict[uuid.UUID, trio.Event] = defaultdict(trio.Event)
        self._wake = trio.Event()
        self._tallies: dict[uuid.UUID, tuple[float, Tally]] = {}

    # -- the purchase path's calls ----------------------------------------------------------

    def made(self, purchase: Purchase) -> None:
        """A press committed a hold."""
        self._made += 1
        self.touch(purchase.sale_id)

    async def join(self, sale: Sale, user_id: str, quantity: int = 1) -> JoinOutcome:
        """Ask for a place in the sale's waitlist (see :func:`places_sql.join_waitlist`)."""
        outcome = await self._ledger.call(places_sql.join_waitlist, sale.id, user_id, quantity)
        if outcome.joined is Joined.PLACED:
            self._joined += 1
            self.touch(sale.id)
        return outcome

    async def take_a_place(self, sale: Sale, user_id: str, deadline: float,
                           poll_s: float, quantity: int = 1) -> None:
        """A press found fewer units free than it asks, some held: ask the ledger for a
        place for ``quantity`` units.

        Returns only when that many units proved free in the ledger (a reservation in
        flight, a return not yet in the gate), after ``poll_s``, for the press to try the
        gate again.

        Raises:
            Waitlisted: the user's place (202).
            StandingHold, AlreadyPurchased: the user has a hold, or a purchase, already.
            SoldOut: every unit is confirmed (final).
            InsufficientStock: fewer than ``quantity`` units are unconfirmed (final).
            InvalidInput: ``quantity`` is above the sale's per-user limit in the ledger.
            SaleNotActive: the sale ended.
            Undecided: no answer by ``deadline``.
            BackendUnavailable: PostgreSQL did not answer.
        """
        with trio.move_on_at(deadline):
            outcome = await self.join(sale, user_id, quantity)
            if outcome.place is not None:
                raise Waitlisted(outcome.place)
            if outcome.purchase is not None:
                raise (StandingHold(outcome.purchase) if outcome.purchase.held
                       else AlreadyPurchased())
            if outcome.joined is Joined.SOLD_OUT:
                with suppress(BackendUnavailable):
                    await self._gate.queues.learn_sold_out(sale)
                raise SoldOut()
            if outcome.joined is Joined.SHORT:
                raise InsufficientStock(outcome.remaining)
            if outcome.joined is Joined.OVER_LIMIT:
                raise InvalidInput.over_limit(outcome.limit)
            if outcome.joined is Joined.ENDED:
                raise SaleNotActive(started=True)
            await trio.sleep(poll_s)
            return
        raise Undecided()

    async def status(self, sale_id: uuid.UUID, user_id: str) -> BuyerStatus:
        """Where ``user_id`` stands in the sale, as the ledger holds it now."""
        return (await self._ledger.call(holds_sql.buyer_statuses, sale_id, [user_id]))[user_id]

    async def confirm(self, sale_id: uuid.UUID, purchase_id: uuid.UUID) -> Purchase:
        """Confirm a hold (payment); see :func:`holds_sql.confirm` for the refusals."""
        purchase, newly = await self._ledger.call(holds_sql.confirm, sale_id, purchase_id)
        if newly:  # a confirm sent again changes nothing, and is not counted again
            self._confirmed += 1
            self._tallies.pop(sale_id, None)
            self.touch(sale_id)
            # A confirm may make the sale sold out for good: its waiters look again.
            self._gate.queues.poke(sale_id)
        return purchase

    async def cancel(self, sale_id: uuid.UUID, purchase_id: uuid.UUID,
                     user_id: str | None = None) -> Ending:
        """Cancel a hold; its unit returns at once (see :func:`holds_sql.cancel`)."""
        ending = await self._ledger.call(holds_sql.cancel, sale_id, purchase_id, user_id)
        if ending.user_id:
            self._cancelled += 1
            await self._tell_gate([ending])
        return ending

    async def leave(self, sale_id: uuid.UUID, user_id: str) -> bool:
        """Take ``user_id``'s waiting place out of the line; return whether there was one."""
        left = await self._ledger.call(places_sql.leave_waitlist, sale_id, user_id)
        if left:
            self.touch(sale_id)
        return left

    async def tally(self, sale_id: uuid.UUID) -> Tally:
        """The sale's units by where they stand, for display: read at most every
        :data:`TALLY_TTL_S` per process (the decisions read the ledger themselves)."""
        now = trio.current_time()
        cached = self._tallies.get(sale_id)
        if cached is not None and now - cached[0] < TALLY_TTL_S:
            return cached[1]
        counted = await self._ledger.tally(sale_id)
        self._tallies[sale_id] = (now, counted)
        return counted

    # -- the sweep --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Lapse every hold past its end that no other process took; return how many."""
        lapsed = 0
        for sale_id in await self._ledger.call(holds_sql.due_sales):
            while True:
                endings = await self._ledger.call(holds_sql.lapse_due, sale_id, LAPSE_BATCH)
                if not endings:
                    break
                self._lapsed += len(endings)
                lapsed += len(endings)
                await self._tell_gate(endings)
                if len(endings) < LAPSE_BATCH:
                    break
        return lapsed

    async def retry_gate(self) -> int:
        """Tell the gate of endings that a process did not (it died, or Redis failed)."""
        endings = await self._ledger.call(holds_sql.gate_backlog, self._config.gate_retry_s,
                                          LAPSE_BATCH, REBUILD_BOUND_S)
        if endings:
            self._gate_retries += len(endings)
            log.warning("telling the gate of %d ended holds again", len(endings))
            await self._tell_gate(endings, offered=False)
        return len(endings)

    async def _tell_gate(self, endings: list[Ending], *, offered: bool = True) -> None:
        """Move each ended hold's units in the gate, then mark the endings done."""
        by_sale: dict[uuid.UUID, list[Ending]] = defaultdict(list)
        for ending in endings:
            by_sale[ending.sale_id].append(ending)
            if offered:
                self._offered += len(ending.offers)
        done: list[uuid.UUID] = []
        for sale_id, ended in by_sale.items():
            leaving = [(e.user_id, str(e.purchase_id)) for e in ended]
            coming = [(o.user_id, str(o.id), o.quantity) for e in ended for o in e.offers]
            try:
                stock = await self._gate.handover(sale_id, leaving, coming)
            except BackendUnavailable as exc:
                log.warning("ended holds not yet in the gate: %r", exc.__cause__,
                            extra={"sale_id": str(sale_id)})
                continue
            if stock is None:
                # No gate in Redis: the one built next reads the ledger, but a build under
                # way may have read it before these ended. Told again until none can have.
                ended = [e for e in ended if e.past_rebuilds]
            done.extend(e.purchase_id for e in ended)
            self._tallies.pop(sale_id, None)
            self.touch(sale_id)
        if done:
            await self._ledger.call(holds_sql.mark_gate_done, done)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``sweep_s``, each time also telling the gate of the endings left
        untold ``gate_retry_s`` after they ended.

        The backlog is read on every sweep (an index holding only untold endings answers
        it), so an ending reaches the gate within ``gate_retry_s`` and a sweep of its lapse
        whenever any process lives, not up to twice that, as a retry on a clock of its own
        would be.
        """
        task_status.started()
        while True:
            try:
                if self._live():
                    await self.sweep()
                    await self.retry_gate()
            except BackendUnavailable as exc:
                self._failed_sweeps += 1
                log.warning("hold sweep failed: %r", exc.__cause__ or exc)
            await trio.sleep(self._config.sweep_s)

    # -- the buyers' streams ----------------------------------------------------------------

    def touch(self, sale_id: uuid.UUID) -> None:
        """A standing in the sale may have changed: read the watched buyers' again now."""
        if sale_id in self._watched:
            self._wake.set()

    @asynccontextmanager
    async def watch(self, sale_id: uuid.UUID, user_id: str) -> AsyncIterator[WatchHandle]:
        """Follow ``user_id``'s standing in the sale; see :class:`WatchHandle`."""
        watchers = self._watched[sale_id]
        watchers[user_id] = watchers.get(user_id, 0) + 1
        self._wake.set()
        try:
            yield WatchHandle(self, sale_id, user_id)
        finally:
            watchers[user_id] -= 1
            if not watchers[user_id]:
                del watchers[user_id]
                self._latest[sale_id].pop(user_id, None)
            if not watchers:
                del self._watched[sale_id]
                self._latest.pop(sale_id, None)

    def latest(self, sale_id: uuid.UUID, user_id: str) -> BuyerStatus | None:
        """The standing last read for a watched buyer (None before the first read)."""
        return self._latest.get(sale_id, {}).get(user_id)

    async def changed(self, sale_id: uuid.UUID) -> None:
        """Wait until the watched standings of the sale are read again."""
        await self._changed[sale_id].wait()

    async def serve_watchers(self) -> None:
        """Read the standing of every watched buyer, one query per sale, until cancelled."""
        while True:
            with trio.move_on_after(self._config.watch_s):
                await self._wake.wait()
            self._wake = trio.Event()
            for sale_id in list(self._watched):
                users = sorted(self._watched.get(sale_id, ()))
                if not users:
                    continue
                try:
                    found = await self._ledger.call(holds_sql.buyer_statuses, sale_id, users)
                except BackendUnavailable:
                    continue
                watched = self._watched.get(sale_id)
                if watched:
                    # Only those still watching: one who left meanwhile is not put back.
                    self._latest[sale_id].update(
                        (user, status) for user, status in found.items() if user in watched)
                    self._changed.pop(sale_id, trio.Event()).set()

    def statistics(self) -> HoldsStatistics:
        """Return a snapshot of the counters."""
        return HoldsStatistics(
            made=self._made, confirmed=self._confirmed, lapsed=self._lapsed,
            cancelled=self._cancelled, joined=self._joined, offered=self._offered,
            gate_retries=self._gate_retries, failed_sweeps=self._failed_sweeps,
            watchers=sum(sum(w.values()) for w in self._watched.values()))


@dataclass(frozen=True, slots=True)
class WatchHandle:
    """One buyer's standing as the holds actor reads it: :meth:`next` waits for a change."""

    holds: Holds
    sale_id: uuid.UUID
    user_id: str

    async def next(self, seen: BuyerStatus | None, timeout_s: float = math.inf
                   ) -> BuyerStatus | None:
        """The buyer's standing once it differs from ``seen``, or as it is at ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while True:
                latest = self.holds.latest(self.sale_id, self.user_id)
                if latest is not None and latest != seen:
                    return latest
                await self.holds.changed(self.sale_id)
        return self.holds.latest(self.sale_id, self.user_id)


@asynccontextmanager
async def open_holds(ledger: Ledger, gate: StockGate, config: HoldsConfig,
                     live: Callable[[], bool] = lambda: True) -> AsyncIterator[Holds]:
    """Open the holds actor: its sweep and its watchers run until exit.

    ``live`` says whether any hold may still end (a sale with holds not over by its window):
    while it says no, the sweep asks PostgreSQL nothing.
    """
    holds = Holds(ledger, gate, config, live)
    async with open_actor_nursery() as nursery:
        await nursery.start(holds.run)
        nursery.start_soon(holds.serve_watchers)
        try:
            yield holds
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["Holds", "HoldsConfig", "HoldsStatistics", "WatchHandle", "open_holds"]
