"""``flashflow sale watch``: the current sale, live in the terminal, fed by the SSE stream."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from .http.wire import CURRENT_EVENTS

BAR_WIDTH = 30


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """Parse a text/event-stream into (event name, JSON data); comments are skipped."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


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


def watch(url: str, echo: Callable[[str], None], *, max_events: int | None = None,
          timeout_s: float | None = None) -> int:
    """Follow the sale at ``url`` and echo a line per change; return the events seen."""
    view = SaleView()
    seen = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=20)) as client, \
            client.stream("GET", CURRENT_EVENTS) as response:
        if response.status_code != 200:
            body = json.loads(response.read() or b"{}")
            raise RuntimeError(body.get("error", {}).get("message", f"HTTP {response.status_code}"))
        for event, data in sse_events(response.iter_lines()):
            view.apply(event, data)
            echo(view.render())
            seen += 1
            if max_events is not None and seen >= max_events:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
    return seen
