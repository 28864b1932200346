"""Measure the live streams over loopback: capacity, memory and delivery delay.

It makes a scratch database and Redis key prefix holding one sale (the load harness's,
:mod:`flashflow.capacity.harness`) and serves Flash Flow in a child process on 127.0.0.1
with ``--workers`` workers, as the benchmark does (:mod:`loadtests.bench.server`); then,
from this process:

1. opens ``--subscribers`` SSE connections (:mod:`loadtests.sse_streams`), reads each one's
   snapshot, and reports how many connected and how the others failed (refused, reset,
   timed out, cut, by kind), the time to connect them all, the server's resident memory per
   stream, and the delay from each of ``--updates`` purchases (one at a time) to every
   stream seeing its stock;
2. opens ``--latency-subscribers`` afresh and makes ``--purchases`` purchases spaced out
   beyond the feed's pacing, reporting p50/p99 of the delay from each purchase's commit
   (its 201) to every subscriber seeing the new stock; then a burst of purchases at once,
   reporting the delay from the last commit to every subscriber seeing the final stock.

With ``--line`` it measures the waiting room's ticket streams instead
(:mod:`loadtests.sse_line`): ``--subscribers`` tickets waiting, then admitted at
``--admit-per-s``, and the delay of each one's ``admitted`` event.

A connection the server did not hold is a figure, not a failure. The run exits 1 only when
one of its own invariants fails, and names it: every purchase it made answered 201; every
update reached every stream still open; no stream saw the stock rise (``--line``: those of
:mod:`loadtests.sse_line`). Everything is bounded
by ``--timeout-s`` (past it, exit 2); the child and the database are removed at the end.

    python -m loadtests.sse_bench --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections import Counter
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import trio

from flashflow.capacity.harness import Scratch
from flashflow.http.wire import CURRENT_PURCHASE, METRICS

from .bench.server import BenchServer, bench_sale, cpu_seconds
from .sse_line import LineRun
from .sse_run import Run, client_cpu_s, hold, ms, percentile, raise_fd_limit
from .sse_streams import Reader, Subscriber, clock, tally

#: The sale's stock: far more than the bench buys, so it never sells out under it.
STOCK_AT_START = 1_000_000
FEED_SUBSCRIBERS = re.compile(r"^flashflow_feed_subscribers(?:\{[^}]*\})? (\S+)$", re.MULTILINE)
#: The invariants, in the order the report lists them.
COMMITTED, REACHED, NEVER_ROSE = ("every_purchase_committed", "every_update_reached_open_streams",
                                  "no_stream_saw_stock_rise")


class StockRun(Run):
    """A run of the stock feed: its purchases, and the bench's tallies of what the streams saw."""

    def __init__(self, client: httpx.AsyncClient, host: str, port: int, server: psutil.Process,
                 args: argparse.Namespace, scratch: Scratch | None = None) -> None:
        super().__init__(client, host, port, server, args, scratch)
        self.stock = STOCK_AT_START
        self.purchases: Counter[str] = Counter()
        #: Deliveries each update owed to a stream open until the wait for it ended, missed.
        self.missed = 0
        self.rose = 0

    async def measure(self) -> None:
        await capacity_phase(self)
        await latency_phase(self)
        self.report["purchases"] = dict(self.purchases)
        self.report["streams_saw_stock_rise"] = self.rose

    async def buy(self, user: str) -> bool:
        """One purchase; True (and the stock one lower) if it answered 201."""
        try:
            response = await self.client.post(CURRENT_PURCHASE, json={"userId": user})
            outcome = str(response.status_code)
        except httpx.TransportError as exc:
            outcome = type(exc).__name__
        self.purchases[outcome] += 1
        if outcome == "201":
            self.stock -= 1
            return True
        return False

    async def server_streams(self) -> int | None:
        """The feed subscriptions the server holds, summed over its workers, per /metrics."""
        with suppress(httpx.HTTPError):
            text = (await self.client.get(METRICS)).text
            return sum(int(float(v)) for v in FEED_SUBSCRIBERS.findall(text))
        return None

    async def wait_seen(self, subs: list[Subscriber], since: float, timeout_s: float,
                        poll_s: float = 0.01) -> list[float]:
        """Wait until every stream still open has seen the current stock (at most
        ``timeout_s``); return each one's delay since ``since``, counting the missed."""
        stock = self.stock
        with trio.move_on_after(timeout_s):
            for sub in subs:
                while sub.live_at(clock()) and sub.first_at_most(stock, since) is None:
                    await trio.sleep(poll_s)
        now = clock()
        delays = []
        for sub in subs:
            t = sub.first_at_most(stock, since)
            if t is not None:
                delays.append(t - since)
            elif sub.live_at(now):
                self.missed += 1
        return delays

    async def wait_released(self, timeout_s: float = 30.0) -> None:
        """Wait until the server has let go of the streams the bench closed."""
        started = clock()
        with trio.move_on_after(timeout_s):
            while (await self.server_streams() or 0) > 0:
                await trio.sleep(0.5)
        self.report["server_released_streams_s"] = round(clock() - started, 1)

    def check(self, subs: list[Subscriber]) -> None:
        """Count the streams that saw the stock rise."""
        self.rose += sum(s.stock_rose() for s in subs)

    def invariants(self) -> dict[str, bool]:
        """The bench's own invariants, each held or not. A purchase that was not committed
        gives its units back, so the stock may rise after it: the first invariant fails
        then, and the last is not judged."""
        committed = set(self.purchases) <= {"201"}
        return {COMMITTED: committed, REACHED: self.missed == 0,
                NEVER_ROSE: self.rose == 0 or not committed}


