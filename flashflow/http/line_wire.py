"""The wire form of a waiting room: the line, a ticket, the audit and the line's events.

Paths are :mod:`flashflow.http.wire`'s, with every other body; the waiting room's bodies
live here, declared as :class:`wire.Body` values like the rest, so the OpenAPI document, the
routes, the stream and the load tests read them from one place.

A ticket's ``status``: ``waiting`` (not admitted yet; ``position`` is absent until the opening
places the tickets that joined before it), ``admitted`` (it may buy until
``admissionExpiresAt``, with ``admissionToken``), ``expired`` (its admission window passed)
or ``closed`` (the line closed before its turn: ``closedReason`` says why).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .wire import Body, iso

if TYPE_CHECKING:
    from actors import Line, Sale, Ticket

_TEXT = {"type": "string"}
_ID = {"type": "string", "format": "uuid"}
_MOMENT = {"type": "string", "format": "date-time"}
_COUNT = {"type": "integer"}
_RATE = {"type": "number"}

WAITING, ADMITTED, EXPIRED, CLOSED = "waiting", "admitted", "expired", "closed"
#: Why a line closed, on the wire: the error codes a purchase would meet.
CLOSED_REASONS = {"sold_out": "SOLD_OUT", "ended": "SALE_ENDED"}

LINE_BODY = Body("A sale's waiting room: where its line stands.", {
    "saleId": _ID,
    "opensAt": _MOMENT,
    "startTime": _MOMENT,
    # sha256 of the seed that orders the tickets taken before the opening (hex).
    "commitment": _TEXT,
    # Whether the opening has placed those tickets (the seed is public from then).
    "ordered": {"type": "boolean"},
    "lineLength": _COUNT,
    "admittedUpTo": _COUNT,
    "admitRate": _RATE,
    "admissionSeconds": _COUNT,
    "proofBits": _COUNT,
    "closedReason": {"type": "string", "enum": sorted(CLOSED_REASONS.values())},
    "serverTime": _MOMENT,
}, optional=frozenset({"closedReason"}))
TICKET_BODY = Body("A buyer's ticket in a sale's waiting room.", {
    "ticket": _ID,
    "saleId": _ID,
    "userId": _TEXT,
    "joinedAt": _MOMENT,
    "status": {"type": "string", "enum": [WAITING, ADMITTED, EXPIRED, CLOSED]},
    "position": _COUNT,
    "ahead": _COUNT,
    "lineLength": _COUNT,
    "admittedUpTo": _COUNT,
    "admitRate": _RATE,
    "estimatedWaitSeconds": _COUNT,
    "admittedAt": _MOMENT,
    "admissionToken": _TEXT,
    "admissionExpiresAt": _MOMENT,
    "closedReason": {"type": "string", "enum": sorted(CLOSED_REASONS.values())},
    "serverTime": _MOMENT,
}, optional=frozenset({"position", "ahead", "estimatedWaitSeconds", "admittedAt",
                       "admissionToken", "admissionExpiresAt", "closedReason"}))
AUDIT_BODY = Body(
    "Everything needed to check a line's order: the seed (once the opening placed the "
    "tickets; null before), its commitment, and every ticket in arrival order. The tickets "
    "taken before the opening (early) are ordered by ascending sha256(seed bytes || the "
    "ticket id's text in UTF-8); the later ones follow in arrival order.", {
        "saleId": _ID,
        "commitment": _TEXT,
        "seed": {"type": ["string", "null"], "description": "hex"},
        "ordered": {"type": "boolean"},
        "admittedUpTo": _COUNT,
        "tickets": {"type": "array", "items": {"type": "object", "properties": {
            "ticket": _ID, "joinedAt": _MOMENT, "early": {"type": "boolean"},
            "position": {"type": ["integer", "null"]},
            "admittedAt": {"type": ["string", "null"], "format": "date-time"}}}},
    })


def opens_at(sale: Sale) -> datetime:
    """When the sale's line opens for joins."""
    assert sale.waiting_room is not None
    return sale.start_time - timedelta(seconds=sale.waiting_room.opens_before_s)


