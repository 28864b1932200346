"""The remaining stock a route shows: the feed's memory first, Redis when it does not know."""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime
from typing import Any

from actors import FlashFlowError, Sale, Tally

from ..runtime import Runtime
from .wire import sale_body


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


async def hold_tally(runtime: Runtime, sale: Sale) -> Tally | None:
    """A sale with holds: its units held, confirmed and waited for (None without holds)."""
    return await runtime.holds.tally(sale.id) if sale.holds else None


async def sale_view(runtime: Runtime, sale: Sale, now: datetime) -> dict[str, Any]:
    """The sale's wire body: the stock left, and with holds where the other units stand."""
    return sale_body(sale, await current_stock(runtime, sale), now,
                     await hold_tally(runtime, sale))
