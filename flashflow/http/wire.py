"""The wire form of the HTTP API: its paths, its timestamps and every body it sends.

Routes, the event streams, the admin API, the error table and the load tests all take the
API's shape from here. This module imports no actors at run time (their records appear in
annotations only), so a load test may import it without the server's core.

Success bodies are wrapped as ``{"data": ...}``; error bodies keep the original product's
format exactly: ``{"status": "error", "code": <http status>, "error": {"code", "message",
"correlationId"}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from quart import Response

if TYPE_CHECKING:
    from actors import Purchase, Sale

__all__ = [
    "ADMIN",
    "API",
    "BY_ID",
    "BY_ID_PURCHASE",
    "CURRENT_EVENTS",
    "CURRENT_PURCHASE",
    "JSON",
    "SALES",
    "Answer",
    "ErrorResponse",
    "answer",
    "envelope",
    "error_body",
    "iso",
    "purchase_body",
    "purchase_status_body",
    "response",
    "sale_body",
    "status_event_body",
    "stock_event_body",
]

SALES = "/api/v1/flash-sales"
API = f"{SALES}/current"
#: A sale by id; werkzeug tries the fixed ``/current`` rules first.
BY_ID = f"{SALES}/<sale_id>"
CURRENT_PURCHASE = f"{API}/purchase"
BY_ID_PURCHASE = f"{BY_ID}/purchase"
CURRENT_EVENTS = f"{API}/events"
ADMIN = "/api/v1/admin/flash-sales"

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


def sale_body(sale: Sale, remaining: int, now: datetime) -> dict[str, Any]:
    """The wire form of a sale, as ``GET /current`` returns it."""
    return {
        "id": str(sale.id),
        "productName": sale.product_name,
        "totalStock": sale.total_stock,
        "remainingStock": remaining,
        "startTime": iso(sale.start_time),
        "endTime": iso(sale.end_time),
        "status": sale.status(now).value,
        "serverTime": iso(now),
    }


def purchase_body(purchase: Purchase, sale: Sale) -> dict[str, Any]:
    """The wire form of a confirmed purchase."""
    return {
        "purchaseId": str(purchase.id),
        "userId": purchase.user_id,
        "productName": sale.product_name,
        "status": "confirmed",
        "purchasedAt": iso(purchase.purchased_at),
    }


def purchase_status_body(found: Purchase | None) -> dict[str, Any]:
    """The wire form of ``GET .../purchase``: whether the user bought, and what."""
    if found is None:
        return {"purchased": False}
    return {"purchased": True, "purchaseId": str(found.id),
            "purchasedAt": iso(found.purchased_at)}


def stock_event_body(sale: Sale, remaining: int, now: datetime) -> dict[str, Any]:
    """The payload of an SSE ``stock`` event."""
    return {"saleId": str(sale.id), "remainingStock": remaining, "serverTime": iso(now)}


def status_event_body(sale: Sale, remaining: int, now: datetime) -> dict[str, Any]:
    """The payload of an SSE ``status`` event."""
    return {"saleId": str(sale.id), "status": sale.status(now).value, "soldOut": remaining == 0,
            "remainingStock": remaining, "serverTime": iso(now)}


def error_body(status: int, code: str, message: str, correlation_id: str) -> str:
    """The error envelope's body."""
    return json.dumps({
        "status": "error",
        "code": status,
        "error": {"code": code, "message": message, "correlationId": correlation_id},
    })
