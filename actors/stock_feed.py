"""The stock-feed actor: every stock change in Redis, fanned out to many watchers.

One task holds a Redis pub/sub subscription to the stock channel (on a cluster, on
one node: a cluster forwards every PUBLISH to every node) and crosses into
asyncio once per batch of messages. Each watched sale keeps one value and a version; a
subscriber's state is the version it last saw and when it may next be told, so a slow
subscriber only ever skips to the latest value. It never queues changes and never holds up
the reader, the other subscribers or the purchase path.

Subscribers of a sale are parked in ``wake_groups`` groups, and a change wakes one group per
scheduler pass: with thousands watching, the fan-out is spread over many passes instead of
one long one, so purchases and driver I/O keep running while it goes out.

If the subscription drops, the feed subscribes again at once, then under its declared
``reconnect`` policy while Redis refuses, and has Redis publish the current stock of every
watched sale again, through the same channel, so the fresh value
arrives in order with every other change and no subscriber is left on a stale figure.

The channel also carries change notices (an operator changed a sale's stock or window):
each is handed to ``on_notice``, and so is a subscription taken up again, since notices
may have been missed while it was down.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis.exceptions
import trio

from . import _aio
from ._feed_redis import REPUBLISH, parse_stock, read_batch, subscribe_confirmed
from ._nursery import open_actor_nursery
from .backoff import Backoff
from .errors import BackendUnavailable
from .feed_subscription import Subscription, WatchedSale
from .keys import sale_keys, stock_channel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedConfig:
    """The feed's knobs; the application builds this from its settings, which hold the
    defaults of those it sets. The rest are the feed's own."""

    redis_url: str
    key_prefix: str
    timeout_s: float
    min_interval_s: float = 0.1
    wake_groups: int = 64
    batch_max: int = 512
    idle_ping_s: float = 5.0
    #: Waits between attempts to subscribe again once the subscription was lost.
    reconnect: Backoff = Backoff(initial_s=0.05, max_s=5.0, jitter_s=0.05)


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    """A snapshot of the feed's work, for /metrics and tests."""

    subscribers: int
    watched_sales: int
    messages_received: int
    updates_delivered: int
    reconnects: int
    connected: bool


