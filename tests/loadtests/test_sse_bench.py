"""The live-feed bench at a small size: every subscriber sees every update it waits for.
Nothing here asserts how fast anything is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_a_small_run_reaches_every_subscriber(services):
    """300 subscribers, 5 spaced purchases and a burst of 20: every figure is reported, and
    every update reached every subscriber watching for it."""
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, "-m", "loadtests.sse_bench", "--subscribers", "300",
             "--latency-subscribers", "50", "--purchases", "5", "--burst", "20",
             "--timeout-s", "120", "--database-url", services.database_url,
             "--redis-url", services.redis_url],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    report = json.loads(done.stdout)
    assert report["subscribers_held"] == 301
    assert report["fanout_reached"] == "900/900"
    assert report["spaced_deliveries"] == "250/250"
    assert report["burst_final_seen"] == "50/50"
    assert report["kib_per_subscriber"] > 0 and report["server_cpu_us_per_update"] > 0
