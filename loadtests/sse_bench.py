"""Measure the live stock feed over loopback: capacity, memory and delivery delay.

It makes a fresh database and Redis key prefix, serves Flash Flow in a child process on
127.0.0.1, and from this process:

1. opens ``--subscribers`` SSE connections, reads each one's snapshot, and reports the
   server's resident memory per subscriber and the time for one purchase to reach them all;
2. keeps ``--latency-subscribers`` of them and makes ``--purchases`` purchases spaced out
   beyond the feed's pacing, reporting p50/p99 of the delay from each purchase's commit
   (its 201) to every subscriber seeing the new stock; then a burst of purchases at once,
   reporting the delay from the last commit to every subscriber seeing the final stock.

Everything is bounded by ``--timeout-s``; the child and the database are removed at the end.

    python loadtests/sse_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import redis
import trio

from flashflow.http.wire import CURRENT_EVENTS as EVENTS
from flashflow.http.wire import CURRENT_PURCHASE as PURCHASE

STOCK = re.compile(rb'"remainingStock":(\d+)')


def raise_fd_limit() -> None:
    """Allow as many sockets as the hard limit permits."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the server, in a child process ------------------------------------------------------

def serve(database_url: str, redis_url: str, key_prefix: str) -> None:
    """Child: serve Flash Flow on 127.0.0.1 and print the bound URL; stop on SIGTERM."""
    from flashflow.server import serve_until_signalled
    from flashflow.settings import Settings

    raise_fd_limit()
    settings = Settings(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix,
                        host="127.0.0.1", port=0, graceful_timeout_s=1.0)

    trio.run(functools.partial(serve_until_signalled, settings,
                               on_ready=lambda binds: print(binds[0], flush=True)))


# -- set-up ------------------------------------------------------------------------------

def with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name``."""
    base = url.split("?", 1)[0].rsplit("/", 1)[0]
    return f"{base}/{name}"


async def prepare_database(admin_url: str, name: str, stock: int) -> str:
    """Create and migrate a database holding one sale running now; return its URL."""
    from actors import ledger_sql
    from flashflow.migrate import apply_migrations

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        start = datetime.now(UTC) - timedelta(minutes=1)
        await ledger_sql.insert_sale(conn, "Bench Widget", stock, start, start + timedelta(hours=1))
    finally:
        await conn.close()
    return url


async def drop_database(admin_url: str, name: str) -> None:
    """Drop the bench database."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """A process's resident memory in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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
            await stream.send_all(f"GET {EVENTS} HTTP/1.1\r\nHost: {host}\r\n"
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
    """The ``p``-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# -- the measurements --------------------------------------------------------------------

async def measure(base_url: str, server_pid: int, args: argparse.Namespace,
                  stock: int) -> dict[str, object]:
    """Run both phases against the server at ``base_url``."""
    host, port = base_url.removeprefix("http://").split(":")
    report: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            warm = await open_subscribers(nursery, host, int(port), 1)
            await trio.sleep(0.5)
            base_kib = rss_kib(server_pid)
            started = trio.current_time()
            subs = await open_subscribers(nursery, host, int(port), args.subscribers)
            opened_s = trio.current_time() - started
            await trio.sleep(3.0)
            full_kib = rss_kib(server_pid)
            report["subscribers_held"] = len(subs) + len(warm)
            report["connect_all_s"] = round(opened_s, 2)
            report["server_rss_mib"] = round(full_kib / 1024, 1)
            report["kib_per_subscriber"] = round((full_kib - base_kib) / len(subs), 1)
            reached: list[float] = []
            cpu_before = cpu_s(server_pid)
            for i in range(3):
                stock -= 1
                sent = trio.current_time()
                await client.post(PURCHASE, json={"userId": f"fanout-{i}"})
                with trio.move_on_after(30):
                    for sub in subs:
                        while sub.first_at_most(stock, sent) is None:
                            await trio.sleep(0.01)
                reached += [t - sent for s in subs
                            if (t := s.first_at_most(stock, sent)) is not None]
                await trio.sleep(1.0)
            cpu_used = cpu_s(server_pid) - cpu_before
            report["fanout_reached"] = f"{len(reached)}/{3 * len(subs)}"
            report["fanout_send_to_seen_p50_ms"] = round(percentile(reached, 50) * 1000, 1)
            report["fanout_send_to_seen_p99_ms"] = round(percentile(reached, 99) * 1000, 1)
            report["fanout_send_to_seen_max_ms"] = round(max(reached) * 1000, 1)
            report["server_cpu_us_per_update"] = round(cpu_used / len(reached) * 1e6, 1)
            nursery.cancel_scope.cancel()
        await trio.sleep(2.0)
        report.update(await latency_phase(client, host, int(port), args, stock, server_pid))
    return report


async def latency_phase(client: httpx.AsyncClient, host: str, port: int,
                        args: argparse.Namespace, stock: int,
                        server_pid: int) -> dict[str, object]:
    """Spaced purchases, then a burst, with ``--latency-subscribers`` watching."""
    out: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        subs = await open_subscribers(nursery, host, port, args.latency_subscribers)
        await trio.sleep(0.5)
        from_commit: list[float] = []
        from_send: list[float] = []
        cpu_before = cpu_s(server_pid)
        for i in range(args.purchases):
            sent = trio.current_time()
            response = await client.post(PURCHASE, json={"userId": f"spaced-{i}"})
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
        cpu_used = cpu_s(server_pid) - cpu_before
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
                await client.post(PURCHASE, json={"userId": f"burst-{i}"})
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


async def bench(args: argparse.Namespace) -> None:
    """Set up, run the child server, measure, and clean up."""
    name = f"ffbench_{uuid.uuid4().hex[:10]}"
    key_prefix = f"ffbench:{uuid.uuid4().hex[:10]}:"
    stock = 1_000_000
    db_url = await trio.to_thread.run_sync(
        lambda: asyncio.run(prepare_database(args.database_url, name, stock)))
    child = await trio.lowlevel.open_process(
        [sys.executable, __file__, "serve", db_url, args.redis_url, key_prefix],
        stdout=subprocess.PIPE)
    try:
        with trio.fail_after(args.timeout_s):
            first_line = b""
            while not first_line.endswith(b"\n"):
                chunk = await child.stdout.receive_some(1)
                if not chunk:
                    raise RuntimeError("the server did not start")
                first_line += chunk
            report = await measure(first_line.decode().strip(), child.pid, args, stock)
        print(json.dumps(report, indent=2))
    finally:
        child.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(15) as waiting:
            await child.wait()
        if waiting.cancelled_caught:
            child.kill()
        await trio.to_thread.run_sync(lambda: asyncio.run(drop_database(args.database_url, name)))
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{key_prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def main() -> None:
    """Parse the command line and run the bench (or, as ``serve``, the child server)."""
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(*sys.argv[2:])
        return
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
    trio.run(bench, args)


if __name__ == "__main__":
    main()
