"""Server-Sent Events: a sale's stock and status, live.

``GET /api/v1/flash-sales/current/events`` opens with a ``snapshot`` (the body of
``GET /current``), then sends ``stock`` when the remaining stock changes and ``status`` on
every transition: upcoming -> active at ``startTime``, sold out at 0 (and back, should stock
return), -> ended at ``endTime``. When the catalog's current sale changes, a new
``snapshot`` follows. ``GET /api/v1/flash-sales/{id}/events`` sends the same events for one
sale for as long as the client stays; for either, a sale an operator changed (its window,
its stock, its name) gets a new ``snapshot`` at the stream's next wake. A comment line goes
out after ``heartbeat_s`` of silence so proxies keep the connection. Every connection, a
reconnect with ``Last-Event-ID`` included, starts with a fresh snapshot; event ids carry on
from the client's last one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from datetime import datetime
from itertools import count
from typing import Any

import trio
from quart import Response, make_response, request
from quart_trio import QuartTrio

from actors import FlashFlowError, Sale, SaleStatus, Tally

from ..runtime import Runtime
from . import validation
from .openapi import (
    BAD_SALE_ID,
    EVENT_STREAM,
    NOT_FOUND,
    UNAVAILABLE,
    DocumentedAnswer,
    answers,
)
from .stock import hold_tally
from .wire import (
    CURRENT_EVENTS,
    SALE_EVENTS,
    sale_body,
    sold_out,
    status_event_body,
    stock_event_body,
)

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
HEARTBEAT = b": heartbeat\n\n"
#: How often a stream of a sale with holds reads where its units stand.
HOLDS_LOOK_S = 1.0


def frame(event: str, payload: dict[str, Any], event_id: int, *,
          retry_ms: int | None = None) -> bytes:
    """One SSE event: optional ``retry:``, then ``id:``, ``event:`` and one JSON ``data:`` line."""
    return numbered(event_body(event, payload), event_id, retry_ms=retry_ms)


def event_body(event: str, payload: dict[str, Any]) -> bytes:
    """An event's ``event:`` and ``data:`` lines: what every stream sending it shares."""
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode()


def numbered(body: bytes, event_id: int, *, retry_ms: int | None = None) -> bytes:
    """An event's ``body`` (:func:`event_body`) under one stream's ``id:`` (and ``retry:``)."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{head}id: {event_id}\n".encode() + body


class SharedBodies:
    """The body of a sale's latest ``stock`` event, encoded once for every stream that sends it.

    A stock change wakes every stream of the sale at once; each would build and encode the
    same payload. The first one encodes it; the others, within ``fresh_s`` and for the same
    sale, stock and tally, take its bytes, ``serverTime`` included (the time of the first).
    """

    def __init__(self, fresh_s: float = 1.0) -> None:
        self._fresh_s = fresh_s
        self._latest: dict[uuid.UUID, tuple[Sale, int, Tally | None, float, bytes]] = {}

    def stock(self, sale: Sale, remaining: int, now: datetime, tally: Tally | None) -> bytes:
        """The ``stock`` event's body for the sale at ``remaining`` units (and ``tally``)."""
        at = trio.current_time()
        hit = self._latest.get(sale.id)
        # Streams that joined across a catalog reload hold equal sales, not the same one.
        if (hit is not None and hit[1] == remaining and hit[2] == tally
                and at - hit[3] < self._fresh_s and (hit[0] is sale or hit[0] == sale)):
            return hit[4]
        body = event_body("stock", stock_event_body(sale, remaining, now, tally))
        self._latest[sale.id] = (sale, remaining, tally, at, body)
        return body


def first_event_id(last_event_id: str | None) -> int:
    """The id to number this connection's events from: one past the client's last id."""
    try:
        return max(int(last_event_id or "0"), 0) + 1
    except ValueError:
        return 1


def wake_at(sale: Sale, now: datetime) -> float:
    """The trio deadline of the sale's next transition on the clock (inf once ended)."""
    status = sale.status(now)
    if status is SaleStatus.ENDED:
        return math.inf
    edge = sale.start_time if status is SaleStatus.UPCOMING else sale.end_time
    return trio.current_time() + max((edge - now).total_seconds(), 0.0)


