"""Crossing from trio into asyncio drivers, with a deadline and error translation.

Every Redis and PostgreSQL call goes through :func:`call`, so each one is bounded in
time and no driver exception escapes an actor.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, ParamSpec, TypeAlias, TypeVar

import asyncpg
import redis
import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .errors import BackendUnavailable
from .redis_url import parse_redis_url

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
#: What :func:`redis_client` builds: one server's (or a Sentinel master's) client, or a cluster's.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster


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


#: Where redis-py's and asyncio's own code lives (see :func:`redis_call`).
_DRIVER_DIRS = tuple(str(Path(inspect.getfile(module)).parent) + "/"
                     for module in (redis, asyncio))


def _raised_in_driver(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by redis-py's or asyncio's own code, not by ours."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_DRIVER_DIRS)


async def redis_call(timeout_s: float, fn: Callable[P, Awaitable[T]], *args: P.args,
                     **kwargs: P.kwargs) -> T:
    """:func:`call` for redis-py, with every Redis error read as BackendUnavailable.

    So is an ``AttributeError`` or ``TypeError`` raised inside redis-py or asyncio: a
    connection torn down under a call (by the cluster client's refresh of its nodes during
    a failover, ``'NoneType' object has no attribute 'writelines'``; by a peer's reset,
    redis-py issue #4287) fails that way instead of with ``ConnectionError``. redis-py has
    dropped the connection by then, and the pool opens a new one.
    """
    try:
        return await call("redis", timeout_s, fn, *args, **kwargs)
    except redis.exceptions.RedisError as exc:
        raise BackendUnavailable("redis") from exc
    except (AttributeError, TypeError) as exc:
        if not _raised_in_driver(exc):
            raise
        raise BackendUnavailable("redis") from exc


async def postgres_call(timeout_s: float, fn: Callable[P, Awaitable[T]], *args: P.args,
                        **kwargs: P.kwargs) -> T:
    """:func:`call` for asyncpg, with driver errors read as BackendUnavailable."""
    try:
        return await call("postgres", timeout_s, fn, *args, **kwargs)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # InternalClientError comes from a pool whose server vanished mid-query.
        raise BackendUnavailable("postgres") from exc


def redis_client(url: str, timeout_s: float, *, pool_size: int | None = 64,
                 retries: int = 1, client_name: str | None = None) -> RedisClient:
    """A redis-py asyncio client for the URL's shape, every socket operation bounded.

    One server and a Sentinel-watched master get a pool that waits (up to ``timeout_s``)
    for a free connection when ``pool_size`` is given, rather than failing, so a storm of
    reads queues instead of answering 503 at the 65th concurrent call. A cluster client
    keeps a pool per node and follows the slots itself.

    Args:
        retries: immediate retries on a connection error (not a timeout: a stuck Redis must
            answer 503 within the deadline). A connection left idle in the pool across a
            Redis restart or a failover is dead, and its first command fails. Every script
            the actors send is idempotent (a reservation names its purchase id), so a retry
            is safe.
    """
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
        "client_name": client_name,
        "retry": Retry(NoBackoff(), retries, supported_errors=(redis.exceptions.ConnectionError,)),
    }
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            max_connections=4 * (pool_size or 64), **target.credentials, **options)
    options["health_check_interval"] = 0
    blocking: dict[str, Any] = (
        {} if pool_size is None else {"max_connections": pool_size, "timeout": timeout_s})
    if target.kind == "sentinel":
        assert target.master is not None  # parse_redis_url requires it of a sentinel URL
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs={
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s})
        return sentinel.master_for(
            target.master, db=target.db,
            connection_pool_class=_BlockingSentinelPool if blocking else SentinelConnectionPool,
            **blocking, **target.credentials, **options)
    if not blocking:
        return aioredis.Redis.from_url(url, **options)
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(url, **blocking, **options))


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (it asks the Sentinels where the master is) that waits for a free
    connection like :class:`redis.asyncio.BlockingConnectionPool`."""


async def close_redis(client: RedisClient, timeout_s: float) -> None:
    """Close ``client``, shielded and bounded; a Redis that is gone is no error here."""
    with trio.CancelScope(shield=True), suppress(BackendUnavailable):
        await redis_call(timeout_s, client.aclose)


@asynccontextmanager
async def open_redis(url: str, timeout_s: float) -> AsyncIterator[RedisClient]:
    """A pooled :func:`redis_client` for the gate and the limiter, closed on exit."""
    client = redis_client(url, timeout_s)
    try:
        yield client
    finally:
        await close_redis(client, timeout_s)


@asynccontextmanager
async def open_postgres(url: str, timeout_s: float, pool_size: int,
                        statement_cache_size: int) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool of up to ``pool_size`` connections for the ledger, closed on exit.

    ``statement_cache_size`` is 0 behind PgBouncer in transaction pooling mode: a named
    prepared statement lives on one server connection, and the next transaction may run on
    another.
    """
    pool = await postgres_call(timeout_s, asyncpg.create_pool, url, min_size=1,
                               max_size=pool_size, command_timeout=timeout_s,
                               statement_cache_size=statement_cache_size)
    try:
        yield pool
    finally:
        with trio.CancelScope(shield=True), suppress(BackendUnavailable):
            await call("postgres", timeout_s, pool.close)


class PubSubSource:
    """Opens the stock feed's pub/sub subscriptions for any shape of Redis.

    One server or a Sentinel master: a subscription on the client itself (after a failover
    Sentinel names the new master). A cluster: plain pub/sub on one node, since a cluster
    forwards every PUBLISH to every node; each new subscription takes the next node of the
    cluster, so one that died is left behind.
    """

    def __init__(self, client: RedisClient, url: str, timeout_s: float) -> None:
        self._client = client
        self._target = parse_redis_url(url)
        self._timeout_s = timeout_s
        self._turn = 0
        self._nodes: dict[tuple[str, int], aioredis.Redis] = {}

    def pubsub(self) -> Any:
        """A new, unsubscribed pub/sub object."""
        if not isinstance(self._client, RedisCluster):
            return self._client.pubsub()
        known = [(n.host, int(n.port)) for n in self._client.get_nodes()]
        nodes = known or list(self._target.nodes)
        address = nodes[self._turn % len(nodes)]
        self._turn += 1
        if address not in self._nodes:
            self._nodes[address] = aioredis.Redis(
                host=address[0], port=address[1], socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s, health_check_interval=0,
                retry=Retry(NoBackoff(), 0), **self._target.credentials)
        return self._nodes[address].pubsub()

    async def aclose(self) -> None:
        """Close the per-node clients of a cluster's subscriptions."""
        for client in self._nodes.values():
            await close_redis(client, self._timeout_s)
