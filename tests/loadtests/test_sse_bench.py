"""The live-feed bench at a small size: every subscriber connects and sees every update it
waits for, and the run judges its own invariants. Nothing here asserts how fast anything is."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio

from loadtests.sse_bench import COMMITTED, NEVER_ROSE, REACHED, StockRun
from loadtests.sse_line import FINAL, IN_ORDER, JOINED, LineRun

ROOT = Path(__file__).resolve().parents[2]
NONE_LOST = {"refused": 0, "reset": 0, "timed_out": 0, "cut": 0}


@pytest.mark.slow
async def test_a_small_run_reaches_every_subscriber(services):
    """300 subscribers on 2 workers, 5 spaced purchases and a burst of 20: every stream
    connected and none dropped, every figure is reported, every update reached every
    subscriber watching for it, and the invariants held (exit 0)."""
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
    assert report["workers"] == 2
    assert report["subscribers"] == {"asked": 300, "connected": 300,
                                     "not_connected": NONE_LOST,
                                     "dropped_after_connect": NONE_LOST}
    assert report["server_feed_subscribers"] == 301
    assert report["fanout_reached"] == "900/900"
    assert len(report["fanout_each_update_p99_ms"]) == 3
    assert report["latency_subscribers"]["connected"] == 50
    assert report["spaced_deliveries"] == "250/250"
    assert report["burst_final_seen"] == "50/50"
    assert report["purchases"] == {"201": 28}
    assert report["invariants"] == {COMMITTED: True, REACHED: True, NEVER_ROSE: True}
    assert report["kib_per_subscriber"] > 0 and report["server_cpu_us_per_update"] > 0
    assert report["bench_cpu_us_per_update"] > 0


@pytest.mark.slow
async def test_a_small_line_run_admits_every_stream(services):
    """200 waiting ticket streams (and the first one) on 2 workers, admitted at 100 a
    second: every join took a ticket, every stream connected, none dropped, each got its
    ``admitted`` event, every figure is reported, and the invariants held (exit 0)."""
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, "-m", "loadtests.sse_bench", "--line", "--subscribers", "200",
             "--admit-per-s", "100", "--opening-in-s", "1", "--timeout-s", "120",
             "--database-url", services.database_url, "--redis-url", services.redis_url],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    report = json.loads(done.stdout)
    assert report["workers"] == 2 and report["admit_per_s"] == 100
    assert report["joins"] == {"201": 201}
    assert report["subscribers"] == {"asked": 200, "connected": 200,
                                     "not_connected": NONE_LOST,
                                     "dropped_after_connect": NONE_LOST}
    assert report["last_events"] == {"admitted": 201, "closed": 0, "none": 0}
    assert report["invariants"] == {JOINED: True, FINAL: True, IN_ORDER: True}
    assert report["kib_per_subscriber"] > 0 and report["connect_all_s"] > 0
    assert report["admitting_s"] > 0 and report["server_cpu_us_per_stream_admitted"] > 0
    for measure in ("admitted_at", "line_passed"):
        p50, p99, worst = (report[f"{measure}_to_event_{q}_ms"] for q in ("p50", "p99", "max"))
        assert 0 <= p50 <= p99 <= worst


def test_the_line_invariants_fail_on_what_the_run_counted():
    """A join not answered 201, a stream left open without its last event, and an admission
    out of the line's order each fail their own invariant."""
    run = LineRun(None, "127.0.0.1", 0, None, None)  # type: ignore[arg-type]
    assert run.invariants() == {JOINED: True, FINAL: True, IN_ORDER: True}
    run.joins = Counter({"201": 5, "409": 1})
    assert run.invariants() == {JOINED: False, FINAL: True, IN_ORDER: True}
    run.joins, run.without_last, run.out_of_order = Counter({"201": 5}), 1, 0
    assert run.invariants() == {JOINED: True, FINAL: False, IN_ORDER: True}
    run.without_last, run.out_of_order = 0, 2
    assert run.invariants() == {JOINED: True, FINAL: True, IN_ORDER: False}


def test_the_invariants_fail_on_what_the_run_counted():
    """A purchase not answered 201 fails the first invariant (and leaves the stock-rise
    check unjudged, since its units come back); a missed delivery fails the second; a rise
    after only committed purchases fails the third."""
    run = StockRun(None, "127.0.0.1", 0, None, None)  # type: ignore[arg-type]
    assert run.invariants() == {COMMITTED: True, REACHED: True, NEVER_ROSE: True}
    run.rose = 1
    assert run.invariants()[NEVER_ROSE] is False
    run.purchases = Counter({"201": 3, "503": 1})
    run.missed = 2
    assert run.invariants() == {COMMITTED: False, REACHED: False, NEVER_ROSE: True}
