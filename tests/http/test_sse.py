"""The live event stream of the current sale, over a real server, Redis and PostgreSQL."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import trio

import flashflow.http.app as app_module
from flashflow.http import sse
from flashflow.http.wire import CURRENT, CURRENT_EVENTS, CURRENT_PURCHASE

from ..helpers import LiveServer, live_server, make_sale


@dataclass
class Event:
    """One parsed SSE event, or a comment line (``name == "comment"``)."""

    name: str
    id: str | None = None
    retry: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


class EventReader:
    """Parses a ``text/event-stream`` body one event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout_s: float = 5.0) -> Event:
        """The next event or comment, within ``timeout_s``."""
        fields: dict[str, str] = {}
        with trio.fail_after(timeout_s):
            async for line in self._lines:
                if line.startswith(":"):
                    return Event("comment", data={"text": line[1:].strip()})
                if line == "":
                    if fields:
                        return Event(fields.get("event", "message"), fields.get("id"),
                                     int(fields["retry"]) if "retry" in fields else None,
                                     json.loads(fields.get("data", "{}")))
                    continue
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
        raise EOFError("the stream ended")

    async def next_named(self, name: str, timeout_s: float = 5.0) -> Event:
        """The next event called ``name``, skipping others."""
        with trio.fail_after(timeout_s):
            while True:
                event = await self.next(timeout_s)
                if event.name == name:
                    return event


@asynccontextmanager
async def open_events(server: LiveServer, **headers: str) -> AsyncIterator[EventReader]:
    """Open the event stream on the live server."""
    async with server.client.stream("GET", CURRENT_EVENTS, headers=headers) as response:
        yield EventReader(response)


async def test_the_stream_opens_with_a_snapshot_like_get_current(settings):
    """The first event is a snapshot with an id and a retry hint, equal to GET /current."""
    await make_sale(settings.database_url, stock=5, product="Lamp")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            current = (await server.client.get(CURRENT)).json()["data"]
            async with open_events(server) as reader:
                assert reader.response.status_code == 200
                assert reader.response.headers["content-type"].startswith("text/event-stream")
                snapshot = await reader.next()
    assert snapshot.name == "snapshot"
    assert snapshot.id == "1"
    assert snapshot.retry and snapshot.retry > 0
    snapshot.data.pop("serverTime")
    current.pop("serverTime")
    assert snapshot.data == current


async def test_a_purchase_produces_a_stock_event(settings):
    """A purchase by another client shows up as a stock event with the new figure."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server, open_events(server) as reader:
            await reader.next_named("snapshot")
            bought = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            stock = await reader.next_named("stock")
    assert bought.status_code == 201
    assert stock.data["remainingStock"] == 4
    assert int(stock.id) > 1


async def test_selling_the_last_unit_sends_a_sold_out_status(settings):
    """When the stock reaches 0 a status event says the sale is sold out."""
    await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(settings) as server, open_events(server) as reader:
            snapshot = await reader.next_named("snapshot")
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            status = await reader.next_named("status")
    assert snapshot.data["remainingStock"] == 1
    assert status.data["status"] == "active"
    assert status.data["soldOut"] is True
    assert status.data["remainingStock"] == 0


async def test_status_events_follow_the_sale_window(settings):
    """An upcoming sale's stream announces it active at startTime, then ended at endTime."""
    await make_sale(settings.database_url, starts_in=timedelta(seconds=1.5),
                    lasts=timedelta(seconds=1.5))
    with trio.fail_after(30):
        async with live_server(settings) as server, open_events(server) as reader:
            snapshot = await reader.next_named("snapshot")
            active = await reader.next_named("status", timeout_s=5)
            ended = await reader.next_named("status", timeout_s=5)
    assert snapshot.data["status"] == "upcoming"
    assert (active.data["status"], active.data["soldOut"]) == ("active", False)
    assert ended.data["status"] == "ended"


async def test_a_reconnect_with_last_event_id_gets_a_fresh_snapshot(settings):
    """A client reconnecting with Last-Event-ID gets a new snapshot, numbered after its id."""
    await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            async with open_events(server, **{"Last-Event-ID": "41"}) as reader:
                snapshot = await reader.next()
    assert snapshot.name == "snapshot"
    assert snapshot.id == "42"
    assert snapshot.data["remainingStock"] == 2


async def test_leaving_the_stream_frees_its_subscription(settings):
    """Once a client hangs up, the feed no longer counts its subscriber."""
    await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            async with open_events(server) as reader:
                await reader.next_named("snapshot")
                assert server.runtime.feed.statistics().subscribers == 1
            while server.runtime.feed.statistics().subscribers:
                await trio.sleep(0.02)
            assert server.runtime.feed.statistics().subscribers == 0


async def test_a_quiet_stream_sends_heartbeat_comments(settings, monkeypatch):
    """With nothing to say, the stream sends a comment line every heartbeat interval."""
    monkeypatch.setattr(app_module, "install_sse",
                        functools.partial(sse.install_sse, heartbeat_s=0.2))
    await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with live_server(settings) as server, open_events(server) as reader:
            await reader.next_named("snapshot")
            beats = [await reader.next(timeout_s=2) for _ in range(2)]
    assert [b.name for b in beats] == ["comment", "comment"]


async def test_no_sale_is_a_404_envelope(settings):
    """Without any sale the stream is refused with the usual 404 error body."""
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.get(CURRENT_EVENTS)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "SALE_NOT_FOUND"


async def test_streams_share_an_update_body_under_ids_of_their_own(settings):
    """Two streams told of one purchase get the same stock event body, serverTime and all,
    each numbered after its own Last-Event-ID."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server, open_events(server) as first, \
                open_events(server, **{"Last-Event-ID": "41"}) as second:
            await first.next_named("snapshot")
            await second.next_named("snapshot")
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            one, other = await first.next_named("stock"), await second.next_named("stock")
    assert one.data == other.data
    assert one.data["remainingStock"] == 4
    assert (one.id, other.id) == ("2", "43")


async def test_a_shared_body_is_encoded_again_for_a_new_figure_or_when_stale(settings):
    """The shared body is the same bytes for the same sale and figure while fresh, and a new
    one for another figure, or once ``fresh_s`` has passed."""
    sale = await make_sale(settings.database_url, stock=5)
    shared = sse.SharedBodies(fresh_s=0.2)
    now = sale.start_time
    body = shared.stock(sale, 4, now, None)
    assert shared.stock(sale, 4, now + timedelta(seconds=0.1), None) is body
    assert b'"remainingStock":3' in shared.stock(sale, 3, now, None)
    again = shared.stock(sale, 3, now, None)
    await trio.sleep(0.3)
    assert shared.stock(sale, 3, now, None) is not again
    assert sse.numbered(body, 7) == sse.frame("stock", json.loads(body.split(b"data: ")[1]), 7)
