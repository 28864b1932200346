"""The waiting room's streams under load: many tickets waiting, then admitted at the rate.

The run (``python -m loadtests.sse_bench --line``) adds a sale with a waiting room to the
bench's scratch database, its opening an hour ahead; takes ``--subscribers`` + 1 tickets
through ``POST .../queue`` (``--join-concurrency`` at once); holds one ticket stream
``GET .../queue/{ticket}/events`` per ticket as the stock feed's bench holds its streams
(:func:`loadtests.sse_run.hold`: connect time, the server's memory per stream, refused,
reset, timed-out and cut streams counted by kind); then moves the sale's start to
``--opening-in-s`` ahead, as an admin's change of an upcoming sale would, and waits for
every stream's last event while the line admits ``--admit-per-s`` tickets a second.

For each stream the delay of its ``admitted`` event is measured twice: from its
``admittedAt`` (PostgreSQL's clock, on this host, against this process's wall clock), and
from the moment any stream of the bench first saw the line's ``admittedUpTo`` reach its
position (this process's clock alone). Its own invariants: every join took a ticket, every
stream still open got its last event, and the line admitted in the order of its positions.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from bisect import bisect_left
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import pairwise

import httpx
import psutil
import trio

from flashflow.capacity.harness import Sale, Scratch, WaitingRoom, create_sale, move_start
from flashflow.http.wire import queue_path, ticket_path

from .bench.server import cpu_seconds
from .sse_run import Run, hold, ms, percentile
from .sse_streams import LINE_FIGURES, Reader, Subscriber, clock, tally

#: The invariants of a line run, in the order the report lists them.
JOINED, FINAL, IN_ORDER = ("every_join_took_a_ticket", "every_open_stream_got_its_last_event",
                           "admitted_in_line_order")
#: The line's last events: a stream ends after either.
LAST = ("admitted", "closed")
ADMITTED_UP_TO = re.compile(rb'"admittedUpTo":(\d+)')
#: How long a ticket may buy once admitted: longer than any run.
WINDOW_S = 3600


def moment(text: str) -> float:
    """A wire timestamp (ISO 8601, ``Z``) as seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp()


def last_event(sub: Subscriber) -> tuple[float, str, dict] | None:
    """When ``sub`` got its last event, which, and its body; None if it got none."""
    for t, (name, data) in sub.seen:
        if name in LAST:
            return t, name, json.loads(data)
    return None


def first_seen(subs: list[Subscriber]) -> tuple[list[float], list[int]]:
    """When any of ``subs`` first saw the line's ``admittedUpTo`` at each value it reached:
    times and values, both ascending (find a position's with :func:`passed_at`)."""
    seen = sorted((t, int(m.group(1))) for sub in subs for t, (_, data) in sub.seen
                  if (m := ADMITTED_UP_TO.search(data)) is not None)
    times: list[float] = []
    values: list[int] = []
    for t, value in seen:
        if not values or value > values[-1]:
            times.append(t)
            values.append(value)
    return times, values


def passed_at(times: list[float], values: list[int], position: int) -> float:
    """When the bench first saw ``admittedUpTo`` reach ``position`` (see :func:`first_seen`)."""
    return times[bisect_left(values, position)]


