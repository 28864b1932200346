"""The routes of a sale's waiting room: the line, a ticket, its live stream, the audit.

- ``GET .../queue``: where the line stands (its commitment, how far it has admitted, the
  proof of work a join needs).
- ``POST .../queue``: take a ticket (201), or the same one again (200); rate-limited like a
  purchase, and with ``FLASHFLOW_LINE_PROOF_BITS`` set, paid for with a proof of work.
- ``GET .../queue/{ticket}``: the ticket: its position, the tickets ahead, the wait; once
  admitted, the admission token a purchase carries.
- ``GET .../queue/{ticket}/events``: the same, live. A ``ticket`` event first, and again once
  the opening placed it; a ``line`` event at most every ``FLASHFLOW_LINE_UPDATE_S`` while the
  line moves (one body per sale, shared by every stream: from ``admittedUpTo`` each ticket
  knows its own place); ``admitted`` the moment the ticket's
  turn comes, with its token, or ``closed`` when the line closes before it (``expired`` for
  a ticket whose admission window has passed): each is the last event.
- ``GET .../queue/audit``: the seed (once revealed), its commitment and every ticket.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from itertools import count
from typing import TypeVar

import trio
from pydantic import ValidationError
from quart import Response, make_response, request
from quart_schema import document_request
from quart_trio import QuartTrio

from actors import FlashFlowError, InvalidInput, Line, Sale, SoldOut, Ticket
from actors.errors import LineNotOpen, NotAdmitted, SaleNotActive, TicketNotFound
from actors.places_sql import Entered

from ..admission import NONCE_MAX, proof_holds
from ..runtime import Runtime
from . import validation
from .auth import Asking, Auth
from .line_wire import audit_body, line_body, line_fields, ticket_body
from .openapi import (
    BAD_REQUEST,
    EVENT_STREAM,
    NOT_FOUND,
    RATE_LIMITED,
    UNAVAILABLE,
    DocumentedAnswer,
    answers,
    ok,
    refusal,
)
from .schema import (
    AuditEnvelope,
    JoinRequest,
    LineEnvelope,
    SignedInJoinRequest,
    TicketEnvelope,
    validation_message,
)
from .sse import HEADERS, HEARTBEAT, event_body, first_event_id, numbered
from .wire import CURRENT_QUEUE, QUEUE_AUDIT, SALE_QUEUE, TICKET, TICKET_EVENTS, envelope

T = TypeVar("T")

NO_TICKET = refusal({TicketNotFound: "no such ticket in this sale's line, or the sale has "
                                     "no waiting room"}, name="TicketNotFound")
JOIN_REFUSED = refusal({LineNotOpen: "the line opens opensSecondsBefore the start",
                        SoldOut: "the line closed: every unit is sold",
                        SaleNotActive: "the sale has ended"},
                       refused="No ticket", name="JoinRefused")


async def not_admitted(runtime: Runtime, sale: Sale, user_id: str) -> NotAdmitted:
    """The refusal of a purchase without a valid admission, with the buyer's place."""
    lines = runtime.lines
    ticket = await lines.ticket(sale, user_id=user_id)
    if ticket is None:
        return NotAdmitted(None, None, "Join the waiting room first: POST .../queue.")
    line = lines.line(sale.id) or await lines.read(sale)
    position = await lines.position(sale, ticket)
    if line is None or position is None:
        return NotAdmitted(position, None)
    if line.admits(position):
        return NotAdmitted(position, 0, "Your admission has expired, or the purchase did not "
                                        "carry its admissionToken.")
    return NotAdmitted(position, line.ahead(position))


