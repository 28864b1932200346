"""The server's full garbage-collection passes run on a clock while it serves."""

from __future__ import annotations

import gc

import trio

from flashflow.gc_passes import full_passes_on_a_clock


async def test_full_passes_run_on_the_clock_and_thresholds_come_back(autojump_clock):
    """Inside the block Python never starts a full pass by itself and one runs every tick;
    on exit Python's own thresholds are back."""
    before = gc.get_threshold()
    async with full_passes_on_a_clock(every_s=10):
        young, middle, old = gc.get_threshold()
        assert (young, middle) == before[:2]
        assert old > 1_000_000
        passes = gc.get_stats()[2]["collections"]
        await trio.sleep(35)
        assert gc.get_stats()[2]["collections"] - passes == 3
    assert gc.get_threshold() == before
