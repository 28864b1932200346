"""The rate-limiter actor: token buckets in Redis, shared by every worker and host.

Each purchase attempt or status read that would reach Redis or PostgreSQL takes a token
from its user's bucket and one from its client address's bucket, both or neither: a request
refused by one bucket spends nothing from the other. Checks are batched like the gate's: a
burst of N attempts costs one Lua call and one trio-asyncio crossing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from . import _aio
from ._batching import batches
from ._nursery import open_actor_nursery
from ._redis_scripts import TAKE_TOKENS
from ._slot import Slot
from .errors import BackendUnavailable, Overloaded, RateLimited
from .keys import rate_keys


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterConfig:
    """The limiter's knobs; the application builds this from its settings, which hold the
    defaults."""

    redis_url: str
    key_prefix: str
    user_per_s: float
    user_burst: int
    address_per_s: float
    address_burst: int
    inbox_size: int
    batch_max: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Take:
    """Ask for one token from the user's bucket and one from the address's bucket."""

    user_id: str
    address: str
    reply: Slot[int] = field(compare=False)


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of the limiter, for /metrics and tests."""

    inbox_depth: int
    batches: int
    checked: int
    limited: int


class RateLimiter:
    """Handle to the running limiter; see :func:`open_rate_limiter`."""

    def __init__(self, config: LimiterConfig, client: _aio.RedisClient) -> None:
        self._config = config
        self._take = client.register_script(TAKE_TOKENS)
        self._send, self._inbox = trio.open_memory_channel[Take](config.inbox_size)
        self._batches = 0
        self._checked = 0
        self._limited = 0

    async def check(self, user_id: str, address: str) -> None:
        """Spend a token for ``user_id`` and one for ``address``, or neither.

        Raises:
            RateLimited: either bucket is empty (then neither is spent); carries the seconds
                until both have a token.
            Overloaded, BackendUnavailable.
        """
        request = Take(user_id, address, Slot())
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise Overloaded("rate_limiter") from None
        wait_ms = await request.reply.wait()
        if wait_ms > 0:
            self._limited += 1
            raise RateLimited(max(1, math.ceil(wait_ms / 1000)))

    def statistics(self) -> LimiterStatistics:
        """Return a snapshot of the limiter's counters."""
        return LimiterStatistics(self._inbox.statistics().current_buffer_used, self._batches,
                                 self._checked, self._limited)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check batches of requests until cancelled."""
        task_status.started()
        async for batch in batches(self._inbox, self._config.batch_max):
            self._batches += 1
            self._checked += len(batch)
            c = self._config
            keys: list[str] = []
            args: list[float | int] = []
            for request in batch:
                keys += rate_keys(c.key_prefix, request.user_id, request.address)
                args += [c.user_per_s, c.user_burst, c.address_per_s, c.address_burst]
            try:
                waits = await _aio.redis_call(c.timeout_s, self._take, keys=keys, args=args)
            except BackendUnavailable as exc:
                for request in batch:
                    request.reply.fail(exc)
                continue
            for i, request in enumerate(batch):
                request.reply.set(max(int(waits[2 * i]), int(waits[2 * i + 1])))


@asynccontextmanager
async def open_rate_limiter(config: LimiterConfig) -> AsyncIterator[RateLimiter]:
    """Open the limiter; its loop stops on exit."""
    async with _aio.open_redis(config.redis_url, config.timeout_s) as client:
        limiter = RateLimiter(config, client)
        async with open_actor_nursery() as nursery:
            await nursery.start(limiter.run)
            try:
                yield limiter
            finally:
                nursery.cancel_scope.cancel()
