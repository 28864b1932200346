"""The remaining stock a route shows: the feed's memory first, Redis when it does not know."""

from __future__ import annotations

from contextlib import suppress

from actors import FlashFlowError, Sale

from ..runtime import Runtime


async def current_stock(runtime: Runtime, sale: Sale) -> int:
    """The sale's stock from the feed's memory; Redis is read only when the feed does not know."""
    remaining = runtime.feed.latest(sale.id)
    if remaining is None and runtime.feed.connected:
        # The feed's connection may be the last to learn Redis restarted: the gate's own
        # read, which retries a dead connection once, answers then.
        with suppress(FlashFlowError):
            remaining = await runtime.feed.prime(sale.id)
    if remaining is None:
        remaining = await runtime.gate.store.remaining(sale)
    return remaining
