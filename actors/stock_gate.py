"""The stock-gate actor: Redis turns most of the crowd away in O(1).

Requests queue in a bounded inbox; the actor drains whatever has gathered and sends it
to Redis as one Lua call per sale, so a burst of N requests costs one round trip and one
trio-asyncio crossing.

The gate answers only what is true. A unit reserved is a seat, not yet a sale; a user who
holds a unit is reported as such, for the caller to ask the ledger whether it committed.
When the gate reads 0 the sale is not yet sold out: such requests wait in the sale's queue
(:mod:`actors.wait_queue`), which alone answers ``SoldOut``, once the ledger holds every unit.

The gate is three parts, each in its own module, opened together by :func:`open_stock_gate`:
this batching actor; the waiting queues with the sold-out memory (:mod:`actors.wait_queue`);
and the gates in Redis (:mod:`actors.gate_store`), which loads a gate from the ledger and
repairs it for the reconciler, the admin API and the readiness check. :class:`StockGate` is
the one handle to all three: it owns the other two (``gate.store``, ``gate.queues``), and
where a unit may have come back, it has the queues look again.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from ._batching import batches
from ._nursery import open_actor_nursery
from ._slot import Slot
from .errors import BackendUnavailable, Overloaded, Undecided
from .gate_messages import GateAnswer, Reserve, Seat
from .gate_store import GateStore, InDoubt, Loader, open_gate_store
from .model import Sale, Tally
from .wait_queue import Counter, WaitQueues, open_wait_queues


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot of the gate's work, for /metrics and tests."""

    inbox_depth: int
    batches: int
    reserved_requests: int
    largest_batch: int
    local_sold_out_answers: int
    sold_out_sales: int
    waiting: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """The gate's knobs; the application builds this from its settings, which hold the defaults."""

    redis_url: str
    key_prefix: str
    inbox_size: int
    batch_max: int
    timeout_s: float
    doubt_poll_s: float
    #: How long a reservation waits for a unit to come back when its caller names no deadline.
    wait_s: float


async def seat(store: GateStore, requests: list[Reserve]) -> list[Reserve]:
    """Reserve for ``requests`` (one sale) in one Redis call and answer each one seated.

    Returns the requests that found no stock, unanswered, in their order.
    """
    answers = await store.reserve(requests[0].sale,
                                  [(r.user_id, str(r.purchase_id), r.quantity) for r in requests])
    empty: list[Reserve] = []
    for request, answer in zip(requests, answers, strict=True):
        if answer is None:
            empty.append(request)
        else:
            request.reply.set(answer)
    return empty


