"""`flashflow sale watch`: the operator's live view, fed by the SSE stream."""

from __future__ import annotations

import httpx
import trio

from flashflow.http.wire import CURRENT_PURCHASE
from flashflow.watch import SaleView, sse_events, watch

from .helpers import make_sale, spawn_server


def test_sse_parser_reads_events_and_skips_comments():
    """Events are split on blank lines; comments (heartbeats) are skipped."""
    lines = ["retry: 3000", "id: 1", "event: snapshot", 'data: {"a": 1}', "",
             ": heartbeat", "", "id: 2", "event: stock", 'data: {"b": 2}', ""]
    assert list(sse_events(iter(lines))) == [("snapshot", {"a": 1}), ("stock", {"b": 2})]


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
