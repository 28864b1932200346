"""The wire form of the HTTP API: its paths (kept in :mod:`.paths`), its timestamps and every
body it sends.

Routes, the event streams, the admin API, the error table and the load tests all take the
API's shape from here. This module imports no actors at run time (their records appear in
annotations only), so a load test may import it without the server's core.

Success bodies are wrapped as ``{"data": ...}``; error bodies keep the original product's
format exactly: ``{"status": "error", "code": <http status>, "error": {"code", "message",
"correlationId"}}``, with ``details`` in ``error`` only for the errors that carry data.

A sale whose per-user limit is 1 answers byte for byte as the original product: its body
gains ``perUserLimit``, and its purchases and places ``quantity``, only above 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from quart import Response

# The paths are part of the wire form: every name of :mod:`.paths`, re-exported.
from .paths import (
    ADMIN_SALE,
    ADMIN_SALE_END,
    ADMIN_SALES,
    CURRENT,
    CURRENT_EVENTS,
    CURRENT_PURCHASE,
    CURRENT_PURCHASE_EVENTS,
    CURRENT_QUEUE,
    DEMO_PAY,
    HEALTHZ,
    HOLD_CANCEL,
    HOLD_CONFIRM,
    METRICS,
    OPENAPI,
    PURCHASE_ID,
    QUEUE_AUDIT,
    READYZ,
    SALE,
    SALE_EVENTS,
    SALE_ID,
    SALE_PURCHASE,
    SALE_PURCHASE_EVENTS,
    SALE_QUEUE,
    SALES,
    TICKET,
    TICKET_EVENTS,
    TICKET_ID,
    admin_end_path,
    admin_sale_path,
    cancel_path,
    confirm_path,
    demo_pay_path,
    events_path,
    fill,
    purchase_events_path,
    purchase_path,
    queue_path,
    sale_id_in,
    sale_path,
    ticket_events_path,
    ticket_path,
)

if TYPE_CHECKING:
    from actors import BuyerStatus, Place, Purchase, Sale, Tally, WaitingRoom

__all__ = [
    "ADMIN_SALE",
    "ADMIN_SALES",
    "ADMIN_SALE_END",
    "CONFIRMED",
    "CURRENT",
    "CURRENT_EVENTS",
    "CURRENT_PURCHASE",
    "CURRENT_PURCHASE_EVENTS",
    "CURRENT_QUEUE",
    "DEMO_PAY",
    "HEALTHZ",
    "HELD",
    "HOLD_CANCEL",
    "HOLD_CONFIRM",
    "JSON",
    "METRICS",
    "OPENAPI",
    "PLACE_BODY",
    "PURCHASE_BODY",
    "PURCHASE_ID",
    "PURCHASE_STATUS_BODY",
    "QUEUE_AUDIT",
    "READYZ",
    "SALE",
    "SALES",
    "SALE_BODY",
    "SALE_EVENTS",
    "SALE_ID",
    "SALE_PURCHASE",
    "SALE_PURCHASE_EVENTS",
    "SALE_QUEUE",
    "STANDINGS",
    "TICKET",
    "TICKET_EVENTS",
    "TICKET_ID",
    "WAITLISTED",
    "Answer",
    "Body",
    "ErrorResponse",
    "admin_end_path",
    "admin_sale_path",
    "answer",
    "cancel_path",
    "confirm_path",
    "demo_pay_path",
    "envelope",
    "error_body",
    "events_path",
    "fill",
    "hold_fields",
    "iso",
    "place_body",
    "purchase_body",
    "purchase_events_path",
    "purchase_path",
    "purchase_status_body",
    "quantity_field",
    "queue_path",
    "response",
    "room_body",
    "sale_body",
    "sale_id_in",
    "sale_path",
    "sold_out",
    "standing_body",
    "status_event_body",
    "stock_event_body",
    "ticket_events_path",
    "ticket_path",
]

JSON = "application/json"


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as JavaScript's ``toISOString``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer as bytes, free of any framework: Quart's routes and the fast path send it.

    ``headers`` come before ``Content-Type`` and ``Content-Length``, in the order Quart sends
    them; ``error_code`` is the wire code an error answer's body names (None on success).
    """

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    error_code: str | None = None


class ErrorResponse(Response):
    """An error answer in the wire envelope; ``error_code`` is the code its body names."""

    error_code: str


def answer(payload: Any, status: int = 200) -> Answer:
    """A success answer in the ``{"data": ...}`` envelope."""
    return Answer(status, json.dumps({"data": payload}).encode())


def envelope(payload: Any, status: int = 200) -> Response:
    """A success response in the ``{"data": ...}`` envelope."""
    return response(answer(payload, status))


def response(sent: Answer) -> Response:
    """The Quart response of an answer (an :class:`ErrorResponse` when it is an error's)."""
    if sent.error_code is None:
        return Response(sent.body, status=sent.status, headers=list(sent.headers),
                        content_type=JSON)
    built = ErrorResponse(sent.body, status=sent.status, headers=list(sent.headers),
                          content_type=JSON)
    built.error_code = sent.error_code
    return built


