"""The live-feed bench's subscribers: raw SSE connections over loopback, each recording the
figures it sees (:class:`Figures`: the stock of the sale's feed, or a waiting-room ticket's
events), and what became of the ones the server did not hold.

:func:`subscribe` connects, asks for the stream and reads its first figure in trio, at most
:data:`CONNECT_CONCURRENCY` at once; from then on a :class:`Reader` thread reads every held
stream with one epoll set, so that reading 10,000 streams costs the bench a few microseconds
per event rather than a trio task's wake-up each, and the bench's own CPU time does not
inflate the delays it measures on a machine it shares with the server.

A connection that fails is a figure, never an error: it is noted on its :class:`Subscriber`
(:data:`KINDS`: refused, reset, timed out, cut, or an HTTP status other than 200), whether
before its snapshot arrived (``lost``) or after (``dropped``), and :func:`tally` adds them up.
Times are :func:`clock` readings (``time.perf_counter``), the same in both threads.
"""

from __future__ import annotations

import errno
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from flashflow.http.wire import CURRENT_EVENTS

STOCK = re.compile(rb'"remainingStock":(\d+)')
#: A waiting-room ticket's events, each with its data line.
LINE_EVENT = re.compile(rb"event: (ticket|line|admitted|closed)\ndata: ([^\n]*)\n")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
#: How a connection the server did not hold ended; anything else is named by its errno.
REFUSED, RESET, TIMED_OUT, CUT = "refused", "reset", "timed_out", "cut"
KINDS = (REFUSED, RESET, TIMED_OUT, CUT)
_BY_ERRNO = {errno.ECONNREFUSED: REFUSED, errno.ECONNRESET: RESET, errno.EPIPE: RESET,
             errno.ECONNABORTED: RESET, errno.ETIMEDOUT: TIMED_OUT}
#: The last chunk of a chunked response: the server ended the stream but kept the connection
#: (SSE data never holds a CR, so this never occurs inside an event).
END_OF_RESPONSE = b"\r\n0\r\n\r\n"
#: How many connections are being opened (connect, request, snapshot) at once: each holds
#: its place until its snapshot arrived, so the server's accept queue never holds more.
CONNECT_CONCURRENCY = 200
#: The clock of every time the bench records.
clock = time.perf_counter


@dataclass(frozen=True, slots=True)
class Figures:
    """What a stream's reader keeps of it: each match of ``pattern``, as ``value`` of the
    match, and at most ``carry`` bytes after the last one (a figure cut in two by a read)."""

    pattern: re.Pattern[bytes]
    value: Callable[[re.Match[bytes]], Any]
    carry: int


#: The sale's feed: every stock figure, as an int.
STOCK_FIGURES = Figures(STOCK, lambda match: int(match.group(1)), 64)
#: A ticket's stream: every event, as (its name, its data line's JSON bytes).
LINE_FIGURES = Figures(LINE_EVENT, lambda match: (match.group(1).decode(), match.group(2)),
                       16384)