async def capacity_phase(run: StockRun) -> None:
    """Hold ``--subscribers`` streams; memory, connect time, and ``--updates`` purchases
    fanned out to them, one at a time."""
    report, args = run.report, run.args
    with Reader() as reader:
        warm, subs = await hold(run, reader, args.subscribers)
        report["server_feed_subscribers"] = await run.server_streams()
        reached: list[float] = []
        each: list[float] = []
        owed = 0
        cpu_before, client_before = cpu_seconds(run.server), client_cpu_s()
        for i in range(args.updates):
            sent = clock()
            if await run.buy(f"fanout-{i}"):
                owed += sum(s.live_at(sent) for s in subs)
                delays = await run.wait_seen(subs, sent, 30)
                each.append(ms(percentile(delays, 99)))
                reached += delays
            await trio.sleep(1.0)
        cpu_used = cpu_seconds(run.server) - cpu_before
        client_used = client_cpu_s() - client_before
        report["fanout_reached"] = f"{len(reached)}/{owed}"
        report["fanout_send_to_seen_p50_ms"] = ms(percentile(reached, 50))
        report["fanout_send_to_seen_p99_ms"] = ms(percentile(reached, 99))
        report["fanout_send_to_seen_max_ms"] = ms(max(reached, default=0.0))
        report["fanout_each_update_p99_ms"] = each
        report["server_cpu_us_per_update"] = round(cpu_used / max(len(reached), 1) * 1e6, 1)
        report["bench_cpu_us_per_update"] = round(client_used / max(len(reached), 1) * 1e6, 1)
        report["subscribers"] = tally(subs)
        run.check([*warm, *subs])
    await run.wait_released()