# Each body the API sends, declared once: its fields in the order they are sent, each with its
# JSON schema. The builders below fill them in; the OpenAPI document's models are made from
# them (:mod:`flashflow.http.schema`). A new body is one more :class:`Body` and its builder.

_TEXT = {"type": "string"}
_ID = {"type": "string", "format": "uuid"}
_MOMENT = {"type": "string", "format": "date-time"}
_COUNT = {"type": "integer"}
_FLAG = {"type": "boolean"}
_LIMIT = {"type": "integer", "minimum": 2,
          "description": "The most units one buyer may take; sent only when above 1."}
_UNITS = {"type": "integer", "minimum": 1,
          "description": "The units taken or waited for; sent only in a sale whose "
                         "perUserLimit is above 1."}
#: What a confirmed purchase's ``status`` says.
CONFIRMED = "confirmed"
#: What a hold's ``status`` says: committed, waiting for payment until ``expiresAt``.
HELD = "held"
#: What a place in the waitlist says.
WAITLISTED = "waitlisted"
#: Every standing a buyer's status read may report in a sale with holds (the values of
#: actors.Standing; a test holds them equal).
STANDINGS = ["held", "confirmed", "waitlisted", "lapsed", "cancelled", "closed"]


@dataclass(frozen=True)
class Body:
    """One body's fields, in the order they are sent, each with its JSON schema.

    ``optional`` names the fields a body may leave out (never sent as null).
    """

    description: str
    fields: dict[str, dict[str, Any]]
    optional: frozenset[str] = frozenset()

    def build(self, **values: Any) -> dict[str, Any]:
        """The body of ``values``, keyed by wire name, in the declared order."""
        body = {name: values[name] for name in self.fields if name in values}
        if len(body) != len(values):
            raise TypeError(f"not fields of the body: {sorted(set(values) - set(body))}")
        return body


SALE_BODY = Body("A sale as ``GET /current`` returns it.", {
    "id": _ID,
    "productName": _TEXT,
    "totalStock": _COUNT,
    "remainingStock": _COUNT,
    "startTime": _MOMENT,
    "endTime": _MOMENT,
    # The values of actors.SaleStatus (a test holds them equal).
    "status": {"type": "string", "enum": ["upcoming", "active", "ended"]},
    "serverTime": _MOMENT,
    # A sale whose buyers may take more than one unit each: the most one may take.
    "perUserLimit": _LIMIT,
    # A sale with holds only: its payment window, and its units by where they stand.
    "holdSeconds": _COUNT,
    "heldStock": _COUNT,
    "confirmedStock": _COUNT,
    "waitlistLength": _COUNT,
    # A sale with a waiting room only: its line's definition.
    "waitingRoom": {"type": "object", "properties": {
        "opensSecondsBefore": _COUNT, "admitPerSecond": {"type": "number"},
        "admissionSeconds": _COUNT}},
}, optional=frozenset({"perUserLimit", "holdSeconds", "heldStock", "confirmedStock",
                        "waitlistLength", "waitingRoom"}))
PURCHASE_BODY = Body("A purchase: confirmed, or in a sale with holds a hold until expiresAt.", {
    "purchaseId": _ID,
    "userId": _TEXT,
    "productName": _TEXT,
    "quantity": _UNITS,
    "status": {"type": "string", "enum": [CONFIRMED, HELD]},
    "purchasedAt": _MOMENT,
    "expiresAt": _MOMENT,
    "confirmedAt": _MOMENT,
}, optional=frozenset({"quantity", "expiresAt", "confirmedAt"}))
PLACE_BODY = Body("A place in the waitlist: position 1 is offered the next unit that comes back.", {
    "userId": _TEXT,
    "productName": _TEXT,
    "quantity": _UNITS,
    "status": {"type": "string", "enum": [WAITLISTED]},
    "position": _COUNT,
    "waitlistLength": _COUNT,
}, optional=frozenset({"quantity"}))
PURCHASE_STATUS_BODY = Body(
    "Whether a user holds a purchase in the sale; what, if so. In a sale with holds, where "
    "the user stands: ``purchased`` is true while they hold or own a unit.",
    {"purchased": _FLAG, "purchaseId": _ID, "purchasedAt": _MOMENT,
     "status": {"type": "string", "enum": STANDINGS}, "expiresAt": _MOMENT,
     "position": _COUNT, "waitlistLength": _COUNT, "quantity": _UNITS},
    optional=frozenset({"purchaseId", "purchasedAt", "status", "expiresAt", "position",
                        "waitlistLength", "quantity"}))


def hold_fields(sale: Sale, tally: Tally | None) -> dict[str, Any]:
    """What a sale with holds adds to its body and its events (nothing, without holds)."""
    if tally is None or sale.hold_seconds is None:
        return {}
    return {"holdSeconds": sale.hold_seconds, "heldStock": tally.held,
            "confirmedStock": tally.confirmed, "waitlistLength": tally.waiting}


