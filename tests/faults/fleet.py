"""``flashflow serve`` processes as the fault tests run them: their workers, their
connections, when they serve, how they stop, and what their logs say."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
import psutil
import trio

from flashflow.http.wire import READYZ

from ..helpers import ServerProcess, continue_all, stop_tree

RETURNED_LOG_LINE = "returned a reservation that never committed"
CLAIMED_LOG_LINE = r"recorded (\d+) committed purchases the gate did not hold"


def worker_pids(server: ServerProcess) -> list[int]:
    """The worker processes of a ``--workers N`` supervisor (its direct children)."""
    try:
        return [child.pid for child in psutil.Process(server.process.pid).children()]
    except psutil.NoSuchProcess:
        return []


@contextmanager
def stopped(*servers: ServerProcess) -> Iterator[None]:
    """Every process of ``servers`` (each supervisor, then its workers) SIGSTOPped for the
    block, and SIGCONTed after: nothing of theirs runs meanwhile, a reconcile pass
    included."""
    pids = [pid for server in servers for pid in stop_tree(server.process.pid)]
    try:
        yield
    finally:
        continue_all(pids)


async def wait_for_workers(server: ServerProcess, count: int, exclude: set[int],
                           timeout_s: float) -> float:
    """Wait until the supervisor runs ``count`` workers, none of them in ``exclude``; return
    the seconds it took."""
    started = trio.current_time()
    with trio.fail_after(timeout_s):
        while True:
            pids = set(worker_pids(server))
            if len(pids) == count and not pids & exclude:
                return trio.current_time() - started
            await trio.sleep(0.05)


def established(pid: int, port: int) -> int:
    """TCP connections process ``pid`` holds on its listening ``port``."""
    try:
        return sum(1 for c in psutil.Process(pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
    except psutil.NoSuchProcess:
        return 0


def stop_server_tree(server: ServerProcess) -> None:
    """Stop a server and, should any survive it, its workers, each by its own pid."""
    workers = worker_pids(server)
    server.stop()
    for pid in workers:
        with suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.kill()
            process.wait(10)


async def wait_until_serving(base_url: str, timeout_s: float = 30.0, *,
                             checks: tuple[str, ...] = ("redis", "postgres")) -> float:
    """Wait until /readyz says Redis and PostgreSQL answer; return the seconds it took.

    Args:
        checks: the /readyz checks that must hold; add "gate" to wait until the current
            sale's gate is read through the Redis node that serves it.

    Raises:
        AssertionError: not ready within ``timeout_s``; names the last answer (or error).
    """
    started = trio.current_time()
    last: object = None
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    response = await client.get(READYZ)
                    last = response.status_code, response.text
                    held = response.json()["data"]["checks"]
                    if all(held[name] for name in checks):
                        return trio.current_time() - started
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    last = exc
                await trio.sleep(0.05)
    raise AssertionError(f"{base_url} not ready after {timeout_s} s; last /readyz: {last!r}")


def reconciler_returns(*servers: ServerProcess) -> int:
    """Reservations the reconcilers of these servers logged as put back on sale."""
    return sum(s.log_path.read_text(errors="replace").count(RETURNED_LOG_LINE) for s in servers)


def reconciler_claims(*servers: ServerProcess) -> int:
    """Committed purchases the reconcilers of these servers logged as claimed back."""
    return sum(int(m) for s in servers
               for m in re.findall(CLAIMED_LOG_LINE, s.log_path.read_text(errors="replace")))


def lines_in_logs(text: str, *servers: ServerProcess) -> int:
    """How many log lines of these servers contain ``text``."""
    return sum(line.count(text) > 0 for s in servers
               for line in s.log_path.read_text(errors="replace").splitlines())
