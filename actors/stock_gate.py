"""The stock-gate actor: Redis turns most of the crowd away in O(1).

Requests queue in a bounded inbox; the actor drains whatever has gathered and sends it
to Redis as one Lua call per sale, so a burst of N requests costs one round trip and one
trio-asyncio crossing. Once a sale's stock reads 0 the gate answers SOLD_OUT from memory,
and it learns again when stock comes back (a release here, or a periodic re-check for
releases made by other processes).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import trio

from . import _aio
from ._batching import batches
from ._nursery import open_actor_nursery
from ._redis_scripts import CLAIM, LOAD, RELEASE, RESERVE
from ._slot import Slot
from .errors import AlreadyPurchased, BackendUnavailable, Overloaded, SoldOut
from .model import LedgerState, Sale

log = logging.getLogger(__name__)

Loader = Callable[[Sale], Awaitable[LedgerState]]


@dataclass(frozen=True, slots=True)
class Reserve:
    """Ask the gate to reserve one unit of ``sale`` for ``user_id``."""

    sale: Sale
    user_id: str
    purchase_id: uuid.UUID
    reply: Slot[int] = field(compare=False)


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot of the gate's work, for /metrics and tests."""

    inbox_depth: int
    batches: int
    reserved_requests: int
    largest_batch: int
    local_sold_out_answers: int
    sold_out_sales: int


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The gate's knobs; the application builds this from its settings."""

    redis_url: str
    key_prefix: str = "flashflow:"
    inbox_size: int = 4096
    batch_max: int = 512
    timeout_s: float = 2.0
    recheck_s: float = 1.0


def stock_channel(key_prefix: str) -> str:
    """The pub/sub channel carrying stock changes for every sale under ``key_prefix``."""
    return f"{key_prefix}stock"


