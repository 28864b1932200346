"""`flashflow sale watch`: the operator's live view, fed by the SSE stream."""

from __future__ import annotations

import httpx
import pytest
import trio

from flashflow.http.wire import CURRENT_EVENTS, CURRENT_PURCHASE
from flashflow.watch import SaleView, WatchError, watch

from .helpers import make_sale, spawn_server

SNAPSHOT = ('{"productName": "Lamp", "totalStock": 10, "remainingStock": 10, '
            '"status": "active"}')


class Streams:
    """A server, as an httpx transport, that answers each connection with the next reply."""

    def __init__(self, *replies: httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == CURRENT_EVENTS
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def stream(text: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"},
                          content=text.encode())


def test_a_broken_stream_is_taken_up_again_where_it_stopped():
    """Heartbeats are skipped; after the stream ends or the connection breaks, the watch
    waits the server's ``retry:`` and reconnects with ``Last-Event-ID``, as EventSource does."""
    server = Streams(
        stream(f"retry: 2500\nid: 1\nevent: snapshot\ndata: {SNAPSHOT}\n\n: hb\n\n"),
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"error": {"message": "draining"}}),
        stream('id: 7\nevent: stock\ndata: {"remainingStock": 9}\n\n'))
    lines: list[str] = []
    slept: list[float] = []
    seen = watch("http://flashflow.test", lines.append, max_events=2,
                 transport=httpx.MockTransport(server), sleep=slept.append)
    assert seen == 2
    assert slept == [2.5, 2.5, 2.5]
    assert [r.headers.get("last-event-id") for r in server.requests] == [None, "1", "1", "1"]
    shown = [line for line in lines if not line.startswith("(")]
    assert "10/10 left" in shown[0] and "9/10 left" in shown[1]
    assert sum(line.startswith("(no stream") for line in lines) == 3


def test_a_refusal_or_a_body_that_is_not_json_is_a_clear_error():
    """A 4xx ends the watch with the error envelope's message (or the status, for a body that
    is not an envelope); an event that is not JSON ends it with what was sent."""
    refused = Streams(httpx.Response(404, json={"error": {"message": "No active sale"}}))
    with pytest.raises(WatchError, match="No active sale"):
        watch("http://flashflow.test", print, transport=httpx.MockTransport(refused))
    proxy = Streams(httpx.Response(403, text="<html>forbidden</html>"))
    with pytest.raises(WatchError, match="HTTP 403"):
        watch("http://flashflow.test", print, transport=httpx.MockTransport(proxy))
    garbled = Streams(stream("event: snapshot\ndata: <html>\n\n"))
    with pytest.raises(WatchError, match="not a JSON event: '<html>'"):
        watch("http://flashflow.test", print, transport=httpx.MockTransport(garbled))


def test_view_renders_bar_rate_and_sold_out():
    """The line shows the bar, what is left, the rate of purchases and the sold-out state."""
    now = [0.0]
    view = SaleView(clock=lambda: now[0])
    view.apply("snapshot", {"productName": "Lamp", "totalStock": 10, "remainingStock": 10,
                            "status": "active"})
    now[0] = 2.0
    view.apply("stock", {"remainingStock": 6})
    line = view.render()
    assert line.startswith("Lamp [############------------------] 6/10 left")
    assert "2.0/s" in line
    view.apply("status", {"status": "active", "soldOut": True, "remainingStock": 0})
    assert view.render().endswith("SOLD OUT")


async def test_watch_follows_a_live_sale(settings, tmp_path):
    """Watching a real server shows the snapshot, then the stock falling after a purchase."""
    await make_sale(settings.database_url, stock=4, product="Kettle")
    server = await trio.to_thread.run_sync(spawn_server, settings, tmp_path)
    lines: list[str] = []
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync,
                                   lambda: watch(server.base_url, lines.append, max_events=2,
                                                 timeout_s=30))
                while not lines:
                    await trio.sleep(0.05)
                async with httpx.AsyncClient(base_url=server.base_url) as client:
                    bought = await client.post(CURRENT_PURCHASE,
                                               json={"userId": "watched-buyer"})
                assert bought.status_code == 201
    finally:
        server.stop()
    assert lines[0].startswith("Kettle [") and "4/4 left" in lines[0]
    assert "3/4 left" in lines[1]
