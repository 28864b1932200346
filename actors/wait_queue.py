"""The requests that wait for a unit to come back, and the gate's memory of sold-out sales.

When the gate reads 0 the sale is not yet sold out: some holders may still fail to commit.
Such requests wait here, in arrival order, in the sale's queue; a watcher re-reads the gate
and hands any unit that comes back to the first of them, and once the ledger holds every
unit the sale is sold out for good: only then is ``SoldOut`` answered, and from then on
from memory, without Redis.

This is the one place a request waits for a unit, so what orders or bounds that wait
belongs here. The queues do not reserve by themselves: they hand their first requests to
the ``seat`` they are given, the batching actor's own reserve call, so a unit taken from
the queue and one taken from the inbox are taken the same way.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import trio

from ._nursery import open_actor_nursery
from .errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    InsufficientStock,
    SoldOut,
    Undecided,
    WaitlistOpen,
)
from .gate_messages import Reserve
from .gate_store import GateStore, Loader
from .model import Sale, Tally

Counter = Callable[[uuid.UUID], Awaitable[Tally]]
#: Reserves for the given requests of one sale and answers them; returns those it could not.
Seater = Callable[[list[Reserve]], Awaitable[list[Reserve]]]


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot of the waiting queues and the sold-out memory, for the gate's statistics."""

    waiting: int
    sold_out_sales: int
    local_sold_out_answers: int


class _Queue:
    """The requests of one sale waiting for a unit to come back, in arrival order."""

    def __init__(self) -> None:
        self.waiting: deque[Reserve] = deque()
        self.wake = trio.Event()

    def poke(self) -> None:
        self.wake.set()