def quantity_field(sale: Sale, quantity: int) -> dict[str, int]:
    """What a purchase or a place adds in a sale of several units per buyer (nothing when
    its per-user limit is 1, as in the original product)."""
    return {"quantity": quantity} if sale.per_user_limit > 1 else {}


def room_body(room: WaitingRoom) -> dict[str, Any]:
    """The wire form of a sale's waiting room, as its ``waitingRoom`` field shows it."""
    return {"opensSecondsBefore": room.opens_before_s, "admitPerSecond": room.admit_per_s,
            "admissionSeconds": room.window_s}


def sale_body(sale: Sale, remaining: int, now: datetime,
              tally: Tally | None = None) -> dict[str, Any]:
    """The wire form of a sale, as ``GET /current`` returns it (``tally``: with holds)."""
    limit = {"perUserLimit": sale.per_user_limit} if sale.per_user_limit > 1 else {}
    line = {} if sale.waiting_room is None else {"waitingRoom": room_body(sale.waiting_room)}
    return SALE_BODY.build(
        id=str(sale.id), productName=sale.product_name, totalStock=sale.total_stock,
        remainingStock=remaining, startTime=iso(sale.start_time), endTime=iso(sale.end_time),
        status=sale.status(now).value, serverTime=iso(now), **limit, **hold_fields(sale, tally),
        **line)


def purchase_body(purchase: Purchase, sale: Sale) -> dict[str, Any]:
    """The wire form of a purchase: confirmed, or a hold with its end."""
    more: dict[str, Any] = {}
    if purchase.expires_at is not None:
        more["expiresAt"] = iso(purchase.expires_at)
    if purchase.confirmed_at is not None:
        more["confirmedAt"] = iso(purchase.confirmed_at)
    return PURCHASE_BODY.build(
        purchaseId=str(purchase.id), userId=purchase.user_id, productName=sale.product_name,
        status=HELD if purchase.held else CONFIRMED, purchasedAt=iso(purchase.purchased_at),
        **quantity_field(sale, purchase.quantity), **more)


def place_body(place: Place, sale: Sale) -> dict[str, Any]:
    """The wire form of a place in the waitlist (the 202 of a press)."""
    return PLACE_BODY.build(userId=place.user_id, productName=sale.product_name,
                            status=WAITLISTED, position=place.position,
                            waitlistLength=place.length, **quantity_field(sale, place.quantity))


def purchase_status_body(found: Purchase | None, sale: Sale) -> dict[str, Any]:
    """The wire form of ``GET .../purchase``: whether the user bought, and what."""
    if found is None:
        return PURCHASE_STATUS_BODY.build(purchased=False)
    return PURCHASE_STATUS_BODY.build(purchased=True, purchaseId=str(found.id),
                                      purchasedAt=iso(found.purchased_at),
                                      **quantity_field(sale, found.quantity))


def standing_body(status: BuyerStatus, sale: Sale) -> dict[str, Any]:
    """The wire form of ``GET .../purchase`` in a sale with holds: where the user stands."""
    if status.standing is None:
        return PURCHASE_STATUS_BODY.build(purchased=False)
    more: dict[str, Any] = {"status": status.standing.value}
    purchase = status.purchase
    if purchase is not None:
        more.update(purchaseId=str(purchase.id), purchasedAt=iso(purchase.purchased_at))
        if purchase.held and purchase.expires_at is not None:
            more["expiresAt"] = iso(purchase.expires_at)
        more.update(quantity_field(sale, purchase.quantity))
    if status.place is not None:
        more.update(position=status.place.position, waitlistLength=status.place.length,
                    **quantity_field(sale, status.place.quantity))
    return PURCHASE_STATUS_BODY.build(purchased=purchase is not None, **more)


def stock_event_body(sale: Sale, remaining: int, now: datetime,
                     tally: Tally | None = None) -> dict[str, Any]:
    """The payload of an SSE ``stock`` event (``tally``: with holds, where the units stand)."""
    return {"saleId": str(sale.id), "remainingStock": remaining, "serverTime": iso(now),
            **hold_fields(sale, tally)}


def sold_out(remaining: int, tally: Tally | None = None) -> bool:
    """Whether a stream says the sale is sold out: no unit left, and with holds (``tally``)
    every unit confirmed, since a held unit may still come back."""
    return remaining == 0 if tally is None else tally.sold_out


def status_event_body(sale: Sale, remaining: int, now: datetime,
                      tally: Tally | None = None) -> dict[str, Any]:
    """The payload of an SSE ``status`` event (``tally``: with holds)."""
    return {"saleId": str(sale.id), "status": sale.status(now).value,
            "soldOut": sold_out(remaining, tally), "remainingStock": remaining,
            "serverTime": iso(now)}


def error_body(status: int, code: str, message: str, correlation_id: str,
               details: dict[str, Any] | None = None) -> str:
    """The error envelope's body; ``details``, the data an error carries, only when given."""
    error: dict[str, Any] = {"code": code, "message": message, "correlationId": correlation_id}
    if details is not None:
        error["details"] = details
    return json.dumps({"status": "error", "code": status, "error": error})