class StreamEnded(Exception):
    """The server ended a stream: closed it (``cut``) or answered other than 200."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def kind_of(exc: BaseException) -> str | None:
    """How a connection error ended a stream (one of :data:`KINDS`, or the errno's name);
    None if ``exc`` is no connection error, which is then the bench's own bug to raise.

    trio reports a failed connect as an ``OSError`` caused by a group of the attempts'
    errors, and a failed send or receive as ``BrokenResourceError`` caused by the socket's.
    """
    if isinstance(exc, StreamEnded):
        return exc.kind
    if isinstance(exc, trio.TooSlowError):
        return TIMED_OUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return _BY_ERRNO.get(exc.errno, errno.errorcode.get(exc.errno, f"errno_{exc.errno}"))
    if isinstance(exc, BaseExceptionGroup):
        kinds = [kind_of(inner) for inner in exc.exceptions]
        return next((k for k in kinds if k is not None), None)
    if exc.__cause__ is not None:
        return kind_of(exc.__cause__)
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        return CUT
    return None


@dataclass
class Subscriber:
    """One raw SSE connection to ``path``: every figure it saw, with the time it arrived,
    and how it ended if the server did not hold it."""

    path: str = CURRENT_EVENTS
    figures: Figures = STOCK_FIGURES
    seen: list[tuple[float, Any]] = field(default_factory=list)
    #: Whether its first figure (the feed's snapshot, a ticket's first event) arrived.
    connected: bool = False
    #: Set when it never got its first figure: how it failed.
    lost: str | None = None
    #: Set when it ended after its first figure, before the bench closed it: how, and when.
    dropped: str | None = None
    dropped_at: float = float("inf")

    def live_at(self, t: float) -> bool:
        """Whether it was connected and still open at time ``t``."""
        return self.connected and self.dropped_at > t

    def first_at_most(self, stock: int, since: float) -> float | None:
        """When this subscriber first saw a stock of ``stock`` or less after ``since``."""
        return next((t for t, v in self.seen if v <= stock and t >= since), None)

    def stock_rose(self) -> bool:
        """Whether a figure it saw was above an earlier one."""
        return any(b > a for (_, a), (_, b) in zip(self.seen, self.seen[1:], strict=False))


def record(sub: Subscriber, tail: bytes, chunk: bytes) -> bytes:
    """Note every figure in ``chunk``; return the bytes to carry to the next one."""
    now = clock()
    data = tail + chunk
    end = 0
    figures = sub.figures
    for match in figures.pattern.finditer(data):
        sub.seen.append((now, figures.value(match)))
        end = match.end()
    return data[max(end, len(data) - figures.carry):]


class Reader:
    """A thread that reads every stream handed to it, until :meth:`close`.

    The sockets are level-triggered in one epoll set; each ready one is read once per pass.
    A stream the server ends, by closing its connection or by ending its response
    (:data:`END_OF_RESPONSE`, the connection kept alive), is noted as dropped (its kind and
    time) and closed.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._held: dict[int, tuple[Subscriber, socket.socket, list[bytes]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)
        self._thread.start()

    def hold(self, sub: Subscriber, stream: trio.SocketStream, tail: bytes) -> None:
        """Take over ``stream``'s socket and read it from now on."""
        sock = socket.socket(fileno=stream.socket.detach())
        fd = sock.fileno()
        self._held[fd] = (sub, sock, [tail])
        self._epoll.register(fd, select.EPOLLIN)

    def _run(self) -> None:
        while not self._stop.is_set():
            for fd, _ in self._epoll.poll(0.05):
                if (entry := self._held.get(fd)) is None:
                    continue
                sub, sock, tail = entry
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._drop(fd, kind_of(exc) or CUT)
                    continue
                if not chunk:
                    self._drop(fd, CUT)
                    continue
                ended = END_OF_RESPONSE in tail[0][-len(END_OF_RESPONSE):] + chunk
                tail[0] = record(sub, tail[0], chunk)
                if ended:
                    self._drop(fd, CUT)

    def _drop(self, fd: int, kind: str) -> None:
        sub, sock, _ = self._held.pop(fd)
        sub.dropped, sub.dropped_at = kind, clock()
        self._epoll.unregister(fd)
        sock.close()

    def close(self) -> None:
        """Stop reading and close every stream still held."""
        self._stop.set()
        self._thread.join()
        for _, sock, _ in self._held.values():
            sock.close()
        self._held.clear()
        self._epoll.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def subscribe(host: str, port: int, sub: Subscriber, limiter: trio.CapacityLimiter,
                    reader: Reader, connect_timeout_s: float) -> None:
    """Open one SSE connection and read its first figure, then hand it to ``reader``; a
    connection that fails is noted on ``sub`` instead."""
    try:
        async with limiter:
            with trio.fail_after(connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
                try:
                    tail = await request(stream, host, sub)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, StreamEnded) as exc:
        sub.lost = kind_of(exc) or CUT
        return
    reader.hold(sub, stream, tail)


async def request(stream: trio.SocketStream, host: str, sub: Subscriber) -> bytes:
    """Ask for the stream and read until its first figure; return the bytes to carry on with.

    Raises:
        StreamEnded: the server closed the connection first, or answered other than 200.
    """
    await stream.send_all(f"GET {sub.path} HTTP/1.1\r\nHost: {host}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
    head = b""
    while (status := STATUS_LINE.match(head)) is None:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise StreamEnded(CUT)
        head += chunk
        if len(head) >= 16 and STATUS_LINE.match(head) is None:
            raise StreamEnded("not_http")
    if status.group(1) != b"200":
        raise StreamEnded(f"http_{status.group(1).decode()}")
    tail = record(sub, b"", head)
    while not sub.seen:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise StreamEnded(CUT)
        tail = record(sub, tail, chunk)
    sub.connected = True
    return tail


async def open_subscribers(reader: Reader, host: str, port: int, n: int,
                           connect_timeout_s: float = 30.0, *,
                           make: Callable[[int], Subscriber] = lambda _: Subscriber(),
                           ) -> list[Subscriber]:
    """Open ``n`` subscribers (the ``i``-th ``make(i)``: by default to the current sale's
    feed), :data:`CONNECT_CONCURRENCY` at once, each then read by ``reader``; return once
    every one is connected or has failed."""
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    subs = [make(i) for i in range(n)]
    async with trio.open_nursery() as starting:
        for sub in subs:
            starting.start_soon(subscribe, host, port, sub, limiter, reader, connect_timeout_s)
    return subs


def tally(subs: list[Subscriber],
          finished: Callable[[Subscriber], bool] = lambda _: False) -> dict[str, object]:
    """How many connected, and how the others ended, by kind (every kind of
    :data:`KINDS` named, 0 or not); a stream the server ended once it was ``finished`` (a
    ticket's stream after its last event) was not dropped."""
    lost = Counter(dict.fromkeys(KINDS, 0))
    lost.update(s.lost for s in subs if s.lost is not None)
    dropped = Counter(dict.fromkeys(KINDS, 0))
    dropped.update(s.dropped for s in subs if s.dropped is not None and not finished(s))
    return {"asked": len(subs), "connected": sum(s.connected for s in subs),
            "not_connected": dict(lost), "dropped_after_connect": dict(dropped)}