class WaitQueues:
    """Every sale's waiting queue and what is known sold out; see :func:`open_wait_queues`."""

    def __init__(self, store: GateStore, seat: Seater, loader: Loader, counter: Counter, *,
                 batch_max: int, poll_s: float, nursery: trio.Nursery) -> None:
        self._store = store
        self._seat = seat
        self._loader = loader
        self._counter = counter
        self._batch_max = batch_max
        self._poll_s = poll_s
        self._nursery = nursery
        # sale id -> the committed buyers of a sale whose every unit is committed: final.
        self._sold_out: dict[uuid.UUID, frozenset[str]] = {}
        self._queues: dict[uuid.UUID, _Queue] = {}
        self._local_sold_out = 0

    # -- the queues ---------------------------------------------------------------------

    def has_line(self, sale_id: uuid.UUID) -> bool:
        """Whether requests of ``sale_id`` are waiting: a newcomer must then line up too."""
        return sale_id in self._queues

    def join(self, sale: Sale, requests: list[Reserve]) -> None:
        """Put ``requests`` at the back of the sale's queue, starting its watcher if needed.

        Units that come back go to those who asked first, so a request for a sale with a
        queue joins it rather than asking Redis ahead of the ones already waiting.
        """
        queue = self._queues.get(sale.id)
        if queue is None:
            queue = self._queues[sale.id] = _Queue()
            self._nursery.start_soon(self._watch, sale, queue)
        queue.waiting.extend(requests)
        queue.poke()

    def poke(self, sale_id: uuid.UUID) -> None:
        """Have the sale's waiting queue look again now (a commit or release just landed)."""
        queue = self._queues.get(sale_id)
        if queue is not None:
            queue.poke()

    # -- the sold-out memory ------------------------------------------------------------

    def answer_from_memory(self, sale: Sale, user_id: str) -> None:
        """Raise SoldOut or AlreadyPurchased when the sale is known to be sold out for good."""
        buyers = self._sold_out.get(sale.id)
        if buyers is not None:
            self._local_sold_out += 1
            raise AlreadyPurchased() if user_id in buyers else SoldOut()

    async def learn_sold_out(self, sale: Sale) -> bool:
        """Ask the ledger whether every unit is committed (the ledger refused one for stock)."""
        sold_out = await self._sold_out_for_good(sale)
        if sold_out:
            self.poke(sale.id)
        return sold_out

    async def learn_refusal(self, sale: Sale, quantity: int) -> FlashFlowError | None:
        """The ledger refused a purchase of ``quantity`` units for stock: the final answer
        (``SoldOut``, or ``InsufficientStock`` with what is left), or None when that many
        units may still be sold (the press tries again)."""
        tally = await self._counter(sale.id)
        if await self._sold_out_for_good(sale, tally):
            self.poke(sale.id)
            return SoldOut()
        if 0 < tally.unsold < quantity:
            return InsufficientStock(tally.unsold)
        return None

    def redefine(self, sale_ids: Iterable[uuid.UUID]) -> None:
        """An operator changed these sales' stock or window: drop what was concluded from it.

        Whether a sale is sold out is asked of the ledger again, and its waiters look again
        now, so the next answers follow the new definition.
        """
        for sale_id in sale_ids:
            self._sold_out.pop(sale_id, None)
            self.poke(sale_id)

    def forget(self, sale_ids: Iterable[uuid.UUID]) -> None:
        """Drop what this process remembers of sales that are over."""
        for sale_id in sale_ids:
            self._sold_out.pop(sale_id, None)

    def statistics(self) -> QueueStatistics:
        """Return a snapshot of the queues and the memory."""
        return QueueStatistics(
            waiting=sum(len(q.waiting) for q in self._queues.values()),
            sold_out_sales=len(self._sold_out),
            local_sold_out_answers=self._local_sold_out,
        )

    # -- the watcher --------------------------------------------------------------------

    async def _watch(self, sale: Sale, queue: _Queue) -> None:
        """Serve one sale's waiting queue until it is empty.

        Each round hands units back in the gate to the first waiters it can serve, in order;
        while none are served it asks the ledger whether every unit is committed, which makes
        the answer final, or whether fewer units than a waiter asks can still be sold to it.
        Waiters whose deadline passed are told the answer is still in doubt.
        """
        try:
            while queue.waiting:
                self._expire(queue)
                if not queue.waiting:
                    break
                with suppress(BackendUnavailable):
                    if await self._serve_waiting(sale, queue):
                        continue
                    tally = None if sale.id in self._sold_out else await self._counter(sale.id)
                    if await self._sold_out_for_good(sale, tally):
                        for request in queue.waiting:
                            self._answer_final(sale.id, request)
                        queue.waiting.clear()
                        break
                    if tally is not None:
                        await self._answer_short(queue, tally)
                        if not queue.waiting:
                            break
                queue.wake = trio.Event()
                with trio.move_on_after(self._poll_s):
                    await queue.wake.wait()
        finally:
            del self._queues[sale.id]
            for request in queue.waiting:
                request.reply.fail(Undecided())

    async def _answer_short(self, queue: _Queue, tally: Tally) -> None:
        """Answer the waiters whose quantity the ledger's ``tally`` settles.

        Fewer units than asked not yet sold for good: final, ``InsufficientStock``. Fewer
        free than asked, with held units that may come back (a sale with holds): a place in
        the waitlist is the answer. Everyone else waits on.

        A waiter may never have asked the gate (it joined the line behind others) and may
        hold units already: each asks the gate once before it is refused, in batches, so the
        one who holds units hears of them (``Seat.HELD``) rather than that too few are left.
        """
        kept: deque[Reserve] = deque()
        refused: list[Reserve] = []
        for request in queue.waiting:
            if tally.unsold and request.quantity > tally.free:
                refused.append(request)
            else:
                kept.append(request)  # enough free, or none unsold (the sold-out memory answers)
        queue.waiting = kept  # the line goes on growing while the gate is asked
        try:
            for start in range(0, len(refused), self._batch_max):
                for request in await self._seat(refused[start:start + self._batch_max]):
                    request.reply.fail(InsufficientStock(tally.unsold)
                                       if request.quantity > tally.unsold else WaitlistOpen())
        finally:
            # Those the gate did not answer (it failed meanwhile) wait on, first in line.
            queue.waiting.extendleft(reversed([r for r in refused if not r.reply.done]))

    def _expire(self, queue: _Queue) -> None:
        now = trio.current_time()
        kept = deque(r for r in queue.waiting if r.deadline > now and not r.reply.done)
        for request in queue.waiting:
            if request.deadline <= now:
                request.reply.fail(Undecided())
        queue.waiting = kept

    async def _serve_waiting(self, sale: Sale, queue: _Queue) -> bool:
        """Offer the gate's stock to the first waiters; return whether any was answered."""
        stock = await self._store.stock(sale.id)
        if stock is not None and stock <= 0:
            return False
        first = [queue.waiting[i] for i in range(min(len(queue.waiting), self._batch_max))]
        empty = await self._seat(first)
        answered = len(first) - len(empty)
        for _ in range(len(first)):
            queue.waiting.popleft()
        queue.waiting.extendleft(reversed(empty))
        return answered > 0

    async def _sold_out_for_good(self, sale: Sale, tally: Tally | None = None) -> bool:
        """Whether every unit is confirmed; if so, remember the sale's buyers for good.

        ``tally`` is the ledger's, if the caller has just read it.

        The stock is the one PostgreSQL holds beside the count, never ``sale.total_stock``:
        this process's copy of the sale may predate an operator's change.
        """
        if sale.id in self._sold_out:
            return True
        if not (tally or await self._counter(sale.id)).sold_out:
            return False
        state = await self._loader(sale)
        if state.sold < state.total_stock:
            return False
        self._sold_out[sale.id] = frozenset(state.buyers)
        return True

    def _answer_final(self, sale_id: uuid.UUID, request: Reserve) -> None:
        buyers = self._sold_out[sale_id]
        request.reply.fail(AlreadyPurchased() if request.user_id in buyers else SoldOut())


@asynccontextmanager
async def open_wait_queues(store: GateStore, seat: Seater, loader: Loader, counter: Counter, *,
                           batch_max: int, poll_s: float) -> AsyncIterator[WaitQueues]:
    """Open the waiting queues; their watchers run in a nursery this owns, cancelled on exit.

    A request still waiting then is told Undecided, never left hanging.

    Args:
        store: the gates in Redis, read for the stock a waiter may take.
        seat: the batching actor's reserve call, which answers the requests it seats.
        loader: reads a sale's committed state, to learn its buyers once it is sold out.
        counter: reads how many units of a sale the ledger holds committed.
        batch_max: at most this many waiters are offered the stock in one call.
        poll_s: how often a queue asks the ledger again when nothing pokes it.
    """
    async with open_actor_nursery() as nursery:
        queues = WaitQueues(store, seat, loader, counter, batch_max=batch_max, poll_s=poll_s,
                            nursery=nursery)
        try:
            yield queues
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["Counter", "QueueStatistics", "Seater", "WaitQueues", "open_wait_queues"]
