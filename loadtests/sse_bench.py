"""Measure the live stock feed over loopback: capacity, memory and delivery delay.

It makes a scratch database and Redis key prefix holding one sale (the load harness's,
:mod:`flashflow.capacity.harness`) and serves Flash Flow in a child process on 127.0.0.1, as the
benchmark does (:mod:`loadtests.bench.server`); then, from this process:

1. opens ``--subscribers`` SSE connections, reads each one's snapshot, and reports the
   server's resident memory per subscriber and the time for one purchase to reach them all;
2. keeps ``--latency-subscribers`` of them and makes ``--purchases`` purchases spaced out
   beyond the feed's pacing, reporting p50/p99 of the delay from each purchase's commit
   (its 201) to every subscriber seeing the new stock; then a burst of purchases at once,
   reporting the delay from the last commit to every subscriber seeing the final stock.

Everything is bounded by ``--timeout-s``; the child and the database are removed at the end.

    python -m loadtests.sse_bench --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import trio

from flashflow.capacity.harness import Scratch
from flashflow.http.wire import CURRENT_EVENTS, CURRENT_PURCHASE

from . import summary
from .bench.server import BenchServer, bench_sale, cpu_seconds, tree

STOCK = re.compile(rb'"remainingStock":(\d+)')
#: The sale's stock: far more than the bench buys, so it never sells out under it.
STOCK_AT_START = 1_000_000


def raise_fd_limit() -> None:
    """Allow as many sockets as the hard limit permits."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(root: psutil.Process) -> int:
    """The server's resident memory (every process of it) in KiB."""
    total = 0
    for process in tree(root):
        with suppress(psutil.Error):
            total += process.memory_info().rss
    return total // 1024


# -- subscribers -------------------------------------------------------------------------

@dataclass
class Subscriber:
    """One raw SSE connection: every stock figure it saw, with the time it arrived."""

    seen: list[tuple[float, int]] = field(default_factory=list)
    ready: trio.Event = field(default_factory=trio.Event)

    def first_at_most(self, stock: int, since: float) -> float | None:
        """When this subscriber first saw a stock of ``stock`` or less after ``since``."""
        return next((t for t, v in self.seen if v <= stock and t >= since), None)