def line_fields(line: Line, rate: float) -> dict[str, Any]:
    """What every body and event of a line says of where it stands."""
    closed = {} if line.closed is None else {"closedReason": CLOSED_REASONS[line.closed]}
    return {"lineLength": line.length, "admittedUpTo": line.admitted,
            "admitRate": round(rate, 3), **closed}


def line_body(sale: Sale, line: Line, rate: float, proof_bits: int,
              now: datetime) -> dict[str, Any]:
    """The wire form of a sale's line (``GET .../queue``), and of its stream's ``line`` event."""
    assert sale.waiting_room is not None
    return LINE_BODY.build(
        saleId=str(sale.id), opensAt=iso(opens_at(sale)), startTime=iso(sale.start_time),
        commitment=line.commitment, ordered=line.ordered,
        admissionSeconds=sale.waiting_room.window_s, proofBits=proof_bits,
        serverTime=iso(now), **line_fields(line, rate))


def ticket_status(ticket: Ticket, line: Line, position: int | None, now: datetime,
                  window_s: int) -> str:
    """Where a ticket stands in its line (see the module's docstring)."""
    if line.admits(position):
        if line.closed == "sold_out":
            return CLOSED
        admitted_at = ticket.admitted_at
        if admitted_at is not None and now >= admitted_at + timedelta(seconds=window_s):
            return EXPIRED
        return ADMITTED
    return WAITING if line.closed is None else CLOSED


def ticket_body(sale: Sale, ticket: Ticket, line: Line, position: int | None, rate: float,
                now: datetime, admission: tuple[str, datetime] | None = None) -> dict[str, Any]:
    """The wire form of a ticket; ``admission`` is its token and the token's expiry, once
    admitted (an admitted ticket's body without it is from before the admission was read)."""
    assert sale.waiting_room is not None
    status = ticket_status(ticket, line, position, now, sale.waiting_room.window_s)
    extra: dict[str, Any] = {}
    if position is not None:
        ahead = line.ahead(position)
        extra["position"] = position
        extra["ahead"] = ahead
        if status == WAITING and line.ordered:
            extra["estimatedWaitSeconds"] = math.ceil((ahead + 1) / rate) if rate > 0 else 0
    if ticket.admitted_at is not None and line.admits(position):
        extra["admittedAt"] = iso(ticket.admitted_at)
    if admission is not None and status == ADMITTED:
        extra["admissionToken"], expires = admission[0], admission[1]
        extra["admissionExpiresAt"] = iso(expires)
    return TICKET_BODY.build(
        ticket=str(ticket.id), saleId=str(sale.id), userId=ticket.user_id,
        joinedAt=iso(ticket.joined_at), status=status, serverTime=iso(now),
        **extra, **line_fields(line, rate))


def audit_body(sale: Sale, line: Line, tickets: list[Ticket]) -> dict[str, Any]:
    """The wire form of a line's audit (``GET .../queue/audit``)."""
    return AUDIT_BODY.build(
        saleId=str(sale.id), commitment=line.commitment,
        seed=None if line.seed is None else line.seed.hex(), ordered=line.ordered,
        admittedUpTo=line.admitted,
        tickets=[{"ticket": str(t.id), "joinedAt": iso(t.joined_at), "early": t.early,
                  "position": t.position,
                  "admittedAt": None if t.admitted_at is None else iso(t.admitted_at)}
                 for t in tickets])


__all__ = ["ADMITTED", "AUDIT_BODY", "CLOSED", "CLOSED_REASONS", "EXPIRED", "LINE_BODY",
           "TICKET_BODY", "WAITING", "audit_body", "line_body", "line_fields", "opens_at",
           "ticket_body", "ticket_status"]
