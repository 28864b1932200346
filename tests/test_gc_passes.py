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


async def test_overlapping_servers_leave_the_thresholds_as_python_had_them(autojump_clock):
    """Two servers in one process (as in tests), the first leaving while the second still
    serves: full passes stay on the clock until the last leaves, then Python's own
    thresholds are back."""
    before = gc.get_threshold()
    first_left = trio.Event()

    async def serve_a_while(seconds: float, left: trio.Event | None = None) -> None:
        async with full_passes_on_a_clock(every_s=10):
            await trio.sleep(seconds)
        if left is not None:
            left.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_a_while, 5, first_left)
        nursery.start_soon(serve_a_while, 20)
        await first_left.wait()
        assert gc.get_threshold()[2] > 1_000_000, "the second server still serves"
    assert gc.get_threshold() == before
