"""A waiting room's crowd through a fault: tickets taken before the opening (and a few after
it), each followed by polling or by its stream until admitted or closed, bought with the
admission token, and everything the clients were told kept for the one check of the line,
:func:`flashflow.invariants_line.verify_line`."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import trio

from actors import Sale
from flashflow.http.wire import QUEUE_AUDIT, fill, purchase_path, queue_path, ticket_path
from flashflow.invariants_data import Record
from flashflow.invariants_line import LINE_FINAL, LineLedger, LineTold

from ..http.test_sse import EventReader

#: One user in this many buys once admitted; the others walk away.
BUYS_EVERY = 4
#: One ticket in this many is followed by its stream; the others poll.
STREAMS_EVERY = 2
POLL_S = 3.0
#: The statuses a client waits out and asks again after: no answer, overloaded, unavailable.
ASK_AGAIN = frozenset({0, 429, 503})


def epoch(moment: str) -> float:
    """An ISO 8601 moment of the wire as epoch seconds."""
    return datetime.fromisoformat(moment).timestamp()


@dataclass
class Crowd:
    """The clients of one sale's waiting room and what they were told.

    Attributes:
        tickets: each ticket taken, with its user.
        positions: every position each ticket was told.
        went_back: tickets (or ``line``) told an ``admittedUpTo`` below one told before by
            the same client asking one request at a time.
        bought: users told 201, or ``ALREADY_PURCHASED`` after an answer they never got.
        false: answers no fault excuses: a 5xx other than 503, a 503 without Retry-After,
            a known ticket not found, a refused purchase carrying a valid admission.
        statuses: every answer's status (0: no answer), for the figures.
        watched: ``(seconds since the crowd began, admittedUpTo)`` as the line watcher read it.
    """

    client: httpx.AsyncClient
    sale: Sale
    records: list[Record] = field(default_factory=list)
    tickets: dict[str, str] = field(default_factory=dict)
    positions: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    went_back: list[str] = field(default_factory=list)
    bought: set[str] = field(default_factory=set)
    false: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    watched: list[tuple[float, int]] = field(default_factory=list)
    late_refused: list[float] = field(default_factory=list)
    began: float = field(default_factory=trio.current_time)

    async def ask(self, method: str, path: str, body: dict | None = None,
                  patience_s: float = 60.0) -> tuple[int, dict]:
        """One request, asked again while it gets no answer or a 503 (after its Retry-After)
        or a 429; returns the first other answer."""
        deadline = trio.current_time() + patience_s
        while True:
            try:
                response = await self.client.request(method, path, json=body)
                status, data = response.status_code, response.json()
            except (httpx.TransportError, json.JSONDecodeError):
                status, data, response = 0, {}, None
            self.statuses[status] += 1
            if status >= 500 and (status != 503 or response is None
                                  or "retry-after" not in response.headers):
                self.false.append(f"{method} {path}: {status} {data}")
            if status not in ASK_AGAIN or trio.current_time() > deadline:
                return status, data
            # Retry-After is in whole seconds; a crowd asking again sooner still gets answers.
            await trio.sleep(0.5 if status == 503 else 0.2)

    async def join(self, user: str) -> str | None:
        """Take ``user``'s ticket; None when the line refused it (closed)."""
        status, body = await self.ask("POST", queue_path(self.sale.id), {"userId": user})
        if status == 409 and body["error"]["code"] == "SOLD_OUT":
            self.late_refused.append(time.time())
            return None
        if status not in (200, 201):
            self.false.append(f"join {user}: {status} {body}")
            return None
        ticket = body["data"]["ticket"]
        self.tickets[ticket] = user
        return ticket

    def told(self, ticket: str, body: dict, last: list[int] | None = None) -> str:
        """Keep what a ticket's body told; return its status."""
        if "position" in body:
            self.positions[ticket].add(body["position"])
        if last is not None:
            if body["admittedUpTo"] < last[0]:
                self.went_back.append(ticket)
            last[0] = max(last[0], body["admittedUpTo"])
        return body["status"]

    def final(self, ticket: str, code: str | None, body: dict | None = None) -> None:
        """Record a ticket's final event (``code`` None: its client stopped waiting)."""
        admitted = None if body is None or code != "admitted" or "admittedAt" not in body \
            else epoch(body["admittedAt"])
        self.records.append(Record(LINE_FINAL, self.tickets[ticket], 200, time.time(), 0.0,
                                   purchase_id=ticket, code=code, expires_at=admitted))

    async def buy(self, ticket: str, body: dict) -> None:
        """Buy with the admission token, if this user is one who buys. ``ALREADY_PURCHASED``
        after answers that never came counts as bought: the ledger must then hold the row."""
        user = self.tickets[ticket]
        token = body.get("admissionToken")
        if token is None or int(user.rsplit("-", 1)[1]) % BUYS_EVERY:
            return
        status, reply = await self.ask("POST", purchase_path(self.sale.id),
                                       {"userId": user, "admissionToken": token})
        code = reply.get("error", {}).get("code")
        if status == 201 or code == "ALREADY_PURCHASED":
            self.bought.add(user)
        elif code != "SOLD_OUT":
            self.false.append(f"buy {user}: {status} {reply}")

    async def poll(self, ticket: str) -> None:
        """Poll the ticket until admitted or closed, one request at a time."""
        last = [0]
        while True:
            status, reply = await self.ask("GET", ticket_path(self.sale.id, ticket))
            if status != 200:
                self.false.append(f"ticket {ticket}: {status} {reply}")
                self.final(ticket, None)
                return
            body = reply["data"]
            state = self.told(ticket, body, last)
            if state in ("admitted", "closed", "expired"):
                self.final(ticket, "closed" if state == "closed" else "admitted", body)
                await self.buy(ticket, body)
                return
            await trio.sleep(POLL_S)

    async def follow(self, ticket: str) -> None:
        """Follow the ticket's stream until its final event, reconnecting when it is cut."""
        path = ticket_path(self.sale.id, ticket) + "/events"
        while True:
            try:
                async with self.client.stream("GET", path) as response:
                    self.statuses[response.status_code] += 1
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code != 503:
                            self.false.append(f"stream {ticket}: {response.status_code}")
                            self.final(ticket, None)
                            return
                    else:
                        reader = EventReader(response)
                        while True:
                            event = await reader.next(timeout_s=30)
                            if event.name in ("ticket", "admitted", "closed"):
                                self.told(ticket, event.data)
                            if event.name in ("admitted", "closed"):
                                self.final(ticket, event.name, event.data)
                                await self.buy(ticket, event.data)
                                return
            except (httpx.TransportError, EOFError, trio.TooSlowError):
                self.statuses[0] += 1  # cut, ended early or silent: follow it again
            await trio.sleep(0.3)

    async def wait_in_line(self, ticket: str, index: int) -> None:
        """Follow one ticket, by its stream or by polling."""
        await (self.follow if index % STREAMS_EVERY == 0 else self.poll)(ticket)

    async def watch(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read the line one request at a time, keeping ``admittedUpTo`` as it goes."""
        last = [0]
        task_status.started()
        while True:
            status, reply = await self.ask("GET", queue_path(self.sale.id))
            if status == 200:
                admitted = reply["data"]["admittedUpTo"]
                if admitted < last[0]:
                    self.went_back.append("line")
                last[0] = max(last[0], admitted)
                self.watched.append((trio.current_time() - self.began, admitted))
            await trio.sleep(0.1)

    async def audit(self) -> dict[str, tuple[int | None, str | None]]:
        """Each ticket's position and admission, as the audit tells them."""
        status, reply = await self.ask("GET", fill(QUEUE_AUDIT, self.sale.id))
        assert status == 200, reply
        return {t["ticket"]: (t["position"], t["admittedAt"]) for t in reply["data"]["tickets"]}

    async def read_again(self) -> None:
        """Every ticket read once more at the end: its admission told again, its position
        told again (the admissions check holds each telling to the one ``admitted_at``)."""
        async def one(ticket: str, limit: trio.CapacityLimiter) -> None:
            async with limit:
                status, reply = await self.ask("GET", ticket_path(self.sale.id, ticket))
            if status != 200:
                self.false.append(f"ticket {ticket} at the end: {status} {reply}")
                return
            body = reply["data"]
            self.told(ticket, body)
            if "admittedAt" in body:
                self.final(ticket, "admitted" if body["status"] != "closed" else "closed", body)

        limit = trio.CapacityLimiter(20)
        async with trio.open_nursery() as nursery:
            for ticket in list(self.tickets):
                nursery.start_soon(one, ticket, limit)

    def line_told(self) -> LineTold:
        """What the clients were told, as the line's check reads it."""
        return LineTold.of(self.records)


def positions_of(ledger: LineLedger) -> dict[str, int | None]:
    """Each ticket's position as PostgreSQL holds it."""
    return {t.ticket: t.position for t in ledger.tickets}


__all__ = ["BUYS_EVERY", "Crowd", "epoch", "positions_of"]