async def latency_phase(run: StockRun) -> None:
    """Spaced purchases, then a burst, with ``--latency-subscribers`` watching."""
    out, args = run.report, run.args
    with Reader() as reader:
        subs = await run.subscribers(reader, args.latency_subscribers)
        out["latency_subscribers"] = tally(subs)
        await trio.sleep(0.5)
        from_commit: list[float] = []
        from_send: list[float] = []
        owed = 0
        cpu_before = cpu_seconds(run.server)
        for i in range(args.purchases):
            sent = clock()
            bought = await run.buy(f"spaced-{i}")
            committed = clock()
            if bought:
                owed += sum(s.live_at(sent) for s in subs)
                delays = await run.wait_seen(subs, sent, 5)
                from_send += delays
                from_commit += [d - (committed - sent) for d in delays]
            await trio.sleep(args.spacing_s)
        cpu_used = cpu_seconds(run.server) - cpu_before
        out["spaced_server_cpu_us_per_update"] = round(cpu_used / max(len(from_send), 1) * 1e6, 1)
        out["spaced_deliveries"] = f"{len(from_send)}/{owed}"
        out["commit_to_seen_p50_ms"] = ms(percentile(from_commit, 50))
        out["commit_to_seen_p99_ms"] = ms(percentile(from_commit, 99))
        out["send_to_seen_p50_ms"] = ms(percentile(from_send, 50))
        out["send_to_seen_p99_ms"] = ms(percentile(from_send, 99))

        sent = clock()
        last_commit = sent
        async with trio.open_nursery() as burst:
            async def one(i: int) -> None:
                nonlocal last_commit
                if await run.buy(f"burst-{i}"):
                    last_commit = max(last_commit, clock())
            for i in range(args.burst):
                burst.start_soon(one, i)
        open_at_burst = sum(s.live_at(sent) for s in subs)
        final = [d - (last_commit - sent) for d in await run.wait_seen(subs, sent, 10)]
        out["burst_purchases"] = args.burst
        out["burst_burst_s"] = round(last_commit - sent, 3)
        out["burst_final_seen"] = f"{len(final)}/{open_at_burst}"
        out["burst_last_commit_to_final_p50_ms"] = ms(percentile(final, 50))
        out["burst_last_commit_to_final_p99_ms"] = ms(percentile(final, 99))
        out["burst_updates_per_subscriber_mean"] = round(statistics.mean(
            [sum(1 for t, _ in s.seen if t >= sent) for s in subs if s.connected] or [0]), 2)
        run.check(subs)


async def bench(args: argparse.Namespace, scratch: Scratch) -> int:
    """Run the server on the scratch stores, measure, stop it; return the exit code."""
    with tempfile.TemporaryDirectory(prefix="ff-sse-bench-") as logs:
        server = await trio.to_thread.run_sync(BenchServer.start, scratch, args.workers,
                                               Path(logs))
        try:
            host, port = server.url.removeprefix("http://").split(":")
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                kind = LineRun if args.line else StockRun
                run: Run = kind(client, host, int(port), server.root, args, scratch)
                run.report["workers"] = args.workers
                run.report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
                with trio.move_on_after(args.timeout_s) as bounded:
                    await run.measure()
                run.report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        finally:
            await trio.to_thread.run_sync(server.stop)
    run.report["invariants"] = held = run.invariants()
    print(json.dumps(run.report, indent=2))
    if bounded.cancelled_caught:
        print(f"the bench did not finish within --timeout-s {args.timeout_s}", file=sys.stderr)
        return 2
    failed = [name for name, ok in held.items() if not ok]
    for name in failed:
        print(f"invariant failed: {name}", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    """Parse the command line and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "FLASHFLOW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--redis-url", default=os.environ.get(
        "FLASHFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--workers", type=int, default=2, help="the server's worker processes")
    parser.add_argument("--subscribers", type=int, default=10_000)
    line = parser.add_argument_group("waiting-room mode")
    line.add_argument("--line", action="store_true",
                      help="measure the waiting room's ticket streams instead of the feed")
    line.add_argument("--admit-per-s", type=float, default=1_000.0,
                      help="the tickets the line admits a second")
    line.add_argument("--opening-in-s", type=float, default=5.0,
                      help="how long after the streams are held the line opens")
    line.add_argument("--join-concurrency", type=int, default=32,
                      help="the joins in flight at once")
    parser.add_argument("--updates", type=int, default=3,
                        help="purchases fanned out to all --subscribers")
    parser.add_argument("--connect-timeout-s", type=float, default=30.0,
                        help="how long one stream may take to connect and get its first event")
    parser.add_argument("--latency-subscribers", type=int, default=1_000)
    parser.add_argument("--purchases", type=int, default=20)
    parser.add_argument("--spacing-s", type=float, default=0.3)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()
    raise_fd_limit()
    with bench_sale(args.database_url, args.redis_url, STOCK_AT_START) as (scratch, _):
        code = trio.run(bench, args, scratch)
    sys.exit(code)


if __name__ == "__main__":
    main()
