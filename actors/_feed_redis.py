"""The Redis side of the stock feed: subscribing, reading in batches, re-reading stock.

These run in asyncio (through :func:`actors._aio.call`), so one trio-asyncio crossing
carries a whole batch of messages.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.exceptions

from .keys import CHANGED

# KEYS: stock. ARGV: channel, sale id. Publishes the current stock through the channel, so
# it reaches every feed in order with the changes the gate's scripts publish. The channel
# is no key (as in the gate's scripts), so on a cluster the script runs in the sale's slot.
REPUBLISH = """
local stock = redis.call('GET', KEYS[1])
if stock then redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. stock) end
return stock
"""


async def subscribe_confirmed(pubsub: Any, channel: str, timeout_s: float) -> None:
    """Subscribe and wait for Redis to confirm, so no change published after it is missed."""
    await pubsub.subscribe(channel)
    while True:
        message = await pubsub.get_message(timeout=timeout_s)
        if message is None:
            raise redis.exceptions.TimeoutError("no subscribe confirmation")
        if message["type"] == "subscribe":
            return


async def read_batch(pubsub: Any, wait_s: float, limit: int) -> list[dict[str, Any]]:
    """Wait up to ``wait_s`` for one message, then take whatever else has already arrived."""
    first = await pubsub.get_message(timeout=wait_s)
    if first is None:
        return []
    batch = [first]
    while len(batch) < limit:
        message = await pubsub.get_message(timeout=0)
        if message is None:
            break
        batch.append(message)
    return batch


def parse_stock(data: Any) -> tuple[uuid.UUID, int | None] | None:
    """Parse a stock message, "<sale id> <stock>", or a change notice, "<sale id> changed"
    (stock None); return None if it is malformed."""
    try:
        sale_text, stock_text = data.split()
        if isinstance(sale_text, bytes):
            sale_text, stock_text = sale_text.decode(), stock_text.decode()
        if stock_text == CHANGED:
            return uuid.UUID(sale_text), None
        return uuid.UUID(sale_text), max(int(stock_text), 0)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
