"""What the live-stream benches share: a run against a server in a child process, its
report, how its streams are opened and held, and how the server's memory and CPU are read.

:mod:`loadtests.sse_bench` runs the sale's stock feed and the waiting room's ticket streams
(:mod:`loadtests.sse_line`) through one :class:`Run` each, and holds their streams through
:func:`hold`: one first stream, then the many, so that the server's memory per stream is the
growth the many brought.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Callable
from contextlib import suppress

import httpx
import psutil
import trio

from flashflow.capacity.harness import Scratch

from . import summary
from .bench.server import tree
from .sse_streams import Reader, Subscriber, clock, open_subscribers, tally

#: How long the streams settle before the server's memory is read with them held.
SETTLE_S = 3.0


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


def client_cpu_s() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank."""
    return summary.percentile(sorted(values), p / 100)


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to 0.1."""
    return round(seconds * 1000, 1)


class Run:
    """One run of a bench: where the server is, the report, and the bench's own checks.

    A bench's run says what it measures (:meth:`measure`) and which of its own invariants
    held (:meth:`invariants`); :func:`loadtests.sse_bench.bench` starts the server, calls
    the one, then the other, and stops the server.
    """

    def __init__(self, client: httpx.AsyncClient, host: str, port: int, server: psutil.Process,
                 args: argparse.Namespace, scratch: Scratch | None = None) -> None:
        self.client, self.host, self.port, self.server, self.args = (
            client, host, port, server, args)
        self.scratch = scratch
        self.report: dict[str, object] = {}

    async def measure(self) -> None:
        """Everything the bench measures, into :attr:`report`."""
        raise NotImplementedError

    def invariants(self) -> dict[str, bool]:
        """The bench's own invariants, each held or not."""
        raise NotImplementedError

    async def subscribers(self, reader: Reader, n: int,
                          make: Callable[[int], Subscriber] = lambda _: Subscriber(),
                          ) -> list[Subscriber]:
        """Open ``n`` subscribers (``make(i)`` each) read by ``reader``, connected or not."""
        return await open_subscribers(reader, self.host, self.port, n,
                                      self.args.connect_timeout_s, make=make)


async def hold(run: Run, reader: Reader, n: int,
               make: Callable[[int], Subscriber] = lambda _: Subscriber(),
               ) -> tuple[list[Subscriber], list[Subscriber]]:
    """Open one stream (``make(0)``), then ``n`` more (``make(1)`` to ``make(n)``); report
    how the ``n`` connected, the time to connect them all, and the server's resident memory
    and its growth per stream connected. Returns the first one and the ``n``."""
    report = run.report
    first = await run.subscribers(reader, 1, make)
    await trio.sleep(0.5)
    base_kib = rss_kib(run.server)
    started = clock()
    subs = await run.subscribers(reader, n, lambda i: make(i + 1))
    opened_s = clock() - started
    await trio.sleep(SETTLE_S)
    full_kib = rss_kib(run.server)
    connected = max(sum(s.connected for s in subs), 1)
    report["subscribers"] = tally(subs)  # again at the end, with the streams dropped since
    report["connect_all_s"] = round(opened_s, 2)
    report["server_rss_mib"] = round(full_kib / 1024, 1)
    report["kib_per_subscriber"] = round((full_kib - base_kib) / connected, 1)
    return first, subs
