"""Crossing from trio into asyncio drivers, with a deadline and error translation.

Every Redis and PostgreSQL call goes through :func:`call`, so each one is bounded in
time and no driver exception escapes an actor.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, ParamSpec, TypeVar

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import BackendUnavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_asyncio_bridge() -> AsyncIterator[None]:
    """Open the trio-asyncio loop the drivers run on, where a stray driver error is only logged.

    trio-asyncio's default handler raises every error no asyncio task retrieved into its own
    nursery, which ends the whole runtime. Drivers leave such errors behind in clean-up tasks
    of their own: asyncpg's ``pool.release`` of a connection whose query was cancelled by
    :func:`call`'s deadline resets it in a task that times out when PostgreSQL does not
    answer. The call itself has already failed with ``BackendUnavailable``; the connection
    is terminated and the pool replaces it.
    """
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_stray_error)
        yield


def _log_stray_error(loop: Any, context: dict[str, Any]) -> None:
    log.warning("driver clean-up failed: %s", context.get("message"),
                exc_info=context.get("exception"))


async def call(
    backend: str,
    timeout_s: float,
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the asyncio coroutine function ``fn`` from trio, within ``timeout_s``.

    Raises:
        BackendUnavailable: the call timed out or failed with a connection-level error.
    """
    try:
        with trio.fail_after(timeout_s):
            return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    except trio.TooSlowError:
        raise BackendUnavailable(backend) from None
    except (TimeoutError, OSError, ConnectionError) as exc:
        raise BackendUnavailable(backend) from exc


async def redis_call(timeout_s: float, fn: Callable[P, Awaitable[T]], *args: P.args,
                     **kwargs: P.kwargs) -> T:
    """:func:`call` for redis-py, with every Redis error read as BackendUnavailable."""
    try:
        return await call("redis", timeout_s, fn, *args, **kwargs)
    except redis.exceptions.RedisError as exc:
        raise BackendUnavailable("redis") from exc


async def postgres_call(timeout_s: float, fn: Callable[P, Awaitable[T]], *args: P.args,
                        **kwargs: P.kwargs) -> T:
    """:func:`call` for asyncpg, with driver errors read as BackendUnavailable."""
    try:
        return await call("postgres", timeout_s, fn, *args, **kwargs)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # InternalClientError comes from a pool whose server vanished mid-query.
        raise BackendUnavailable("postgres") from exc


@asynccontextmanager
async def open_redis(url: str, timeout_s: float) -> AsyncIterator[aioredis.Redis]:
    """A redis-py asyncio client whose every socket operation is bounded by ``timeout_s``.

    Its pool waits (up to ``timeout_s``) for a free connection rather than failing, so a
    storm of reads queues instead of answering 503 at the 65th concurrent call.
    """
    # One immediate retry on a connection error (not a timeout: a stuck Redis must answer
    # 503 within the deadline): a connection left idle in the pool across
    # a Redis restart is dead, and its first command fails. Every script the actors send
    # is idempotent (a reservation names its purchase id), so a retry is safe.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, health_check_interval=0,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)))
    client = aioredis.Redis.from_pool(pool)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True), suppress(BackendUnavailable):
            await redis_call(timeout_s, client.aclose)