class StockFeed:
    """Handle to a running stock-feed actor; see :func:`open_stock_feed`."""

    def __init__(self, config: FeedConfig, client: _aio.RedisClient, source: _aio.PubSubSource,
                 on_notice: Callable[[], None] = lambda: None) -> None:
        self._config = config
        self._on_notice = on_notice
        self._source = source
        # register_script works on a cluster client too: EVALSHA goes to the node of the
        # script's key, and a NOSCRIPT reply (a promoted replica) loads it on every primary.
        self._republish = client.register_script(REPUBLISH)
        self._channel = stock_channel(config.key_prefix)
        self._sales: dict[uuid.UUID, WatchedSale] = {}
        # sale id -> the stock last published, for every sale heard of while subscribed.
        self._latest: dict[uuid.UUID, int] = {}
        self._priming: set[uuid.UUID] = set()
        self.closing = False
        self._changed: dict[uuid.UUID, WatchedSale] = {}
        self._wake = trio.Event()
        self._subscribers = 0
        self._received = 0
        self._delivered = 0
        self._reconnects = 0
        self._connected = False

    @property
    def connected(self) -> bool:
        """Whether the subscription to Redis is up, so changes are reaching subscribers."""
        return self._connected

    @property
    def min_interval_s(self) -> float:
        """The shortest time between two deliveries to one subscriber."""
        return self._config.min_interval_s

    def close_streams(self) -> None:
        """End every subscriber's wait with ShuttingDown, now and from now on (shutdown)."""
        self.closing = True
        for state in self._sales.values():
            for event in state.groups:
                event.set()

    def forget(self, sale_ids: list[uuid.UUID]) -> None:
        """Drop the stock remembered for sales that are over."""
        for sale_id in sale_ids:
            self._latest.pop(sale_id, None)

    def latest(self, sale_id: uuid.UUID) -> int | None:
        """The sale's stock as last published, while the subscription is up; None if unknown.

        Every gate script publishes each change, so while connected this is the stock as
        Redis holds it, without a round trip.
        """
        return self._latest.get(sale_id) if self._connected else None

    async def prime(self, sale_id: uuid.UUID) -> int | None:
        """Have Redis publish the sale's stock, so :meth:`latest` knows it; return the value.

        The value is learnt from the channel, in order with every later change, never from
        this call's reply, so a change racing it cannot be overwritten by an older value.
        """
        if sale_id in self._priming:
            return None
        self._priming.add(sale_id)
        try:
            return await self._reread(sale_id)
        finally:
            self._priming.discard(sale_id)

    def subscribe(self, sale_id: uuid.UUID) -> Subscription:
        """Start watching ``sale_id``; changes from now on reach the returned subscription."""
        state = self._sales.get(sale_id)
        if state is None:
            state = self._sales[sale_id] = WatchedSale(self._config.wake_groups)
        state.subscribers += 1
        state.joined += 1
        self._subscribers += 1
        return Subscription(self, sale_id, state)

    def _release(self, sale_id: uuid.UUID) -> None:
        state = self._sales[sale_id]
        state.subscribers -= 1
        self._subscribers -= 1
        if state.subscribers == 0:
            del self._sales[sale_id]

    def statistics(self) -> FeedStatistics:
        """Return a snapshot of the feed's counters."""
        return FeedStatistics(
            subscribers=self._subscribers,
            watched_sales=len(self._sales),
            messages_received=self._received,
            updates_delivered=self._delivered,
            reconnects=self._reconnects,
            connected=self._connected,
        )

    # -- the actor's tasks ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the subscription until cancelled; started once the first one works.

        A failure to subscribe at start-up is raised. A subscription lost later is taken up
        again under the ``reconnect`` policy, which starts afresh after each one that worked.
        """
        pubsub = await self._subscribe()
        task_status.started()
        while True:
            try:
                await self._listen(pubsub)
            except BackendUnavailable as exc:
                log.warning("stock feed lost its subscription (%r); reconnecting",
                            exc.__cause__ or exc)
            finally:
                await self._close(pubsub)
            pubsub = await self._resubscribe()

    async def _resubscribe(self) -> Any:
        """Subscribe again, as often as the ``reconnect`` policy says, until it works."""
        async for attempt in self._config.reconnect.forever(BackendUnavailable):
            with attempt:
                self._reconnects += 1
                pubsub = await self._subscribe()
                self._on_notice()
                return pubsub
        raise AssertionError("a policy that retries forever ended")  # pragma: no cover

    async def _subscribe(self) -> Any:
        """A subscription to the stock channel, with every watched sale's stock republished."""
        pubsub = self._source.pubsub()
        try:
            await self._call(subscribe_confirmed, pubsub, self._channel, self._config.timeout_s)
            self._connected = True
            for sale_id in list(self._sales):
                await self._reread(sale_id)
        except BaseException:
            await self._close(pubsub)
            raise
        return pubsub

    async def _close(self, pubsub: Any) -> None:
        self._connected = False
        self._latest.clear()  # changes missed while disconnected would leave it stale
        with trio.CancelScope(shield=True), suppress(BackendUnavailable):
            await self._call(pubsub.aclose)

    async def wake_subscribers(self) -> None:
        """Wake the subscribers of changed sales, one group per scheduler pass."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._changed:
                sale_id = next(iter(self._changed))
                state = self._changed.pop(sale_id)
                for i, event in enumerate(state.groups):
                    if event.statistics().tasks_waiting:
                        state.groups[i] = trio.Event()
                        event.set()
                        await trio.lowlevel.checkpoint()

    async def _listen(self, pubsub: Any) -> None:
        """Apply batches of messages until the connection fails or stays silent too long."""
        wait_s = self._config.idle_ping_s
        silent = 0
        while True:
            batch = await self._call(read_batch, pubsub, wait_s, self._config.batch_max,
                                     extra_s=wait_s)
            if batch:
                silent = 0
                self._apply(batch)
                continue
            silent += 1
            if silent > 2:
                raise BackendUnavailable("redis")
            # A PING's reply proves the connection still carries messages.
            await self._call(pubsub.ping)

    def _apply(self, batch: list[dict[str, Any]]) -> None:
        for message in batch:
            if message.get("type") != "message":
                continue
            self._received += 1
            parsed = parse_stock(message.get("data"))
            if parsed is None:
                log.debug("ignored a malformed stock message: %r", message.get("data"))
                continue
            sale_id, stock = parsed
            if stock is None:
                self._on_notice()
                continue
            self._latest[sale_id] = stock
            state = self._sales.get(sale_id)
            if state is not None and state.value != stock:
                state.value = stock
                state.version += 1
                self._changed[sale_id] = state
                self._wake.set()

    async def _reread(self, sale_id: uuid.UUID) -> int | None:
        """Have Redis publish the current stock of ``sale_id`` again; return it."""
        stock_key = sale_keys(self._config.key_prefix, sale_id).stock
        value = await self._call(self._republish, keys=[stock_key],
                                 args=[self._channel, str(sale_id)])
        return None if value is None else max(int(value), 0)

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, extra_s: float = 0.0,
                    **kwargs: Any) -> Any:
        try:
            return await _aio.call("redis", self._config.timeout_s + extra_s, fn, *args,
                                   **kwargs)
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable("redis") from exc


@asynccontextmanager
async def open_stock_feed(config: FeedConfig,
                          on_notice: Callable[[], None] = lambda: None
                          ) -> AsyncIterator[StockFeed]:
    """Open the stock-feed actor; yields once the subscription works, stops it on exit.

    Args:
        config: connection, pacing and fan-out settings.
        on_notice: called on a change notice, and when a lost subscription is taken up again.

    Raises:
        BackendUnavailable: Redis could not be subscribed to at start-up.
    """
    # The feed reconnects by itself, so it knows to publish fresh values after a drop.
    client = _aio.redis_client(config.redis_url, config.timeout_s, pool_size=None, retries=0,
                               client_name=f"{config.key_prefix}stock-feed")
    source = _aio.PubSubSource(client, config.redis_url, config.timeout_s)
    try:
        feed = StockFeed(config, client, source, on_notice)
        async with open_actor_nursery() as nursery:
            nursery.start_soon(feed.wake_subscribers)
            await nursery.start(feed.run)
            try:
                yield feed
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await source.aclose()
        await _aio.close_redis(client, config.timeout_s)
