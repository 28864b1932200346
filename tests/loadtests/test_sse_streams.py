"""The live-feed bench's subscribers against small loopback servers that misbehave on
purpose: a connection the server refuses, resets or cuts is counted by kind, never raised."""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

from loadtests.sse_streams import (
    CUT,
    LINE_FIGURES,
    REFUSED,
    RESET,
    TIMED_OUT,
    Reader,
    StreamEnded,
    Subscriber,
    kind_of,
    open_subscribers,
    record,
    tally,
)

SNAPSHOT = (b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            b'event: snapshot\ndata: {"remainingStock":7}\n\n')


def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` so the kernel answers with a RST (SO_LINGER on, zero seconds)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def serve(nursery: trio.Nursery,
                handler: Callable[[trio.SocketStream], Awaitable[None]]) -> int:
    """Serve ``handler`` on a free loopback port in ``nursery``; return the port."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def read_request(stream: trio.SocketStream) -> None:
    """Read until the end of one request's head."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)


async def subscribers_of(handler: Callable[[trio.SocketStream], Awaitable[None]], n: int,
                         settle_s: float = 0.3) -> list[Subscriber]:
    """Open ``n`` subscribers against ``handler`` and read them for ``settle_s``."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, handler)
            with Reader() as reader:
                subs = await open_subscribers(reader, "127.0.0.1", port, n, connect_timeout_s=2)
                await trio.sleep(settle_s)
            nursery.cancel_scope.cancel()
    return subs


def test_connection_errors_are_named_by_kind():
    """Refused, reset, timed out and cut are told apart, however trio wraps them; an error
    that is no connection trouble is not a kind (the bench raises it)."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    try:
        raise OSError("all attempts to connect failed") from ExceptionGroup("", [refused])
    except OSError as wrapped:
        connect_failed = wrapped
    broken = trio.BrokenResourceError()
    broken.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert kind_of(connect_failed) == REFUSED
    assert kind_of(broken) == RESET
    assert kind_of(trio.TooSlowError()) == TIMED_OUT
    assert kind_of(StreamEnded("http_503")) == "http_503"
    assert kind_of(trio.BrokenResourceError()) == CUT
    assert kind_of(OSError(errno.EADDRNOTAVAIL, "no port")) == "EADDRNOTAVAIL"
    assert kind_of(ValueError("a bug")) is None


async def test_a_reset_before_the_snapshot_is_counted_not_raised():
    """A server that resets every connection after reading its request: each subscriber is
    lost as reset, and the tally says so beside 0 connected."""
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        reset(stream)

    subs = await subscribers_of(handler, 5)
    assert [s.lost for s in subs] == [RESET] * 5
    counted = tally(subs)
    assert counted["connected"] == 0
    assert counted["not_connected"] == {REFUSED: 0, RESET: 5, TIMED_OUT: 0, CUT: 0}


async def test_a_stream_reset_after_its_snapshot_is_counted_as_dropped():
    """A stream the server resets after its snapshot was connected, then dropped as reset,
    with the time it ended."""
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(SNAPSHOT)
        await trio.sleep(0.1)
        reset(stream)

    subs = await subscribers_of(handler, 3, settle_s=0.5)
    assert all(s.connected and s.seen[0][1] == 7 for s in subs)
    assert [s.dropped for s in subs] == [RESET] * 3
    assert all(not s.live_at(s.dropped_at) for s in subs)
    assert tally(subs)["dropped_after_connect"][RESET] == 3


async def test_a_response_ended_on_a_kept_connection_is_cut():
    """A stream whose chunked response ends after its snapshot, the connection left open,
    was connected, then dropped as cut: no more events can come on it."""
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(SNAPSHOT)
        await trio.sleep(0.1)
        await stream.send_all(b"\r\n0\r\n")
        await stream.send_all(b"\r\n")
        await trio.sleep_forever()

    subs = await subscribers_of(handler, 2, settle_s=0.5)
    assert all(s.connected for s in subs)
    assert [s.dropped for s in subs] == [CUT, CUT]


async def test_a_closed_stream_and_an_error_answer_are_cut_and_http_status():
    """A server closing before any answer cuts the stream; a 503 answer is named by it."""
    answers = iter([b"", b"HTTP/1.1 503 \r\ncontent-length: 0\r\n\r\n"])

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        answer = next(answers)
        if answer:
            await stream.send_all(answer)
        await stream.aclose()

    subs = await subscribers_of(handler, 2)
    assert sorted(s.lost for s in subs) == sorted([CUT, "http_503"])


async def test_a_port_nobody_listens_on_is_refused():
    """Connecting where nothing listens is counted as refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(10), Reader() as reader:
        subs = await open_subscribers(reader, "127.0.0.1", port, 2, connect_timeout_s=2)
    assert [s.lost for s in subs] == [REFUSED, REFUSED]


@pytest.mark.parametrize("seen, rose", [([9, 8, 8, 5], False), ([9, 8, 9], True)])
def test_a_rise_in_stock_is_noticed(seen, rose):
    """A subscriber notices a figure above an earlier one."""
    sub = Subscriber(seen=[(float(i), v) for i, v in enumerate(seen)])
    assert sub.stock_rose() is rose


def test_a_ticket_event_cut_by_a_read_is_kept_whole():
    """A ticket stream's event whose data line is split over reads is recorded once, whole,
    with its name; a heartbeat between events is not an event."""
    events = (b'id: 1\nevent: ticket\ndata: {"admittedUpTo":0}\n\n: heartbeat\n\n'
              b'id: 2\nevent: admitted\ndata: {"admittedUpTo":3,"admissionToken":"'
              + b"x" * 3000 + b'"}\n\n')
    sub = Subscriber(figures=LINE_FIGURES)
    tail = b""
    for start in range(0, len(events), 700):
        tail = record(sub, tail, events[start:start + 700])
    assert [name for _, (name, _) in sub.seen] == ["ticket", "admitted"]
    assert sub.seen[1][1][1].endswith(b'"}') and len(sub.seen[1][1][1]) > 3000

