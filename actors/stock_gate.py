"""The stock-gate actor: Redis turns most of the crowd away in O(1).

Requests queue in a bounded inbox; the actor drains whatever has gathered and sends it
to Redis as one Lua call per sale, so a burst of N requests costs one round trip and one
trio-asyncio crossing.

The gate answers only what is true. A unit reserved is a seat, not yet a sale; a user who
holds a unit is reported as such, for the caller to ask the ledger whether it committed.
When the gate reads 0 the sale is not yet sold out: some holders may still fail to commit.
Such requests wait, in arrival order, in the sale's queue; a watcher re-reads the gate
and hands any unit that comes back to the first of them, and once the ledger holds every
unit the sale is sold out for good: only then is ``SoldOut`` answered, from memory.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import trio

from . import _aio
from ._batching import batches
from ._nursery import open_actor_nursery
from ._redis_scripts import (
    CLAIM,
    IN_DOUBT,
    LOAD_CHUNK,
    LOAD_FINISH,
    RECOUNT,
    RELEASE,
    RESERVE,
    SETTLE,
)
from ._slot import Slot
from .errors import AlreadyPurchased, BackendUnavailable, Overloaded, SoldOut, Undecided
from .keys import SaleKeys, change_notice, holder_value, parse_holder, sale_keys, stock_channel
from .model import LedgerState, Sale, Tally

log = logging.getLogger(__name__)

Loader = Callable[[Sale], Awaitable[LedgerState]]
Counter = Callable[[uuid.UUID], Awaitable[Tally]]

#: How long a reservation waits for a unit to come back when its caller names no deadline.
DEFAULT_WAIT_S = 6.0
#: Holders a gate rebuild writes per Redis call, so no single script blocks Redis for long.
LOAD_CHUNK_SIZE = 5000


class Seat(enum.Enum):
    """What the gate did for one request."""

    RESERVED = "reserved"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The gate's answer: a unit reserved (with the stock left), or the user's standing hold."""

    seat: Seat
    stock: int = 0
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class Reserve:
    """Ask the gate to reserve one unit of ``sale`` for ``user_id``, waiting until ``deadline``."""

    sale: Sale
    user_id: str
    purchase_id: uuid.UUID
    deadline: float
    reply: Slot[GateAnswer] = field(compare=False)


@dataclass(frozen=True, slots=True)
class InDoubt:
    """What the gate of one sale holds in doubt, read in one step."""

    now_ms: int
    stock: int | None
    holders: int
    pending: int
    oldest: dict[str, tuple[str, int]]


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


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The gate's knobs; the application builds this from its settings."""

    redis_url: str
    key_prefix: str = "flashflow:"
    inbox_size: int = 4096
    batch_max: int = 512
    timeout_s: float = 2.0
    doubt_poll_s: float = 0.05


class _Queue:
    """The requests of one sale waiting for a unit to come back, in arrival order."""

    def __init__(self) -> None:
        self.waiting: deque[Reserve] = deque()
        self.wake = trio.Event()

    def poke(self) -> None:
        self.wake.set()