async def subscribe(host: str, port: int, sub: Subscriber, limiter: trio.CapacityLimiter,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Hold one SSE connection open, recording stock figures, until cancelled."""
    async with limiter:
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        async with limiter:
            await stream.send_all(f"GET {CURRENT_EVENTS} HTTP/1.1\r\nHost: {host}\r\n"
                                  "Accept: text/event-stream\r\n\r\n".encode())
            tail = b""
            while not sub.ready.is_set():
                tail = record(sub, tail, await stream.receive_some(65536))
        task_status.started()
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            tail = record(sub, tail, chunk)


def record(sub: Subscriber, tail: bytes, chunk: bytes) -> bytes:
    """Note every stock figure in ``chunk``; return the bytes to carry to the next one."""
    now = trio.current_time()
    data = tail + chunk
    end = 0
    for match in STOCK.finditer(data):
        sub.seen.append((now, int(match.group(1))))
        end = match.end()
        sub.ready.set()
    return data[max(end, len(data) - 64):]


async def open_subscribers(nursery: trio.Nursery, host: str, port: int, n: int) -> list[Subscriber]:
    """Open ``n`` subscribers, at most 200 connecting at once; return once all are live."""
    limiter = trio.CapacityLimiter(200)
    subs = [Subscriber() for _ in range(n)]
    async with trio.open_nursery() as starting:
        for sub in subs:
            starting.start_soon(nursery.start, subscribe, host, port, sub, limiter)
    return subs


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank."""
    return summary.percentile(sorted(values), p / 100)


# -- the measurements --------------------------------------------------------------------

async def measure(base_url: str, server: psutil.Process, args: argparse.Namespace,
                  stock: int) -> dict[str, object]:
    """Run both phases against the server at ``base_url``."""
    host, port = base_url.removeprefix("http://").split(":")
    report: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            warm = await open_subscribers(nursery, host, int(port), 1)
            await trio.sleep(0.5)
            base_kib = rss_kib(server)
            started = trio.current_time()
            subs = await open_subscribers(nursery, host, int(port), args.subscribers)
            opened_s = trio.current_time() - started
            await trio.sleep(3.0)
            full_kib = rss_kib(server)
            report["subscribers_held"] = len(subs) + len(warm)
            report["connect_all_s"] = round(opened_s, 2)
            report["server_rss_mib"] = round(full_kib / 1024, 1)
            report["kib_per_subscriber"] = round((full_kib - base_kib) / len(subs), 1)
            reached: list[float] = []
            cpu_before = cpu_seconds(server)
            for i in range(3):
                stock -= 1
                sent = trio.current_time()
                await client.post(CURRENT_PURCHASE, json={"userId": f"fanout-{i}"})
                with trio.move_on_after(30):
                    for sub in subs:
                        while sub.first_at_most(stock, sent) is None:
                            await trio.sleep(0.01)
                reached += [t - sent for s in subs
                            if (t := s.first_at_most(stock, sent)) is not None]
                await trio.sleep(1.0)
            cpu_used = cpu_seconds(server) - cpu_before
            report["fanout_reached"] = f"{len(reached)}/{3 * len(subs)}"
            report["fanout_send_to_seen_p50_ms"] = round(percentile(reached, 50) * 1000, 1)
            report["fanout_send_to_seen_p99_ms"] = round(percentile(reached, 99) * 1000, 1)
            report["fanout_send_to_seen_max_ms"] = round(max(reached) * 1000, 1)
            report["server_cpu_us_per_update"] = round(cpu_used / len(reached) * 1e6, 1)
            nursery.cancel_scope.cancel()
        await trio.sleep(2.0)
        report.update(await latency_phase(client, host, int(port), args, stock, server))
    return report


async def latency_phase(client: httpx.AsyncClient, host: str, port: int,
                        args: argparse.Namespace, stock: int,
                        server: psutil.Process) -> dict[str, object]:
    """Spaced purchases, then a burst, with ``--latency-subscribers`` watching."""
    out: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        subs = await open_subscribers(nursery, host, port, args.latency_subscribers)
        await trio.sleep(0.5)
        from_commit: list[float] = []
        from_send: list[float] = []
        cpu_before = cpu_seconds(server)
        for i in range(args.purchases):
            sent = trio.current_time()
            response = await client.post(CURRENT_PURCHASE, json={"userId": f"spaced-{i}"})
            committed = trio.current_time()
            assert response.status_code == 201, response.text
            stock -= 1
            with trio.move_on_after(5):
                for sub in subs:
                    while sub.first_at_most(stock, sent) is None:
                        await trio.sleep(0.005)
            await trio.sleep(args.spacing_s)
            for sub in subs:
                t = sub.first_at_most(stock, sent)
                if t is not None:
                    from_commit.append(t - committed)
                    from_send.append(t - sent)
        expected = args.purchases * len(subs)
        cpu_used = cpu_seconds(server) - cpu_before
        out["spaced_server_cpu_us_per_update"] = round(cpu_used / max(len(from_send), 1) * 1e6, 1)
        out["spaced_deliveries"] = f"{len(from_commit)}/{expected}"
        out["commit_to_seen_p50_ms"] = round(percentile(from_commit, 50) * 1000, 1)
        out["commit_to_seen_p99_ms"] = round(percentile(from_commit, 99) * 1000, 1)
        out["send_to_seen_p50_ms"] = round(percentile(from_send, 50) * 1000, 1)
        out["send_to_seen_p99_ms"] = round(percentile(from_send, 99) * 1000, 1)

        sent = trio.current_time()
        last_commit = sent
        async with trio.open_nursery() as burst:
            async def one(i: int) -> None:
                nonlocal last_commit
                await client.post(CURRENT_PURCHASE, json={"userId": f"burst-{i}"})
                last_commit = max(last_commit, trio.current_time())
            for i in range(args.burst):
                burst.start_soon(one, i)
        stock -= args.burst
        with trio.move_on_after(10):
            for sub in subs:
                while sub.first_at_most(stock, sent) is None:
                    await trio.sleep(0.01)
        final = [t - last_commit for s in subs if (t := s.first_at_most(stock, sent)) is not None]
        out["burst_purchases"] = args.burst
        out["burst_burst_s"] = round(last_commit - sent, 3)
        out["burst_final_seen"] = f"{len(final)}/{len(subs)}"
        out["burst_last_commit_to_final_p50_ms"] = round(percentile(final, 50) * 1000, 1)
        out["burst_last_commit_to_final_p99_ms"] = round(percentile(final, 99) * 1000, 1)
        out["burst_updates_per_subscriber_mean"] = round(statistics.mean(
            sum(1 for t, _ in s.seen if t >= sent) for s in subs), 2)
        nursery.cancel_scope.cancel()
    return out


async def bench(args: argparse.Namespace, scratch: Scratch) -> None:
    """Run the server on the scratch stores, measure, and stop it."""
    with tempfile.TemporaryDirectory(prefix="ff-sse-bench-") as logs:
        server = await trio.to_thread.run_sync(BenchServer.start, scratch, 1, Path(logs))
        try:
            with trio.fail_after(args.timeout_s):
                report = await measure(server.url, server.root, args, STOCK_AT_START)
            print(json.dumps(report, indent=2))
        finally:
            await trio.to_thread.run_sync(server.stop)


def main() -> None:
    """Parse the command line and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "FLASHFLOW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--redis-url", default=os.environ.get(
        "FLASHFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--latency-subscribers", type=int, default=1_000)
    parser.add_argument("--purchases", type=int, default=20)
    parser.add_argument("--spacing-s", type=float, default=0.3)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()
    raise_fd_limit()
    with bench_sale(args.database_url, args.redis_url, STOCK_AT_START) as (scratch, _):
        trio.run(bench, args, scratch)


if __name__ == "__main__":
    main()
