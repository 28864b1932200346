"""Purchase attempts as the client saw them: each press, its answer and its phase."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import trio

from flashflow.http.replies import Reply, read_reply, read_reply_bytes
from flashflow.http.wire import CURRENT_PURCHASE
from loadtests.records import PURCHASE as PURCHASE_KIND
from loadtests.records import Record

#: Outcome.status for a request that got no HTTP answer (refused, reset, closed).
NO_ANSWER = 0

#: Outcome.status for a request the client gave up on: the server hung.
HUNG = -1


@dataclass(frozen=True, slots=True)
class Outcome:
    """One purchase attempt as the client saw it."""

    user: str
    phase: str
    status: int
    code: str | None
    purchase_id: str | None
    retry_after: str | None
    seconds: float
    #: ``time.monotonic()`` once the answer was in (for a batch of results: once recorded).
    answered_at: float = 0.0
    #: The units the attempt asked for.
    quantity: int = 1
    #: The ``remainingStock`` an ``INSUFFICIENT_STOCK`` told.
    remaining_stock: int | None = None

    def as_record(self) -> Record:
        """This attempt as the load test's record (a hung request is one without an answer;
        times on the monotonic clock, which is all :func:`flashflow.invariants.verify` compares)."""
        status = NO_ANSWER if self.status == HUNG else self.status
        return Record(PURCHASE_KIND, self.user, status, self.answered_at - self.seconds,
                      self.seconds * 1000, purchase_id=self.purchase_id,
                      code=None if self.status == 201 else self.code, quantity=self.quantity,
                      remaining_stock=self.remaining_stock)


@dataclass
class Recorder:
    """Every purchase attempt of a test, tagged with the phase it was sent in.

    ``quantities`` names the units each buyer asks for, every time they press; a buyer not
    named asks for one, and their body names no quantity, as the original clients' did.
    """

    phase: str = "before"
    outcomes: list[Outcome] = field(default_factory=list)
    winners: dict[str, str] = field(default_factory=dict)
    quantities: dict[str, int] = field(default_factory=dict)

    def body(self, user: str) -> dict[str, object]:
        """The purchase body ``user`` sends."""
        quantity = self.quantities.get(user, 1)
        return {"userId": user} if quantity == 1 else {"userId": user, "quantity": quantity}

    async def press(self, client: httpx.AsyncClient, user: str) -> Outcome:
        """POST one purchase for ``user`` and record what came back."""
        phase, started = self.phase, time.perf_counter()
        try:
            response = await client.post(CURRENT_PURCHASE, json=self.body(user))
        except httpx.TimeoutException:
            return self._record(user, phase, started, HUNG)
        except httpx.TransportError:
            return self._record(user, phase, started, NO_ANSWER)
        return self._record(user, phase, started, response.status_code, response.content,
                            response.headers.get("Retry-After"))

    async def press_lightly(self, base_url: str, user: str, timeout_s: float = 60.0) -> Outcome:
        """:meth:`press` on a connection of its own, as a bare HTTP/1.1 exchange.

        A crowd of thousands pressing at once from one test process is held up by the
        client's own work per request; this costs a fraction of it, so the latency recorded
        is the server's (with the connection's set-up), not the test's.
        """
        phase, started = self.phase, time.perf_counter()
        url = httpx.URL(base_url)
        body = json.dumps(self.body(user)).encode()
        request = (f"POST {CURRENT_PURCHASE} HTTP/1.1\r\nHost: {url.host}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body
        received = bytearray()
        with trio.move_on_after(timeout_s) as waited:
            try:
                async with await trio.open_tcp_stream(url.host, url.port) as stream:
                    await stream.send_all(request)
                    while chunk := await stream.receive_some(65536):
                        received += chunk
            except (OSError, trio.BrokenResourceError):
                return self._record(user, phase, started, NO_ANSWER)
        if waited.cancelled_caught:
            return self._record(user, phase, started, HUNG)
        head, _, content = bytes(received).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return self._record(user, phase, started, NO_ANSWER)
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        return self._record(user, phase, started, status, content, headers.get("retry-after"))

    def _record(self, user: str, phase: str, started: float, status: int,
                content: bytes = b"", retry_after: str | None = None) -> Outcome:
        return self._keep(user, phase, read_reply_bytes(status, content), retry_after,
                          time.perf_counter() - started, time.monotonic())

    def add(self, phase: str, results: list[tuple[str, int, dict]]) -> None:
        """Record the results of ``tests.integration.test_stampede.stampede``."""
        recorded_at = time.monotonic()
        for user, status, body in results:
            self._keep(user, phase, read_reply(status, body), None, 0.0, recorded_at)

    def _keep(self, user: str, phase: str, reply: Reply, retry_after: str | None,
              seconds: float, answered_at: float) -> Outcome:
        """Record one answer: a 201 as ``CONFIRMED`` with its purchase, else its error code."""
        confirmed = reply.status == 201
        outcome = Outcome(user, phase, reply.status,
                          "CONFIRMED" if confirmed else reply.error_code,
                          reply.purchase_id if confirmed else None, retry_after, seconds,
                          answered_at, self.quantities.get(user, 1),
                          reply.remaining_stock if reply.error_code else None)
        self.outcomes.append(outcome)
        if outcome.purchase_id is not None:
            self.winners.setdefault(user, outcome.purchase_id)
        return outcome

    def in_phase(self, *phases: str) -> list[Outcome]:
        """The attempts sent during any of ``phases``."""
        return [o for o in self.outcomes if o.phase in phases]


async def purchase_status(client: httpx.AsyncClient, user: str) -> Reply:
    """The status read ``GET .../current/purchase?userId=``."""
    response = await client.get(CURRENT_PURCHASE, params={"userId": user})
    assert response.status_code == 200, (response.status_code, response.text)
    return read_reply(response.status_code, response.json())