class StockGate:
    """Handle to a running stock-gate actor; see :func:`open_stock_gate`."""

    def __init__(self, config: GateConfig, client: _aio.RedisClient, loader: Loader,
                 counter: Counter, nursery: trio.Nursery) -> None:
        self._config = config
        self._redis = client
        self._loader = loader
        self._counter = counter
        self._nursery = nursery
        self._channel = stock_channel(config.key_prefix)
        self._send, self._inbox = trio.open_memory_channel[Reserve](config.inbox_size)
        self._settle_send, self._settle_inbox = trio.open_memory_channel[
            tuple[uuid.UUID, str, str]](config.inbox_size)
        # sale id -> the committed buyers of a sale whose every unit is committed: final.
        self._sold_out: dict[uuid.UUID, frozenset[str]] = {}
        self._queues: dict[uuid.UUID, _Queue] = {}
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._release = client.register_script(RELEASE)
        self._load_chunk = client.register_script(LOAD_CHUNK)
        self._load_finish = client.register_script(LOAD_FINISH)
        self._claim = client.register_script(CLAIM)
        self._recount = client.register_script(RECOUNT)
        self._in_doubt = client.register_script(IN_DOUBT)
        self._batches = 0
        self._reserved_requests = 0
        self._largest_batch = 0
        self._local_sold_out = 0

    # -- keys -------------------------------------------------------------------------

    def keys(self, sale_id: uuid.UUID) -> SaleKeys:
        """The Redis keys that hold the gate of ``sale_id``."""
        return sale_keys(self._config.key_prefix, sale_id)

    @property
    def channel(self) -> str:
        """The pub/sub channel on which every stock change is published as "<sale id> <stock>"."""
        return self._channel

    def _keys(self, sale_id: uuid.UUID) -> list[str]:
        k = self.keys(sale_id)
        return [k.stock, k.buyers, k.pending]

    def _script(self, script, sale_id: uuid.UUID, args: Iterable[object] = (), **kw):
        return self._redis_call(script, keys=self._keys(sale_id),
                                args=[self._channel, str(sale_id), *args], **kw)

    # -- requests ---------------------------------------------------------------------

    async def reserve(self, sale: Sale, user_id: str, purchase_id: uuid.UUID, *,
                      deadline: float | None = None) -> GateAnswer:
        """Reserve one unit for ``user_id``, or report the unit the user already holds.

        When the gate reads 0 the request waits, until ``deadline`` (trio time; by default
        ``DEFAULT_WAIT_S`` from now), for a unit to come back or for the sale to be sold out
        for good.

        Raises:
            SoldOut: every unit of the sale is committed (final).
            AlreadyPurchased: the sale is sold out for good and the user is among its buyers.
            Undecided: the deadline passed with the answer still in doubt.
            Overloaded: the inbox is full.
            BackendUnavailable: Redis is down or too slow.
        """
        self.answer_from_memory(sale, user_id)
        if deadline is None:
            deadline = trio.current_time() + DEFAULT_WAIT_S
        request = Reserve(sale, user_id, purchase_id, deadline, Slot())
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

    def answer_from_memory(self, sale: Sale, user_id: str) -> None:
        """Raise SoldOut or AlreadyPurchased when the sale is known to be sold out for good."""
        buyers = self._sold_out.get(sale.id)
        if buyers is not None:
            self._local_sold_out += 1
            raise AlreadyPurchased() if user_id in buyers else SoldOut()

    def poke(self, sale_id: uuid.UUID) -> None:
        """Have the sale's waiting queue look again now (a commit or release just landed)."""
        queue = self._queues.get(sale_id)
        if queue is not None:
            queue.poke()

    def redefine(self, sale_ids: Iterable[uuid.UUID]) -> None:
        """An operator changed these sales' stock or window: drop what was concluded from it.

        Whether a sale is sold out is asked of the ledger again, and its waiters look again
        now, so the next answers follow the new definition.
        """
        for sale_id in sale_ids:
            self._sold_out.pop(sale_id, None)
            self.poke(sale_id)

    def settle_soon(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID) -> None:
        """Mark a committed purchase as settled, batched with others, without waiting.

        Best effort: a mark that is lost (a full queue, Redis down) leaves the holder in
        pending, where the reconciler finds the ledger's row and settles it.
        """
        with suppress(trio.WouldBlock):
            self._settle_send.send_nowait((sale_id, user_id, str(purchase_id)))
        self.poke(sale_id)

    async def settle(self, sale_id: uuid.UUID, purchases: dict[str, str]) -> int:
        """Mark committed purchases (user -> purchase id) as no longer in doubt."""
        if not purchases:
            return 0
        args = [item for pair in purchases.items() for item in pair]
        return int(await self._redis_call(self._settle, keys=self._keys(sale_id), args=args))

    async def release(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID, *,
                      restock: bool) -> bool:
        """Undo one reservation; with ``restock`` its unit goes back on sale.

        Returns whether the reservation was still there to undo.
        """
        released = bool(await self._script(self._release, sale_id,
                                           [user_id, str(purchase_id), "1" if restock else "0"]))
        if released:
            self.poke(sale_id)
        return released

    async def remaining(self, sale: Sale) -> int:
        """Return the stock left in the gate, loading the gate from the ledger if needed."""
        stock_key = self.keys(sale.id).stock
        value = await self._redis_call(self._redis.get, stock_key)
        if value is None:
            await self.ensure_loaded(sale)
            value = await self._redis_call(self._redis.get, stock_key)
        return max(int(value or 0), 0)

    async def is_loaded(self, sale: Sale) -> bool:
        """Whether the gate of ``sale`` is present in Redis."""
        return bool(await self._redis_call(self._redis.exists, self.keys(sale.id).stock))

    async def ensure_loaded(self, sale: Sale) -> bool:
        """Build the gate from the ledger if it is missing; return whether this call loaded it.

        The holders are written in chunks into a staging hash that appears as the gate's
        buyers, with the stock, in one step: no request ever sees a half-built gate.
        """
        state = await self._loader(sale)
        keys = self.keys(sale.id)
        staging = keys.staging(uuid.uuid4().hex)
        items = list(state.buyers.items())
        for start in range(0, len(items), LOAD_CHUNK_SIZE):
            args = [v for user, pid in items[start:start + LOAD_CHUNK_SIZE]
                    for v in (user, holder_value(pid))]
            await self._redis_call(self._load_chunk, keys=[staging], args=args)
        remaining = max(state.total_stock - state.sold, 0)
        loaded = bool(await self._redis_call(
            self._load_finish, keys=[keys.stock, keys.buyers, keys.pending, staging],
            args=[self._channel, str(sale.id), remaining]))
        if loaded:
            log.info("gate loaded from ledger", extra={"sale_id": str(sale.id), "sold": state.sold})
        return loaded

    async def in_doubt(self, sale_id: uuid.UUID, limit: int = 1000) -> InDoubt:
        """Redis's clock, the stock, the holder and pending counts, and the oldest pending holders.

        ``oldest`` maps user -> (purchase id, reserved ms), oldest first, at most ``limit``.
        """
        reply = await self._redis_call(self._in_doubt, keys=self._keys(sale_id), args=[limit])
        now_ms, stock, holders, pending = (int(v) for v in reply[:4])
        oldest: dict[str, tuple[str, int]] = {}
        rest = reply[4:]
        for i in range(0, len(rest), 3):
            purchase_id, _ = parse_holder(rest[i + 1])
            oldest[rest[i].decode()] = (purchase_id, int(float(rest[i + 2])))
        return InDoubt(now_ms, None if stock < 0 else stock, holders, pending, oldest)

    async def holders(self, sale_id: uuid.UUID) -> dict[str, str]:
        """Every holder of a unit: user -> purchase id. O(holders): for repairs, not routine."""
        held = await self._redis_call(self._redis.hgetall, self.keys(sale_id).buyers)
        return {user.decode(): parse_holder(value)[0] for user, value in held.items()}

    async def claim(self, sale_id: uuid.UUID, purchases: dict[str, str]) -> int:
        """Record committed purchases (user -> purchase id) the gate does not hold.

        Each one takes a unit (never below 0); returns how many were missing.
        """
        if not purchases:
            return 0
        args = [item for pair in purchases.items() for item in pair]
        return int(await self._script(self._claim, sale_id, args))

    async def recount(self, sale_id: uuid.UUID, tally: Tally) -> tuple[int, int] | None:
        """Set the stock to ``total - max(holders, sold)`` by the ledger's ``tally``.

        Returns (before, after), None if the gate is not loaded.
        """
        reply = await self._script(self._recount, sale_id, [tally.total_stock, tally.sold])
        if int(reply[0]) < 0:
            return None
        before, after = int(reply[0]), int(reply[1])
        if after > before:
            self.poke(sale_id)
        return before, after

    async def announce(self, sale_id: uuid.UUID) -> None:
        """Tell every process that the definition of ``sale_id`` changed (a change notice)."""
        await self._redis_call(self._redis.publish, self._channel, change_notice(sale_id))

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._redis_call(self._redis.ping))

    def forget(self, sale_ids: Iterable[uuid.UUID]) -> None:
        """Drop what this process remembers of sales that are over."""
        for sale_id in sale_ids:
            self._sold_out.pop(sale_id, None)

    def statistics(self) -> GateStatistics:
        """Return a snapshot of the gate's counters."""
        return GateStatistics(
            inbox_depth=self._inbox.statistics().current_buffer_used,
            batches=self._batches,
            reserved_requests=self._reserved_requests,
            largest_batch=self._largest_batch,
            local_sold_out_answers=self._local_sold_out,
            sold_out_sales=len(self._sold_out),
            waiting=sum(len(q.waiting) for q in self._queues.values()),
        )

    # -- the actor loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the inbox in batches until cancelled; started once Redis answers."""
        await self.ping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._settle_marks)
            async for batch in batches(self._inbox, self._config.batch_max):
                await self._serve_batch(batch)

    async def _settle_marks(self) -> None:
        async for batch in batches(self._settle_inbox, self._config.batch_max):
            by_sale: dict[uuid.UUID, dict[str, str]] = defaultdict(dict)
            for sale_id, user_id, purchase_id in batch:
                by_sale[sale_id][user_id] = purchase_id
            for sale_id, purchases in by_sale.items():
                with suppress(BackendUnavailable):
                    await self.settle(sale_id, purchases)

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
            queue = self._queues.get(sale_id)
            if queue is not None:
                # Units that come back go to those who asked first.
                queue.waiting.extend(requests)
                queue.poke()
                continue
            try:
                empty = await self._reserve_for_sale(requests)
            except BackendUnavailable as exc:
                for request in requests:
                    request.reply.fail(exc)
                continue
            if empty:
                self._wait(requests[0].sale, empty)

    async def _reserve_for_sale(self, requests: list[Reserve]) -> list[Reserve]:
        """Send one batch to Redis and answer it; return the requests that found no stock."""
        sale = requests[0].sale
        args: list[str] = []
        for request in requests:
            args += [request.user_id, str(request.purchase_id)]
        reply = await self._script(self._reserve, sale.id, args)
        if reply[0] == -1:
            await self.ensure_loaded(sale)
            reply = await self._script(self._reserve, sale.id, args)
            if reply[0] == -1:
                raise BackendUnavailable("redis")
        empty: list[Reserve] = []
        for i, request in enumerate(requests):
            code, info = int(reply[1 + 2 * i]), reply[2 + 2 * i]
            if code == 0:
                request.reply.set(GateAnswer(Seat.RESERVED, stock=int(info)))
            elif code == 1:
                request.reply.set(GateAnswer(Seat.HELD, holder=parse_holder(info)[0]))
            else:
                empty.append(request)
        return empty

    def _wait(self, sale: Sale, requests: list[Reserve]) -> None:
        queue = self._queues.get(sale.id)
        if queue is None:
            queue = self._queues[sale.id] = _Queue()
            self._nursery.start_soon(self._watch, sale, queue)
        queue.waiting.extend(requests)

    async def _watch(self, sale: Sale, queue: _Queue) -> None:
        """Serve one sale's waiting queue until it is empty.

        Each round hands units back in the gate to the first waiters, in order; while none
        are there it asks the ledger whether every unit is committed, which makes the answer
        final. Waiters whose deadline passed are told the answer is still in doubt.
        """
        try:
            while queue.waiting:
                self._expire(queue)
                if not queue.waiting:
                    break
                with suppress(BackendUnavailable):
                    if await self._serve_waiting(sale, queue):
                        continue
                    if await self._sold_out_for_good(sale):
                        for request in queue.waiting:
                            self._answer_final(sale.id, request)
                        queue.waiting.clear()
                        break
                queue.wake = trio.Event()
                with trio.move_on_after(self._config.doubt_poll_s):
                    await queue.wake.wait()
        finally:
            del self._queues[sale.id]
            for request in queue.waiting:
                request.reply.fail(Undecided())

    def _expire(self, queue: _Queue) -> None:
        now = trio.current_time()
        kept = deque(r for r in queue.waiting if r.deadline > now and not r.reply.done)
        for request in queue.waiting:
            if request.deadline <= now:
                request.reply.fail(Undecided())
        queue.waiting = kept

    async def _serve_waiting(self, sale: Sale, queue: _Queue) -> bool:
        """Offer the gate's stock to the first waiters; return whether any was answered."""
        stock = await self._redis_call(self._redis.get, self.keys(sale.id).stock)
        if stock is not None and int(stock) <= 0:
            return False
        first = [queue.waiting[i] for i in range(min(len(queue.waiting), self._config.batch_max))]
        empty = await self._reserve_for_sale(first)
        answered = len(first) - len(empty)
        for _ in range(len(first)):
            queue.waiting.popleft()
        queue.waiting.extendleft(reversed(empty))
        return answered > 0

    async def _sold_out_for_good(self, sale: Sale) -> bool:
        """Whether the ledger holds every unit; if so, remember the sale's buyers for good.

        The stock is the one PostgreSQL holds beside the count, never ``sale.total_stock``:
        this process's copy of the sale may predate an operator's change.
        """
        if sale.id in self._sold_out:
            return True
        if not (await self._counter(sale.id)).sold_out:
            return False
        state = await self._loader(sale)
        if state.sold < state.total_stock:
            return False
        self._sold_out[sale.id] = frozenset(state.buyers)
        return True

    async def learn_sold_out(self, sale: Sale) -> bool:
        """Ask the ledger whether every unit is committed (the ledger refused one for stock)."""
        sold_out = await self._sold_out_for_good(sale)
        if sold_out:
            self.poke(sale.id)
        return sold_out

    def _answer_final(self, sale_id: uuid.UUID, request: Reserve) -> None:
        buyers = self._sold_out[sale_id]
        request.reply.fail(AlreadyPurchased() if request.user_id in buyers else SoldOut())

    async def _redis_call(self, fn, *args, **kwargs):
        return await _aio.redis_call(self._config.timeout_s, fn, *args, **kwargs)


@asynccontextmanager
async def open_stock_gate(config: GateConfig, loader: Loader,
                          counter: Counter) -> AsyncIterator[StockGate]:
    """Open the stock-gate actor; yields once Redis answers, stops its loop on exit.

    Args:
        config: connection and batching settings.
        loader: reads a sale's committed state from the ledger, to (re)build the gate.
        counter: reads how many units of a sale the ledger holds committed.
    """
    async with (
        _aio.open_redis(config.redis_url, config.timeout_s) as client,
        open_actor_nursery() as nursery,
    ):
        gate = StockGate(config, client, loader, counter, nursery)
        await nursery.start(gate.run)
        try:
            yield gate
        finally:
            nursery.cancel_scope.cancel()