class StockGate:
    """Handle to a running stock-gate actor; see :func:`open_stock_gate`."""

    def __init__(self, config: GateConfig, client: aioredis.Redis, loader: Loader) -> None:
        self._config = config
        self._redis = client
        self._loader = loader
        self._send, self._inbox = trio.open_memory_channel[Reserve](config.inbox_size)
        # sale id -> the buyers of a sold-out sale, so repeats are answered from memory
        self._sold_out: dict[uuid.UUID, frozenset[str]] = {}
        self._reserve = client.register_script(RESERVE)
        self._release = client.register_script(RELEASE)
        self._load = client.register_script(LOAD)
        self._claim = client.register_script(CLAIM)
        self._batches = 0
        self._reserved_requests = 0
        self._largest_batch = 0
        self._local_sold_out = 0

    # -- keys -------------------------------------------------------------------------

    def keys(self, sale_id: uuid.UUID) -> tuple[str, str]:
        """Return the Redis keys (stock, buyers) that hold the gate of ``sale_id``."""
        base = f"{self._config.key_prefix}sale:{sale_id}"
        return f"{base}:stock", f"{base}:buyers"

    @property
    def channel(self) -> str:
        """The pub/sub channel on which every stock change is published as "<sale id> <stock>"."""
        return stock_channel(self._config.key_prefix)

    def _script_keys(self, sale_id: uuid.UUID) -> list[str]:
        return [*self.keys(sale_id), self.channel]

    # -- requests ---------------------------------------------------------------------

    async def reserve(self, sale: Sale, user_id: str, purchase_id: uuid.UUID) -> int:
        """Reserve one unit for ``user_id`` and return the stock left after it.

        Raises:
            SoldOut: no stock is left (answered from memory once the gate has seen 0).
            AlreadyPurchased: the user already holds a reservation or purchase.
            Overloaded: the inbox is full.
            BackendUnavailable: Redis is down or too slow.
        """
        self.answer_from_memory(sale, user_id)
        request = Reserve(sale, user_id, purchase_id, Slot())
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise Overloaded("stock_gate") from None
        return await request.reply.wait()

    def answer_from_memory(self, sale: Sale, user_id: str) -> None:
        """Raise SoldOut or AlreadyPurchased when this process already knows the answer."""
        buyers = self._sold_out.get(sale.id)
        if buyers is not None:
            self._local_sold_out += 1
            raise AlreadyPurchased() if user_id in buyers else SoldOut()

    async def release(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID, *,
                      restock: bool) -> bool:
        """Undo one reservation; with ``restock`` its unit goes back on sale.

        Returns whether the reservation was still there to undo.
        """
        args = [user_id, str(purchase_id), "1" if restock else "0", str(sale_id)]
        released = bool(await self._redis_call(self._release, keys=self._script_keys(sale_id),
                                               args=args))
        if released and restock:
            self._sold_out.pop(sale_id, None)
        elif released and sale_id in self._sold_out:
            self._sold_out[sale_id] = self._sold_out[sale_id] - {user_id}
        return released

    async def remaining(self, sale: Sale) -> int:
        """Return the stock left in the gate, loading the gate from the ledger if needed."""
        stock_key, _ = self.keys(sale.id)
        value = await self._redis_call(self._redis.get, stock_key)
        if value is None:
            await self.ensure_loaded(sale)
            value = await self._redis_call(self._redis.get, stock_key)
        return max(int(value or 0), 0)

    async def is_loaded(self, sale: Sale) -> bool:
        """Whether the gate of ``sale`` is present in Redis."""
        stock_key, _ = self.keys(sale.id)
        return bool(await self._redis_call(self._redis.exists, stock_key))

    async def ensure_loaded(self, sale: Sale) -> bool:
        """Build the gate from the ledger if it is missing; return whether this call loaded it."""
        state = await self._loader(sale)
        args: list[str | int] = [max(state.total_stock - state.sold, 0), str(sale.id)]
        for user_id, purchase_id in state.buyers.items():
            args += [user_id, purchase_id]
        loaded = bool(await self._redis_call(self._load, keys=self._script_keys(sale.id),
                                             args=args))
        if loaded:
            log.info("gate loaded from ledger", extra={"sale_id": str(sale.id), "sold": state.sold})
        return loaded

    async def reservations(self, sale_id: uuid.UUID) -> tuple[int, dict[str, tuple[str, int]]]:
        """Redis's clock in ms, and every holder of a unit: user -> (purchase id, reserved ms).

        A holder loaded from the ledger has no reservation time and reads as 0.
        """
        _, buyers_key = self.keys(sale_id)
        seconds, micros = await self._redis_call(self._redis.time)
        held = await self._redis_call(self._redis.hgetall, buyers_key)
        out: dict[str, tuple[str, int]] = {}
        for user, value in held.items():
            purchase_id, _, stamp = value.decode().partition(":")
            out[user.decode()] = (purchase_id, int(stamp or 0))
        return seconds * 1000 + micros // 1000, out

    async def claim(self, sale_id: uuid.UUID, purchases: dict[str, str]) -> int:
        """Record committed purchases (user -> purchase id) the gate does not hold.

        Each one takes a unit (never below 0); returns how many were missing.
        """
        if not purchases:
            return 0
        args = [str(sale_id)]
        for user_id, purchase_id in purchases.items():
            args += [user_id, purchase_id]
        return int(await self._redis_call(self._claim, keys=self._script_keys(sale_id),
                                          args=args))

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._redis_call(self._redis.ping))

    def statistics(self) -> GateStatistics:
        """Return a snapshot of the gate's counters."""
        return GateStatistics(
            inbox_depth=self._inbox.statistics().current_buffer_used,
            batches=self._batches,
            reserved_requests=self._reserved_requests,
            largest_batch=self._largest_batch,
            local_sold_out_answers=self._local_sold_out,
            sold_out_sales=len(self._sold_out),
        )

    # -- the actor loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the inbox in batches until cancelled; started once Redis answers."""
        await self.ping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._recheck_sold_out)
            async for batch in batches(self._inbox, self._config.batch_max):
                await self._serve_batch(batch)

    async def _serve_batch(self, batch: list[Reserve]) -> None:
        self._batches += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        self._reserved_requests += len(batch)
        by_sale: dict[uuid.UUID, list[Reserve]] = defaultdict(list)
        for request in batch:
            by_sale[request.sale.id].append(request)
        for requests in by_sale.values():
            try:
                await self._reserve_for_sale(requests)
            except BackendUnavailable as exc:
                for request in requests:
                    request.reply.fail(exc)

    async def _reserve_for_sale(self, requests: list[Reserve]) -> None:
        sale = requests[0].sale
        args: list[str] = [str(sale.id)]
        for request in requests:
            args += [request.user_id, str(request.purchase_id)]
        keys = self._script_keys(sale.id)
        reply = await self._redis_call(self._reserve, keys=keys, args=args)
        if reply[0] == -1:
            await self.ensure_loaded(sale)
            reply = await self._redis_call(self._reserve, keys=keys, args=args)
            if reply[0] == -1:
                raise BackendUnavailable("redis")
        for i, request in enumerate(requests):
            code, info = int(reply[1 + 2 * i]), reply[2 + 2 * i]
            if code == 0:
                request.reply.set(int(info))
            elif code == 1:
                request.reply.fail(AlreadyPurchased())
            else:
                request.reply.fail(SoldOut())
        if int(reply[0]) <= 0 and sale.id not in self._sold_out:
            # Everyone in this batch has their answer already: a failure here only means
            # this process keeps asking Redis a little longer.
            with suppress(BackendUnavailable):
                await self._learn_sold_out(sale.id)

    async def _learn_sold_out(self, sale_id: uuid.UUID) -> None:
        """Remember that a sale is sold out, with its buyers (at most its stock of them).

        Stock and buyers are read in one transaction, so a unit released in the meantime is
        seen and the sale is not marked sold out.
        """
        stock_key, buyers_key = self.keys(sale_id)

        async def read() -> list:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(stock_key)
                pipe.hkeys(buyers_key)
                return await pipe.execute()

        stock, buyers = await self._redis_call(read)
        if stock is not None and int(stock) <= 0:
            self._sold_out[sale_id] = frozenset(b.decode() for b in buyers)
        else:
            self._sold_out.pop(sale_id, None)

    async def _recheck_sold_out(self) -> None:
        """Forget a sold-out sale when stock came back, or re-read its buyers if they changed.

        Releases made by other processes reach this process here, within ``recheck_s``.
        """
        while True:
            await trio.sleep(self._config.recheck_s)
            for sale_id, buyers in list(self._sold_out.items()):
                stock_key, buyers_key = self.keys(sale_id)
                try:
                    value = await self._redis_call(self._redis.get, stock_key)
                    if value is None or int(value) > 0:
                        self._sold_out.pop(sale_id, None)
                    elif await self._redis_call(self._redis.hlen, buyers_key) != len(buyers):
                        await self._learn_sold_out(sale_id)
                except BackendUnavailable:
                    continue

    async def _redis_call(self, fn, *args, **kwargs):
        return await _aio.redis_call(self._config.timeout_s, fn, *args, **kwargs)


@asynccontextmanager
async def open_stock_gate(config: GateConfig, loader: Loader) -> AsyncIterator[StockGate]:
    """Open the stock-gate actor; yields once Redis answers, stops its loop on exit.

    Args:
        config: connection and batching settings.
        loader: reads a sale's committed state from the ledger, to (re)build the gate.
    """
    async with _aio.open_redis(config.redis_url, config.timeout_s) as client:
        gate = StockGate(config, client, loader)
        async with open_actor_nursery() as nursery:
            await nursery.start(gate.run)
            try:
                yield gate
            finally:
                nursery.cancel_scope.cancel()