class StockGate:
    """Handle to a running stock gate; see :func:`open_stock_gate`."""

    def __init__(self, config: GateConfig, store: GateStore, queues: WaitQueues) -> None:
        self._config = config
        self._store = store
        self._queues = queues
        self._send, self._inbox = trio.open_memory_channel[Reserve](config.inbox_size)
        self._batches = 0
        self._reserved_requests = 0
        self._largest_batch = 0

    # -- requests ---------------------------------------------------------------------

    async def reserve(self, sale: Sale, user_id: str, purchase_id: uuid.UUID, *,
                      deadline: float | None = None, quantity: int = 1) -> GateAnswer:
        """Reserve ``quantity`` units for ``user_id``, all or none, or report the units the
        user already holds.

        When the gate has too few the request waits, until ``deadline`` (trio time; by
        default ``wait_s`` from now), for units to come back or for the answer to be final.

        Raises:
            SoldOut: every unit of the sale is committed (final).
            InsufficientStock: fewer units than ``quantity`` can ever be sold (final).
            AlreadyPurchased: the sale is sold out for good and the user is among its buyers.
            Undecided: the deadline passed with the answer still in doubt.
            Overloaded: the inbox is full.
            BackendUnavailable: Redis is down or too slow.
        """
        self._queues.answer_from_memory(sale, user_id)
        if deadline is None:
            deadline = trio.current_time() + self._config.wait_s
        request = Reserve(sale, user_id, purchase_id, deadline, Slot(), quantity)
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise Overloaded("stock_gate") from None
        # The wait ends at the deadline even while batches ahead of this one are stuck in
        # Redis; a request still queued then is skipped, never sent.
        with trio.move_on_at(deadline):
            return await request.reply.wait()
        request.reply.fail(Undecided())
        return await request.reply.wait()

    @property
    def store(self) -> GateStore:
        """The gates in Redis (:mod:`actors.gate_store`): load, read and repair a sale's gate.

        A release, a recount or a settle mark goes through the gate's own methods below
        instead, so the sale's waiters look again.
        """
        return self._store

    @property
    def queues(self) -> WaitQueues:
        """The waiting queues and the sold-out memory (:mod:`actors.wait_queue`)."""
        return self._queues

    def statistics(self) -> GateStatistics:
        """Return a snapshot of the gate's counters."""
        queues = self._queues.statistics()
        return GateStatistics(
            inbox_depth=self._inbox.statistics().current_buffer_used,
            batches=self._batches,
            reserved_requests=self._reserved_requests,
            largest_batch=self._largest_batch,
            local_sold_out_answers=queues.local_sold_out_answers,
            sold_out_sales=queues.sold_out_sales,
            waiting=queues.waiting,
        )

    # -- where a unit may come back: the queues look again ------------------------------

    def settle_soon(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID) -> None:
        """A purchase committed: queue its settle mark, and have the sale's waiters look again."""
        self._store.settle_soon(sale_id, user_id, purchase_id)
        self._queues.poke(sale_id)

    async def release(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID, *,
                      restock: bool) -> bool:
        """:meth:`GateStore.release <actors.gate_store.GateStore.release>`, then a look again."""
        released = await self._store.release(sale_id, user_id, purchase_id, restock=restock)
        if released:
            self._queues.poke(sale_id)
        return released

    async def handover(self, sale_id: uuid.UUID, leaving: list[tuple[str, str]],
                       coming: list[tuple[str, str, int]]) -> int | None:
        """:meth:`GateStore.handover <actors.gate_store.GateStore.handover>`, then a look."""
        stock = await self._store.handover(sale_id, leaving, coming)
        self._queues.poke(sale_id)
        return stock

    async def recount(self, sale_id: uuid.UUID, tally: Tally,
                      quantities: bool = False) -> tuple[int, int] | None:
        """:meth:`GateStore.recount <actors.gate_store.GateStore.recount>`; more stock: a look."""
        counts = await self._store.recount(sale_id, tally, quantities)
        if counts is not None and counts[1] > counts[0]:
            self._queues.poke(sale_id)
        return counts

    # -- the actor loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the inbox in batches until cancelled (the store has found Redis answering)."""
        task_status.started()
        async for batch in batches(self._inbox, self._config.batch_max):
            await self._serve_batch(batch)

    async def _serve_batch(self, batch: list[Reserve]) -> None:
        self._batches += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        self._reserved_requests += len(batch)
        by_sale: dict[uuid.UUID, list[Reserve]] = defaultdict(list)
        for request in batch:
            # A request whose caller stopped waiting is not sent.
            if not request.reply.done:
                by_sale[request.sale.id].append(request)
        for sale_id, requests in by_sale.items():
            sale = requests[0].sale
            if self._queues.has_line(sale_id):
                self._queues.join(sale, requests)
                continue
            try:
                empty = await seat(self._store, requests)
            except BackendUnavailable as exc:
                for request in requests:
                    request.reply.fail(exc)
                continue
            if empty:
                self._queues.join(sale, empty)


@asynccontextmanager
async def open_stock_gate(config: GateConfig, loader: Loader,
                          counter: Counter) -> AsyncIterator[StockGate]:
    """Open the stock gate; yields once Redis answers, stops its loop, queues and store on exit.

    Args:
        config: connection and batching settings.
        loader: reads a sale's committed state from the ledger, to (re)build the gate.
        counter: reads how many units of a sale the ledger holds committed.
    """
    async with (
        open_gate_store(config.redis_url, config.key_prefix, config.timeout_s, loader,
                        marks_size=config.inbox_size, batch_max=config.batch_max) as store,
        open_wait_queues(store, partial(seat, store), loader, counter,
                         batch_max=config.batch_max, poll_s=config.doubt_poll_s) as queues,
        open_actor_nursery() as nursery,
    ):
        gate = StockGate(config, store, queues)
        await nursery.start(gate.run)
        try:
            yield gate
        finally:
            nursery.cancel_scope.cancel()


__all__ = [
    "GateAnswer",
    "GateConfig",
    "GateStatistics",
    "InDoubt",
    "Reserve",
    "Seat",
    "StockGate",
    "open_stock_gate",
]
