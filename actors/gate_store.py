"""The gates in Redis: every call of a gate script, and the loading and repair built on them.

:mod:`actors.keys` owns the key and value formats and the stock channel, and
:mod:`actors._redis_scripts` the Lua; this module is the one that calls the scripts, with
the keys of one sale in the order every gate script takes them (stock, buyers, pending) and
the channel and sale id as the first arguments. Nothing else sends a gate script.

Besides the reserve call the batching actor makes, the store is the interface the
reconciler, the admin API and the readiness check use: load a missing gate from the ledger,
read what is in doubt, settle, claim, recount and release. It also batches the settle marks
a committed purchase leaves behind, in an inbox of their own, so the purchase path never
waits on them.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from . import _aio
from ._batching import batches
from ._nursery import open_actor_nursery
from ._redis_scripts import (
    CLAIM,
    HANDOVER,
    IN_DOUBT,
    LOAD_CHUNK,
    LOAD_FINISH,
    RECOUNT,
    RELEASE,
    RESERVE,
    SETTLE,
)
from .errors import BackendUnavailable
from .gate_messages import GateAnswer, Seat
from .keys import (
    change_notice,
    holder_quantity,
    holder_value,
    parse_holder,
    sale_keys,
    stock_channel,
)
from .model import LedgerState, Sale, Tally

log = logging.getLogger(__name__)

Loader = Callable[[Sale], Awaitable[LedgerState]]

#: Holders a gate rebuild writes per Redis call, so no single script blocks Redis for long.
LOAD_CHUNK_SIZE = 5000


@dataclass(frozen=True, slots=True)
class InDoubt:
    """What the gate of one sale holds in doubt, read in one step."""

    now_ms: int
    stock: int | None
    holders: int
    pending: int
    oldest: dict[str, tuple[str, int]]


class GateStore:
    """The gates of every sale in Redis; see :func:`open_gate_store`."""

    def __init__(self, client: _aio.RedisClient, key_prefix: str, timeout_s: float,
                 loader: Loader, *, marks_size: int, batch_max: int) -> None:
        self._redis = client
        self._key_prefix = key_prefix
        self._timeout_s = timeout_s
        self._loader = loader
        self._batch_max = batch_max
        self._channel = stock_channel(key_prefix)
        self._marks_send, self._marks = trio.open_memory_channel[
            tuple[uuid.UUID, str, str]](marks_size)
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._release = client.register_script(RELEASE)
        self._load_chunk = client.register_script(LOAD_CHUNK)
        self._load_finish = client.register_script(LOAD_FINISH)
        self._claim = client.register_script(CLAIM)
        self._recount = client.register_script(RECOUNT)
        self._in_doubt = client.register_script(IN_DOUBT)
        self._handover = client.register_script(HANDOVER)

    # -- the reserve call ---------------------------------------------------------------

    async def reserve(self, sale: Sale,
                      requests: list[tuple[str, str, int]]) -> list[GateAnswer | None]:
        """Reserve for each (user, purchase id, quantity), in order, in one Redis call: all
        of a request's units or none.

        Returns one answer per request, None where the gate had too little stock for it. A
        gate missing from Redis is loaded from the ledger first.

        Raises:
            BackendUnavailable: Redis failed, or the gate could not be loaded.
        """
        args = [item for request in requests for item in request]
        reply = await self._script(self._reserve, sale.id, args)
        if reply[0] == -1:
            await self.ensure_loaded(sale)
            reply = await self._script(self._reserve, sale.id, args)
            if reply[0] == -1:
                raise BackendUnavailable("redis")
        answers: list[GateAnswer | None] = []
        for i in range(len(requests)):
            code, info = int(reply[1 + 2 * i]), reply[2 + 2 * i]
            if code == 0:
                answers.append(GateAnswer(Seat.RESERVED, stock=int(info)))
            elif code == 1:
                answers.append(GateAnswer(Seat.HELD, holder=parse_holder(info)[0]))
            else:
                answers.append(None)
        return answers

    async def stock(self, sale_id: uuid.UUID) -> int | None:
        """The stock counter as Redis holds it (may read below 0); None if not loaded."""
        value = await self._call(self._redis.get, sale_keys(self._key_prefix, sale_id).stock)
        return None if value is None else int(value)

    # -- loading ------------------------------------------------------------------------

    async def remaining(self, sale: Sale) -> int:
        """Return the stock left in the gate, loading the gate from the ledger if needed."""
        value = await self.stock(sale.id)
        if value is None:
            await self.ensure_loaded(sale)
            value = await self.stock(sale.id)
        return max(value or 0, 0)

    async def is_loaded(self, sale: Sale) -> bool:
        """Whether the gate of ``sale`` is present in Redis."""
        stock_key = sale_keys(self._key_prefix, sale.id).stock
        return bool(await self._call(self._redis.exists, stock_key))

    async def ensure_loaded(self, sale: Sale) -> bool:
        """Build the gate from the ledger if it is missing; return whether this call loaded it.

        The holders are written in chunks into a staging hash that appears as the gate's
        buyers, with the stock, in one step: no request ever sees a half-built gate.
        """
        state = await self._loader(sale)
        keys = sale_keys(self._key_prefix, sale.id)
        staging = keys.staging(uuid.uuid4().hex)
        items = list(state.buyers.items())
        for start in range(0, len(items), LOAD_CHUNK_SIZE):
            args = [v for user, pid in items[start:start + LOAD_CHUNK_SIZE]
                    for v in (user, holder_value(pid, 0, state.quantities.get(user, 1)))]
            await self._call(self._load_chunk, keys=[staging], args=args)
        remaining = max(state.total_stock - state.sold, 0)
        loaded = bool(await self._call(
            self._load_finish, keys=[keys.stock, keys.buyers, keys.pending, staging],
            args=[self._channel, str(sale.id), remaining]))
        if loaded:
            log.info("gate loaded from ledger", extra={"sale_id": str(sale.id), "sold": state.sold})
        return loaded

    # -- repair -------------------------------------------------------------------------

    async def in_doubt(self, sale_id: uuid.UUID, limit: int = 1000) -> InDoubt:
        """Redis's clock, the stock, the holder and pending counts, and the oldest pending holders.

        ``oldest`` maps user -> (purchase id, reserved ms), oldest first, at most ``limit``.
        """
        reply = await self._call(self._in_doubt, keys=self._keys(sale_id), args=[limit])
        now_ms, stock, holders, pending = (int(v) for v in reply[:4])
        oldest: dict[str, tuple[str, int]] = {}
        rest = reply[4:]
        for i in range(0, len(rest), 3):
            purchase_id, _ = parse_holder(rest[i + 1])
            oldest[rest[i].decode()] = (purchase_id, int(float(rest[i + 2])))
        return InDoubt(now_ms, None if stock < 0 else stock, holders, pending, oldest)

    async def holders(self, sale_id: uuid.UUID) -> dict[str, str]:
        """Every holder of units: user -> purchase id. O(holders): for repairs, not routine."""
        return {user: pid for user, (pid, _) in (await self.holdings(sale_id)).items()}

    async def holdings(self, sale_id: uuid.UUID) -> dict[str, tuple[str, int]]:
        """Every holder of units: user -> (purchase id, units). O(holders), for repairs."""
        held = await self._call(self._redis.hgetall, sale_keys(self._key_prefix, sale_id).buyers)
        return {user.decode(): (parse_holder(value)[0], holder_quantity(value))
                for user, value in held.items()}

    async def settle(self, sale_id: uuid.UUID, purchases: dict[str, str]) -> int:
        """Mark committed purchases (user -> purchase id) as no longer in doubt."""
        if not purchases:
            return 0
        args = [item for pair in purchases.items() for item in pair]
        return int(await self._call(self._settle, keys=self._keys(sale_id), args=args))

    async def claim(self, sale_id: uuid.UUID, purchases: dict[str, str],
                    quantities: dict[str, int] | None = None) -> int:
        """Record committed purchases (user -> purchase id) the gate does not hold.

        Each one missing takes its units (``quantities``, 1 when absent; never below 0);
        one held under another purchase id (a reservation that can never commit) is
        replaced, the stock moved by the difference of their units. Returns how many were
        recorded, missing or replaced.
        """
        if not purchases:
            return 0
        quantities = quantities or {}
        args = [item for user, pid in purchases.items()
                for item in (user, pid, quantities.get(user, 1))]
        return int(await self._script(self._claim, sale_id, args))

    async def recount(self, sale_id: uuid.UUID, tally: Tally,
                      quantities: bool = False) -> tuple[int, int] | None:
        """Set the stock to ``total - max(units held, sold)`` by the ledger's ``tally``;
        with ``quantities`` the holders' units are summed, else each holder counts one.

        Returns (before, after), None if the gate is not loaded.
        """
        reply = await self._script(self._recount, sale_id, [tally.total_stock, tally.sold,
                                                            "1" if quantities else "0"])
        if int(reply[0]) < 0:
            return None
        return int(reply[0]), int(reply[1])

    async def release(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID, *,
                      restock: bool) -> bool:
        """Undo one reservation; with ``restock`` its unit goes back on sale.

        Returns whether the reservation was still there to undo.
        """
        return bool(await self._script(self._release, sale_id,
                                       [user_id, str(purchase_id), "1" if restock else "0"]))

    async def handover(self, sale_id: uuid.UUID, leaving: list[tuple[str, str]],
                       coming: list[tuple[str, str, int]]) -> int | None:
        """Move ended holds' units to their new holders in one step.

        ``leaving`` are the (user, purchase id) of holds that ended; ``coming`` the (user,
        purchase id, quantity) of the holds their units went to. Units that went to nobody
        go back on sale. Returns the stock after, None if not loaded.
        """
        args: list[str | int] = [item for user, pid in leaving for item in ("-", user, pid, "")]
        args += [item for user, pid, n in coming for item in ("+", user, pid, n)]
        stock = int(await self._script(self._handover, sale_id, args))
        return None if stock < 0 else stock

    async def announce(self, sale_id: uuid.UUID) -> None:
        """Tell every process that the definition of ``sale_id`` changed (a change notice)."""
        await self._call(self._redis.publish, self._channel, change_notice(sale_id))

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self._call(self._redis.ping))

    # -- settle marks -------------------------------------------------------------------

    def settle_soon(self, sale_id: uuid.UUID, user_id: str, purchase_id: uuid.UUID) -> None:
        """Queue a settle mark for a committed purchase, batched with others, without waiting.

        Best effort: a mark that is lost (a full queue, Redis down) leaves the holder in
        pending, where the reconciler finds the ledger's row and settles it.
        """
        with suppress(trio.WouldBlock):
            self._marks_send.send_nowait((sale_id, user_id, str(purchase_id)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send the settle marks in batches until cancelled; started once Redis answers."""
        await self.ping()
        task_status.started()
        async for batch in batches(self._marks, self._batch_max):
            by_sale: dict[uuid.UUID, dict[str, str]] = defaultdict(dict)
            for sale_id, user_id, purchase_id in batch:
                by_sale[sale_id][user_id] = purchase_id
            for sale_id, purchases in by_sale.items():
                with suppress(BackendUnavailable):
                    await self.settle(sale_id, purchases)

    # -- calls --------------------------------------------------------------------------

    def _keys(self, sale_id: uuid.UUID) -> list[str]:
        """The keys of one sale in the order every gate script takes them."""
        k = sale_keys(self._key_prefix, sale_id)
        return [k.stock, k.buyers, k.pending]

    def _script(self, script: Callable[..., Awaitable[Any]], sale_id: uuid.UUID,
                args: Iterable[object] = ()) -> Awaitable[Any]:
        """Call a gate script that publishes stock changes: channel and sale id go first."""
        return self._call(script, keys=self._keys(sale_id),
                          args=[self._channel, str(sale_id), *args])

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await _aio.redis_call(self._timeout_s, fn, *args, **kwargs)


@asynccontextmanager
async def open_gate_store(redis_url: str, key_prefix: str, timeout_s: float, loader: Loader, *,
                          marks_size: int, batch_max: int) -> AsyncIterator[GateStore]:
    """Open the gates' Redis store; yields once Redis answers, stops its settle marks on exit.

    Args:
        redis_url: the Redis (or Redis Cluster) holding the gates.
        key_prefix: the prefix of every key and of the stock channel.
        timeout_s: how long one Redis call may take.
        loader: reads a sale's committed state from the ledger, to (re)build its gate.
        marks_size: how many settle marks may wait to be sent.
        batch_max: at most this many settle marks per batch.
    """
    async with (
        _aio.open_redis(redis_url, timeout_s) as client,
        open_actor_nursery() as nursery,
    ):
        store = GateStore(client, key_prefix, timeout_s, loader, marks_size=marks_size,
                          batch_max=batch_max)
        await nursery.start(store.run)
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["LOAD_CHUNK_SIZE", "GateStore", "InDoubt", "Loader", "open_gate_store"]
