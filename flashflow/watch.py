"""``flashflow sale watch``: the current sale, live in the terminal, fed by the SSE stream."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, connect_sse

from .http.wire import CURRENT_EVENTS

BAR_WIDTH = 30
#: How long to wait before taking a broken stream up again until the server says (``retry:``).
DEFAULT_RETRY_S = 1.0


@dataclass
class SaleView:
    """What the operator sees: the sale, its stock, and the recent rate of purchases."""

    product: str = "?"
    total: int = 0
    remaining: int = 0
    status: str = "?"
    sold_out: bool = False
    window_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def apply(self, event: str, data: dict) -> None:
        """Take one event from the stream."""
        if event == "snapshot":
            self.product, self.total = data["productName"], data["totalStock"]
            self.status = data["status"]
            self._history.clear()
        if "remainingStock" in data:
            self.remaining = data["remainingStock"]
            self.sold_out = self.remaining == 0 and self.status == "active"
            self._history.append((self.clock(), self.remaining))
        if event == "status":
            self.status, self.sold_out = data["status"], data["soldOut"]

    def per_second(self) -> float:
        """Purchases per second over the last ``window_s`` seconds of stock changes."""
        now = self.clock()
        while self._history and now - self._history[0][0] > self.window_s:
            self._history.popleft()
        if len(self._history) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self._history[0], self._history[-1]
        return max(s0 - s1, 0) / max(t1 - t0, 1e-3)

    def render(self) -> str:
        """One line: product, status, stock bar, remaining of total, purchases per second."""
        sold = self.total - self.remaining
        filled = round(BAR_WIDTH * sold / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        state = "SOLD OUT" if self.sold_out else self.status
        return (f"{self.product} [{bar}] {self.remaining}/{self.total} left  "
                f"{self.per_second():.1f}/s  {state}")


class WatchError(RuntimeError):
    """The server answered something other than the sale's event stream."""


def _refusal(response: httpx.Response) -> WatchError:
    """What a non-stream answer says: the error envelope's message, or its status."""
    try:
        message = json.loads(response.read())["error"]["message"]
    except (ValueError, TypeError, KeyError):
        message = f"HTTP {response.status_code}"
    return WatchError(message)


@dataclass
class _Resume:
    """Where a broken stream is taken up again: after ``retry_s``, from ``last_id``."""

    retry_s: float = DEFAULT_RETRY_S
    last_id: str = ""


def _connection(client: httpx.Client, resume: _Resume) -> Iterator[tuple[str, dict]]:
    """The events of one connection, until it breaks, ends or a 5xx answers."""
    headers = {"Last-Event-ID": resume.last_id} if resume.last_id else {}
    try:
        with connect_sse(client, "GET", CURRENT_EVENTS, headers=headers) as source:
            if source.response.status_code != 200:
                if source.response.status_code < 500:
                    raise _refusal(source.response)
                return
            for event in source.iter_sse():
                if event.retry is not None:
                    resume.retry_s = event.retry / 1000
                resume.last_id = event.id or resume.last_id
                if not event.data:
                    continue  # a heartbeat
                try:
                    data = json.loads(event.data)
                except ValueError:
                    raise WatchError(f"not a JSON event: {event.data[:80]!r}") from None
                yield event.event, data
    except (httpx.TransportError, SSEError):
        return


def watch(url: str, echo: Callable[[str], None], *, max_events: int | None = None,
          timeout_s: float | None = None, transport: httpx.BaseTransport | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Follow the sale at ``url`` and echo a line per change; return the events seen.

    A stream that breaks or ends is taken up again after the server's ``retry:`` (1 s
    until it says), with ``Last-Event-ID`` set to the last ``id:`` seen, as a browser's
    EventSource does; a server that is briefly away (a restart, a 5xx) is waited for the
    same way.

    Raises:
        WatchError: the server refused the stream (a 4xx) or sent an event that is not JSON.
    """
    view, resume, seen = SaleView(), _Resume(), 0
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=20),
                      transport=transport) as client:
        while True:
            with closing(_connection(client, resume)) as events:
                for event, data in events:
                    view.apply(event, data)
                    echo(view.render())
                    seen += 1
                    if seen == max_events or time.monotonic() > deadline:
                        return seen
            if time.monotonic() + resume.retry_s > deadline:
                return seen
            echo(f"(no stream from {url}; trying again in {resume.retry_s:g} s)")
            sleep(resume.retry_s)