class TicketView:
    """Reads a ticket and its line and builds its body, the admission token included."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def find(self, sale: Sale, ticket_id: uuid.UUID) -> Ticket:
        found = await self._runtime.lines.ticket(sale, ticket_id)
        if found is None:
            raise TicketNotFound()
        return found

    async def body(self, sale: Sale, ticket: Ticket, line: Line) -> dict:
        runtime = self._runtime
        lines = runtime.lines
        position = await lines.position(sale, ticket)
        if line.admits(position) and ticket.admitted_at is None:
            # Admitted since it was read: when, as this process read it for every stream, or
            # else from PostgreSQL.
            at = None if position is None else lines.admitted_at(sale.id, position)
            ticket = (replace(ticket, admitted_at=at) if at is not None
                      else await self.find(sale, ticket.id))
        admission = None
        if line.admits(position) and ticket.admitted_at is not None and position is not None:
            admission = runtime.admissions.mint(sale, ticket, position, ticket.admitted_at)
        return ticket_body(sale, ticket, line, position, lines.rate(sale), runtime.clock(),
                           admission)


def install_line(app: QuartTrio, runtime: Runtime, auth: Auth, *,
                 requires: Callable[[T], T], refusals: tuple[DocumentedAnswer, ...],
                 heartbeat_s: float = 15.0, retry_ms: int = 3000) -> None:
    """Add the waiting room's routes to ``app`` (``requires`` and ``refusals`` as for
    :func:`flashflow.http.holds.install_holds`)."""
    lines = runtime.lines
    settings = runtime.settings
    join_model = SignedInJoinRequest if auth.verifier is not None else JoinRequest
    view = TicketView(runtime)
    shared: dict[uuid.UUID, tuple[Line, float, bytes]] = {}

    def with_room(raw_id: str | None) -> Sale:
        sale = runtime.serializer.sale(validation.sale_id(raw_id))
        if sale.waiting_room is None:
            raise TicketNotFound("This flash sale has no waiting room.")
        return sale

    async def line_of(sale: Sale) -> Line:
        line = await lines.read(sale)
        if line is None:
            raise TicketNotFound("This flash sale has no waiting room.")
        return line

    current = {"defaults": {"sale_id": None}}

    @app.get(CURRENT_QUEUE, **current)
    @app.get(SALE_QUEUE)
    @answers(ok(200, LineEnvelope), BAD_REQUEST, NOT_FOUND, NO_TICKET, UNAVAILABLE)
    async def get_line(sale_id: str | None) -> Response:
        sale = with_room(sale_id)
        line = await line_of(sale)
        return envelope(line_body(sale, line, lines.rate(sale), settings.line_proof_bits,
                                  runtime.clock()))

    @app.post(CURRENT_QUEUE, **current)
    @app.post(SALE_QUEUE)
    @requires
    @document_request(join_model)
    @answers(ok(201, TicketEnvelope, "A new ticket."),
             ok(200, TicketEnvelope, "The user's ticket already: the same one."),
             BAD_REQUEST, *refusals, NOT_FOUND, NO_TICKET, JOIN_REFUSED, RATE_LIMITED,
             UNAVAILABLE)
    async def join(sale_id: str | None) -> Response:
        try:
            body = join_model.model_validate_json(await request.get_data(cache=False))
        except ValidationError as exc:
            raise InvalidInput(validation_message(exc)) from None
        sale = with_room(sale_id)
        asking = Asking.of(request)
        user_id = auth.identify(asking, body.userId)
        bits = settings.line_proof_bits
        if bits > 0 and not (body.proof and len(body.proof) <= NONCE_MAX
                             and proof_holds(sale.id, user_id, body.proof, bits)):
            raise InvalidInput(f"This line asks for a proof of work of {bits} bits: a proof "
                               f"whose sha256 with the sale and the user starts with {bits} "
                               "zero bits.", field="proof")
        if runtime.limiter is not None:
            await runtime.limiter.check(user_id, auth.client_address(asking))
        entered, ticket = await lines.join(sale, user_id)
        if entered is Entered.NOT_OPEN:
            raise LineNotOpen()
        if entered is Entered.CLOSED:
            raise SoldOut()
        if entered is Entered.ENDED:
            raise SaleNotActive(started=True)
        if ticket is None:
            raise TicketNotFound("This flash sale has no waiting room.")
        line = lines.line(sale.id) or await line_of(sale)
        return envelope(await view.body(sale, ticket, line),
                        status=201 if entered is Entered.JOINED else 200)

    @app.get(QUEUE_AUDIT)
    @answers(ok(200, AuditEnvelope), BAD_REQUEST, NOT_FOUND, NO_TICKET, UNAVAILABLE)
    async def audit(sale_id: str) -> Response:
        sale = with_room(sale_id)
        line, tickets = await lines.audit(sale)
        if line is None:
            raise TicketNotFound("This flash sale has no waiting room.")
        return envelope(audit_body(sale, line, tickets))

    @app.get(TICKET)
    @answers(ok(200, TicketEnvelope), BAD_REQUEST, NOT_FOUND, NO_TICKET, UNAVAILABLE)
    async def get_ticket(sale_id: str, ticket_id: str) -> Response:
        sale = with_room(sale_id)
        wanted = validation.ticket_id(ticket_id)
        line = await line_of(sale)
        return envelope(await view.body(sale, await view.find(sale, wanted), line))

    def line_event(sale: Sale, line: Line) -> bytes:
        """The ``line`` event's body, encoded once per sale and line for every stream."""
        rate = lines.rate(sale)
        kept = shared.get(sale.id)
        if kept is not None and kept[0] == line and kept[1] == rate:
            return kept[2]
        body = event_body("line", line_fields(line, rate))
        shared[sale.id] = (line, rate, body)
        return body

    async def frames(sale: Sale, ticket: Ticket, first_id: int) -> AsyncIterator[bytes]:
        ids = count(first_id)
        retry: int | None = retry_ms

        def framed(body: bytes) -> bytes:
            nonlocal retry
            sent, retry = numbered(body, next(ids), retry_ms=retry), None
            return sent

        def event(name: str, payload: dict) -> bytes:
            return framed(event_body(name, payload))

        try:
            line = lines.line(sale.id) or await line_of(sale)
            yield event("ticket", await view.body(sale, ticket, line))
            position = told = await lines.position(sale, ticket)
            shown = line
            beat_at = trio.current_time() + heartbeat_s
            # Each stream tells its news at its own moment of the interval, so the streams of
            # a line do not all send at once (at the opening, say, when every one learns its
            # position); its turn and the line's close are told at once.
            update_at = trio.current_time() + random.uniform(0, settings.line_update_s)
            while True:
                if line.closed is not None or line.admits(position):
                    # The last event, named for the ticket's status: admitted (with its
                    # token), closed (the line closed first) or expired.
                    body = await view.body(sale, ticket, line)
                    yield event(body["status"], body)
                    return
                with trio.move_on_at(min(beat_at, update_at)):
                    if position is None:
                        await lines.changed(sale.id)
                    else:
                        await lines.turn(sale.id, position)
                line = lines.line(sale.id) or line
                if position is None and line.ordered:
                    position = await lines.position(sale, ticket)
                    continue
                out = b""
                if trio.current_time() >= update_at:
                    update_at = trio.current_time() + settings.line_update_s
                    if position != told:
                        out, told, shown = event("ticket", await view.body(sale, ticket,
                                                                           line)), position, line
                    elif line != shown:
                        out, shown = framed(line_event(sale, line)), line
                if not out and trio.current_time() >= beat_at:
                    out = HEARTBEAT
                if out:
                    yield out
                    beat_at = trio.current_time() + heartbeat_s
        except FlashFlowError:
            return  # a backend went away mid-stream: the client reconnects after ``retry``

    @app.get(TICKET_EVENTS)
    @answers(DocumentedAnswer(200, "The ticket, live: a ticket event, line events, then "
                                   "admitted or closed (the last).", model=None,
                              media_type=EVENT_STREAM),
             BAD_REQUEST, NOT_FOUND, NO_TICKET, UNAVAILABLE)
    async def ticket_events(sale_id: str, ticket_id: str) -> Response:
        sale = with_room(sale_id)
        ticket = await view.find(sale, validation.ticket_id(ticket_id))
        first = first_event_id(request.headers.get("Last-Event-ID"))
        response = await make_response(frames(sale, ticket, first), 200, HEADERS)
        response.timeout = None
        return response


__all__ = ["install_line", "not_admitted"]
