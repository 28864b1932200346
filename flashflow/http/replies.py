"""Reading the API's answers back, as a client (the load tests, the tests) sees them.

The bodies are :mod:`flashflow.http.wire`'s; this reads any of them, a refusal included,
into one :class:`Reply`, whatever shape it comes in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .wire import STANDINGS

__all__ = ["Reply", "read_reply", "read_reply_bytes", "read_standing", "read_ticket"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What a client reads in one of the API's answers.

    ``error_code`` is the error envelope's code (None for a success); ``purchase_id`` the
    ``purchaseId`` of a purchase, a hold or a status read that says purchased; ``purchased``
    a status read's answer; ``remaining_stock`` a sale's, or what an ``INSUFFICIENT_STOCK``
    refusal says is left (its error's ``details``). In a sale with holds, ``standing``
    is a purchase's, a place's or a standing's ``status`` (one of :data:`STANDINGS`),
    ``expires_at`` a hold's end, ``position`` and ``waitlist_length`` a place's. In a sale with
    a waiting room, ``ticket`` names a ticket, with ``admitted_at`` and ``admission_token``
    once it is admitted (and ``position`` once placed). A field the body does not hold is
    None.
    """

    status: int
    error_code: str | None = None
    purchase_id: str | None = None
    purchased: bool | None = None
    remaining_stock: int | None = None
    standing: str | None = None
    expires_at: datetime | None = None
    position: int | None = None
    waitlist_length: int | None = None
    ticket: str | None = None
    admitted_at: datetime | None = None
    admission_token: str | None = None


def _moment(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def read_reply(status: int, body: Any) -> Reply:
    """The :class:`Reply` of an answer's status and its parsed JSON ``body`` (any shape)."""
    if not isinstance(body, dict):
        return Reply(status)
    data, error = body.get("data"), body.get("error")
    if isinstance(error, dict):
        details = error.get("details")
        left = details.get("remainingStock") if isinstance(details, dict) else None
        return Reply(status, error_code=error.get("code"),
                     remaining_stock=left if isinstance(left, int) else None)
    if not isinstance(data, dict):
        return Reply(status)
    standing = data.get("status")
    return Reply(status, purchase_id=data.get("purchaseId"), purchased=data.get("purchased"),
                 remaining_stock=data.get("remainingStock"),
                 standing=standing if standing in STANDINGS else None,
                 expires_at=_moment(data.get("expiresAt")), position=data.get("position"),
                 waitlist_length=data.get("waitlistLength"), ticket=data.get("ticket"),
                 admitted_at=_moment(data.get("admittedAt")),
                 admission_token=data.get("admissionToken"))


def read_reply_bytes(status: int, content: bytes | None) -> Reply:
    """:func:`read_reply` of a raw body; one that is not JSON reads as an empty one."""
    try:
        body = json.loads(content or b"null")
    except (TypeError, ValueError):
        body = None
    return read_reply(status, body)


def _read_event(data: str) -> Reply:
    try:
        payload = json.loads(data)
    except (TypeError, ValueError):
        payload = None
    return read_reply(200, {"data": payload})


def read_standing(data: str) -> Reply:
    """The :class:`Reply` of a buyer's ``standing`` event (its ``data:``, the status read's
    body without the envelope); data that is not JSON reads as an empty one."""
    return _read_event(data)


def read_ticket(data: str) -> Reply:
    """The :class:`Reply` of a ticket's ``ticket``, ``admitted`` or ``closed`` event (its
    ``data:``, the ticket's body without the envelope); data that is not JSON reads as an
    empty one."""
    return _read_event(data)
