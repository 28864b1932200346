"""Smart batching: take what has gathered in an inbox, up to a limit, as one batch.

While one batch is out at Redis or PostgreSQL, the next requests queue up; the next batch
takes all of them. Under light load a batch is one request (no added latency); under a
stampede one round trip serves hundreds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import trio

T = TypeVar("T")


async def batches(inbox: trio.MemoryReceiveChannel[T], batch_max: int) -> AsyncIterator[list[T]]:
    """Yield lists of at most ``batch_max`` items: the first waited for, the rest at hand."""
    async for first in inbox:
        batch = [first]
        while len(batch) < batch_max:
            try:
                batch.append(inbox.receive_nowait())
            except trio.WouldBlock:
                break
        yield batch
