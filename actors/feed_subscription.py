"""What a watcher of one sale's stock holds: :class:`Subscription`, and the sale it watches.

The feed (:mod:`actors.stock_feed`) keeps one :class:`WatchedSale` per sale watched and
hands out a :class:`Subscription` per watcher; a subscription reads the sale's latest value
and version, and parks in its wake-up group until the feed has news.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Self

import trio

from ._slot import Slot
from .errors import FlashFlowError, ShuttingDown

if TYPE_CHECKING:
    from .stock_feed import StockFeed


class WatchedSale:
    """One watched sale: latest value, version, and one wake-up Event per group."""

    __slots__ = ("groups", "joined", "priming", "subscribers", "value", "version")

    def __init__(self, groups: int) -> None:
        self.value: int | None = None
        self.version = 0
        self.groups = [trio.Event() for _ in range(groups)]
        self.subscribers = 0
        self.joined = 0
        self.priming: Slot[int | None] | None = None


class _Abandoned(Exception):
    """The subscriber reading a sale's snapshot for everyone was cancelled before it could."""


class Subscription:
    """One watcher of one sale's stock; use it as a context manager so it is freed at once."""

    __slots__ = ("_closed", "_feed", "_group", "_next_at", "_sale_id", "_seen", "_state")

    def __init__(self, feed: StockFeed, sale_id: uuid.UUID, state: WatchedSale) -> None:
        self._feed = feed
        self._sale_id = sale_id
        self._state = state
        self._group = state.joined % len(state.groups)
        self._seen = state.version
        self._next_at = -math.inf
        self._closed = False

    async def snapshot(self) -> int | None:
        """The stock to start from: every change after it is sure to reach :meth:`next`.

        The feed's own value is used when it has one, costing no Redis call. The first
        watcher of a sale has Redis publish the current stock through the channel (one call,
        shared by everyone waiting), so no older message can arrive after it unnoticed.
        Returns None when Redis holds no stock for the sale (its gate is not loaded).

        Raises:
            BackendUnavailable: Redis could not be asked.
        """
        state = self._state
        while True:
            if state.value is not None:
                await trio.lowlevel.checkpoint()
                self._seen = state.version
                return state.value
            if state.priming is not None:
                try:
                    return await state.priming.wait()
                except _Abandoned:
                    continue  # the watcher asking left: ask again, for everyone waiting
            slot = state.priming = Slot()
            try:
                slot.set(await self._feed._reread(self._sale_id))
            except FlashFlowError as exc:
                slot.fail(exc)
                raise
            except BaseException:
                # Cancelled (its client left): that ends this stream only, not the others.
                slot.fail(_Abandoned())
                raise
            finally:
                state.priming = None
            return await slot.wait()

    async def next(self) -> int:
        """Wait for a stock value this subscriber has not seen, and return the latest one.

        Deliveries are at least ``min_interval_s`` apart; changes in between are skipped, so
        the value returned is always the newest. Cancelling a wait consumes nothing.
        """
        state = self._state
        waited = False
        while state.version == self._seen:
            if self._feed.closing:
                raise ShuttingDown()
            await state.groups[self._group].wait()
            waited = True
        if trio.current_time() < self._next_at:
            await trio.sleep_until(self._next_at)
        elif not waited:  # a wait was a checkpoint already; a fan-out saves one per stream
            await trio.lowlevel.checkpoint()
        self._seen = state.version
        self._next_at = trio.current_time() + self._feed.min_interval_s
        self._feed._delivered += 1
        return state.value  # type: ignore[return-value]

    def close(self) -> None:
        """Stop watching; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._feed._release(self._sale_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["Subscription", "WatchedSale"]