class EventStream:
    """One client's stream of events, over each sale ``follow`` names in its lifetime.

    ``follow`` returns the sale the stream should show now (the current one, or one sale by
    id, as the catalog last loaded it); when that differs from the sale shown, a new snapshot
    starts.
    """

    def __init__(self, runtime: Runtime, *, first_id: int, heartbeat_s: float, retry_ms: int,
                 follow: Callable[[], Sale | None], shared: SharedBodies) -> None:
        self._runtime = runtime
        self._shared = shared
        self._follow = follow
        self._ids: Iterator[int] = count(first_id)
        self._heartbeat_s = heartbeat_s
        self._retry_ms: int | None = retry_ms

    def _frame(self, event: str, payload: dict[str, Any]) -> bytes:
        return self._numbered(event_body(event, payload))

    def _numbered(self, body: bytes) -> bytes:
        retry, self._retry_ms = self._retry_ms, None
        return numbered(body, next(self._ids), retry_ms=retry)

    async def frames(self, sale: Sale | None) -> AsyncIterator[bytes]:
        """Yield the encoded events until the client leaves or the backend fails."""
        while sale is not None:
            try:
                # aclosing: a client leaving mid-send frees the subscription now, not at GC.
                async with aclosing(self._sale_frames(sale)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except FlashFlowError:
                # Redis went away mid-stream: end it; the client reconnects after ``retry``.
                return
            sale = self._follow()

    async def _sale_frames(self, sale: Sale) -> AsyncIterator[bytes]:
        """Events for one sale, until the stream follows another one (or a changed one)."""
        runtime = self._runtime
        with runtime.feed.subscribe(sale.id) as sub:
            remaining = await sub.snapshot()
            if remaining is None:  # the gate is not in Redis yet: load it from the ledger
                remaining = await runtime.gate.store.remaining(sale)
            now = runtime.clock()
            tally = await hold_tally(runtime, sale)
            yield self._frame("snapshot", sale_body(sale, remaining, now, tally))
            state = (sale.status(now), sold_out(remaining, tally))
            beat_at = trio.current_time() + self._heartbeat_s
            while True:
                value: int | None = None
                # With holds, units change hands without a stock change: look every second.
                look_at = trio.current_time() + HOLDS_LOOK_S if sale.holds else math.inf
                with trio.move_on_at(min(beat_at, wake_at(sale, runtime.clock()), look_at)):
                    value = await sub.next()
                now = runtime.clock()
                out: list[bytes] = []
                counted = await hold_tally(runtime, sale)
                if (value is not None and value != remaining) or counted != tally:
                    remaining = remaining if value is None else value
                    tally = counted
                    out.append(self._numbered(self._shared.stock(sale, remaining, now, tally)))
                if (status := (sale.status(now), sold_out(remaining, tally))) != state:
                    state = status
                    out.append(self._frame("status",
                                           status_event_body(sale, remaining, now, tally)))
                if not out and trio.current_time() >= beat_at:
                    out.append(HEARTBEAT)
                if out:
                    yield b"".join(out)  # one write, however many events
                    beat_at = trio.current_time() + self._heartbeat_s
                followed = self._follow()
                if followed is not None and followed != sale:
                    return


def install_sse(app: QuartTrio, runtime: Runtime, *, heartbeat_s: float = 15.0,
                retry_ms: int = 3000) -> None:
    """Add the live event streams (of the current sale, of a sale by id) to ``app``.

    Args:
        app: the application to add the route to.
        runtime: the running actor tree (catalog, gate, feed, clock).
        heartbeat_s: seconds of silence after which a comment line is sent.
        retry_ms: the reconnect delay suggested to clients.
    """
    shared = SharedBodies()

    @app.get(CURRENT_EVENTS, defaults={"sale_id": None})
    @app.get(SALE_EVENTS)
    @answers(DocumentedAnswer(200, "The live stream: a snapshot event, then stock and status "
                                   "events and heartbeat comments.", model=None,
                              media_type=EVENT_STREAM),
             BAD_SALE_ID, NOT_FOUND, UNAVAILABLE)
    async def events(sale_id: str | None) -> Response:
        sale = runtime.serializer.sale(validation.sale_id(sale_id))
        catalog = runtime.catalog
        follow = ((lambda: catalog.current(runtime.clock())) if sale_id is None
                  else (lambda: catalog.get(sale.id)))
        stream = EventStream(runtime, heartbeat_s=heartbeat_s, retry_ms=retry_ms, follow=follow,
                             first_id=first_event_id(request.headers.get("Last-Event-ID")),
                             shared=shared)
        response = await make_response(stream.frames(sale), 200, HEADERS)
        response.timeout = None  # a stream lives as long as its client
        return response
