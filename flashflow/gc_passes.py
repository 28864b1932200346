"""The server's full garbage-collection passes: on a clock, not on allocation counts.

CPython's cyclic collector walks every tracked object of the process in a full pass, and
starts one by itself whenever the objects that outlived two younger passes grow by a
quarter. A live stream keeps about 200 such objects (its connection, its task and their
awaits), so a worker holding 5,000 streams walks a million objects for 0.5 to 1.5 s in each
full pass, and nothing else runs meanwhile: not the fan-out of a stock change, not a
purchase, not the accept loop. Streams arriving in a crowd grow the heap by a quarter again
and again, and each update's fan-out leaves new long-lived frames behind, so those passes
came every few seconds (see docs/performance.md, "The live feed").

While :func:`full_passes_on_a_clock` is entered, the young passes run as Python runs them,
which is where short-lived cycles die, and a full pass runs every
:data:`FULL_PASS_EVERY_S` instead: the cycles that live long (a closed connection's
objects, say) wait at most that long to be freed.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

#: Seconds between two full passes of the collector in a serving process.
FULL_PASS_EVERY_S = 60.0
#: The oldest generation's threshold while passes run on the clock: the count of young
#: passes after which Python would consider a full one; never reached between two ticks.
_NEVER = 1 << 30


#: The blocks entered now, and the oldest threshold Python had before the first of them.
_entered: list[int] = []


@asynccontextmanager
async def full_passes_on_a_clock(every_s: float = FULL_PASS_EVERY_S) -> AsyncIterator[None]:
    """Run the collector's full passes every ``every_s`` seconds, and only then, inside
    the block; Python's own thresholds are back once the last such block of the process
    (several servers may share one, as in tests) exits."""
    young, middle, old = gc.get_threshold()
    _entered.append(old if not _entered else _entered[0])
    gc.set_threshold(young, middle, _NEVER)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tick, every_s)
            yield
            nursery.cancel_scope.cancel()
    finally:
        first = _entered.pop()
        if not _entered:
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, first)


async def _tick(every_s: float) -> None:
    while True:
        await trio.sleep(every_s)
        gc.collect()