class LineRun(Run):
    """A run of the waiting room: the joins, the ticket streams and their last events."""

    def __init__(self, client: httpx.AsyncClient, host: str, port: int, server: psutil.Process,
                 args: argparse.Namespace, scratch: Scratch | None = None) -> None:
        super().__init__(client, host, port, server, args, scratch)
        self.joins: Counter[str] = Counter()
        self.without_last = 0
        self.out_of_order = 0

    def invariants(self) -> dict[str, bool]:
        return {JOINED: set(self.joins) <= {"201"}, FINAL: self.without_last == 0,
                IN_ORDER: self.out_of_order == 0}

    async def measure(self) -> None:
        args, report = self.args, self.report
        sale = await self.line_sale()
        report["admit_per_s"] = args.admit_per_s
        report["opening_in_s"] = args.opening_in_s
        tickets = await self.join(sale, args.subscribers + 1)
        with Reader() as reader:
            first, subs = await hold(self, reader, len(tickets) - 1, lambda i: Subscriber(
                path=ticket_path(sale.id, tickets[i]) + "/events", figures=LINE_FIGURES))
            streams = [*first, *subs]
            cpu_before = cpu_seconds(self.server)
            await self.open_at(sale, args.opening_in_s)
            await self.wait_last(streams, args.opening_in_s + len(streams) / args.admit_per_s
                                 + args.connect_timeout_s)
            cpu_used = cpu_seconds(self.server) - cpu_before
        self.judge(streams, subs, cpu_used)

    async def line_sale(self) -> Sale:
        """The sale with the waiting room, its line open and its opening an hour ahead;
        returns once the server knows it."""
        assert self.scratch is not None
        room = WaitingRoom(opens_before_s=2 * 3600, admit_per_s=self.args.admit_per_s,
                           window_s=WINDOW_S)
        sale = await trio.to_thread.run_sync(partial(
            create_sale, self.scratch.database_url, "Bench Line", self.args.subscribers + 1,
            2 * 3600, starts_in_s=3600, waiting_room=room))
        with trio.fail_after(30):
            while (await self.client.get(queue_path(sale.id))).status_code != 200:
                await trio.sleep(0.2)
        return sale

    async def join(self, sale: Sale, n: int) -> list[str]:
        """Take ``n`` tickets through ``POST .../queue``; return the ids of those taken."""
        tickets: list[str] = []
        limiter = trio.CapacityLimiter(self.args.join_concurrency)

        async def one(i: int) -> None:
            async with limiter:
                try:
                    response = await self.client.post(queue_path(sale.id),
                                                      json={"userId": f"line-{i}"})
                    outcome = str(response.status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
            self.joins[outcome] += 1
            if outcome == "201":
                tickets.append(response.json()["data"]["ticket"])

        started = clock()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        took = clock() - started
        self.report["joins"] = dict(self.joins)
        self.report["join_all_s"] = round(took, 2)
        self.report["joins_per_s"] = round(n / took, 1)
        return tickets

    async def open_at(self, sale: Sale, in_s: float) -> None:
        """Move the sale's start (and so its line's opening) to ``in_s`` from now."""
        assert self.scratch is not None
        start = datetime.now(UTC) + timedelta(seconds=in_s)
        await trio.to_thread.run_sync(move_start, self.scratch.database_url, sale.id, start)

    async def wait_last(self, streams: list[Subscriber], timeout_s: float) -> None:
        """Wait until every stream has its last event or has ended (at most ``timeout_s``)."""
        with trio.move_on_after(timeout_s):
            while any(s.live_at(clock()) and last_event_name(s) is None for s in streams):
                await trio.sleep(0.2)

    def judge(self, streams: list[Subscriber], subs: list[Subscriber], cpu_used: float) -> None:
        """Report the last events' delays and count what the invariants judge."""
        report = self.report
        wall = time.time() - clock()  # this process's clock to the wall's
        times, values = first_seen(streams)
        from_admitted: list[float] = []
        from_passed: list[float] = []
        admitted: list[tuple[int, float]] = []
        names: Counter[str] = Counter()
        for sub in streams:
            last = last_event(sub)
            if last is None:
                self.without_last += sub.connected and sub.dropped is None
                continue
            t, name, body = last
            names[name] += 1
            if name == "admitted":
                at = moment(body["admittedAt"])
                admitted.append((body["position"], at))
                from_admitted.append(t + wall - at)
                from_passed.append(t - passed_at(times, values, body["position"]))
        admitted.sort()
        self.out_of_order = sum(b[1] < a[1] for a, b in pairwise(admitted))
        self.out_of_order += len({p for p, _ in admitted}) != len(admitted)
        connected = sum(s.connected for s in streams)
        report["subscribers"] = tally(subs, lambda s: last_event_name(s) is not None)
        report["last_events"] = {"admitted": names["admitted"], "closed": names["closed"],
                                 "none": connected - sum(names.values())}
        if admitted:
            report["admitting_s"] = round(admitted[-1][1] - admitted[0][1], 2)
        for label, delays in (("admitted_at", from_admitted), ("line_passed", from_passed)):
            report[f"{label}_to_event_p50_ms"] = ms(percentile(delays, 50))
            report[f"{label}_to_event_p99_ms"] = ms(percentile(delays, 99))
            report[f"{label}_to_event_max_ms"] = ms(max(delays, default=0.0))
        report["server_cpu_us_per_stream_admitted"] = round(
            cpu_used / max(len(admitted), 1) * 1e6, 1)


def last_event_name(sub: Subscriber) -> str | None:
    """The name of ``sub``'s last event, if it got one (without parsing its body)."""
    return next((name for _, (name, _) in sub.seen if name in LAST), None)
