"""The one table that maps Flash Flow errors to HTTP statuses and wire codes.

Every error answer is an :class:`ErrorResponse`: the body is :func:`wire.error_body`, and the
response carries its wire code so the metrics need not read the body back.
"""

from __future__ import annotations

import logging
import uuid

from quart import Response
from werkzeug.exceptions import HTTPException

from actors.errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    Forbidden,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    SaleNotActive,
    SaleNotFound,
    SaleStarted,
    ShuttingDown,
    SoldOut,
    StockBelowSold,
    Unauthorized,
    Undecided,
    UnsupportedMediaType,
)

from .wire import JSON, error_body

log = logging.getLogger("flashflow.http")

#: error class -> (HTTP status, wire code, whether to send Retry-After)
ERROR_TABLE: dict[type[FlashFlowError], tuple[int, str, bool]] = {
    InvalidInput: (400, "VALIDATION_ERROR", False),
    Unauthorized: (401, "UNAUTHORIZED", False),
    Forbidden: (403, "FORBIDDEN", False),
    SaleNotFound: (404, "SALE_NOT_FOUND", False),
    SaleNotActive: (409, "SALE_NOT_ACTIVE", False),
    SoldOut: (409, "SOLD_OUT", False),
    AlreadyPurchased: (409, "ALREADY_PURCHASED", False),
    SaleStarted: (409, "SALE_STARTED", False),
    StockBelowSold: (409, "STOCK_BELOW_SOLD", False),
    PayloadTooLarge: (413, "PAYLOAD_TOO_LARGE", False),
    UnsupportedMediaType: (415, "UNSUPPORTED_MEDIA_TYPE", False),
    RateLimited: (429, "RATE_LIMIT_EXCEEDED", True),
    Overloaded: (503, "UNAVAILABLE", True),
    BackendUnavailable: (503, "UNAVAILABLE", True),
    Undecided: (503, "UNAVAILABLE", True),
    ShuttingDown: (503, "UNAVAILABLE", True),
}

#: HTTP errors raised by the framework itself (routing, body limits) -> wire code
HTTP_CODES: dict[int, str] = {
    400: "VALIDATION_ERROR",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "BAD_REQUEST",
}


class ErrorResponse(Response):
    """An error answer in the wire envelope; ``error_code`` is the code its body names."""

    error_code: str


def error_response(status: int, code: str, message: str, *,
                   retry_after_s: int | None = None, challenge: str | None = None
                   ) -> ErrorResponse:
    """Build the error envelope with a fresh correlation id, and log it with that id."""
    correlation_id = str(uuid.uuid4())
    # A sale's losers are many and expected: client errors are logged at DEBUG so a
    # stampede does not pay for a log line per 409; server errors always show.
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log.log(level, "%s %s: %s", status, code, message,
            extra={"correlation_id": correlation_id, "error_code": code})
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    response = ErrorResponse(error_body(status, code, message, correlation_id), status=status,
                             headers=headers, content_type=JSON)
    response.error_code = code
    return response


def table_entry(error: FlashFlowError) -> tuple[int, str, bool] | None:
    """The (status, wire code, Retry-After) the table above gives ``error``, or None."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def for_error(error: FlashFlowError, retry_after_s: int) -> ErrorResponse:
    """The response for a Flash Flow error, by the table above."""
    entry = table_entry(error)
    if entry is None:
        return internal_error()
    status, code, retry = entry
    wait_s = getattr(error, "retry_after_s", retry_after_s)
    return error_response(status, code, error.message, retry_after_s=wait_s if retry else None,
                          challenge=getattr(error, "challenge", None))


def for_http(error: HTTPException) -> ErrorResponse:
    """The response for an HTTP error raised by the framework."""
    status = error.code or 500
    if status >= 500:
        return internal_error()
    code = HTTP_CODES.get(status, "BAD_REQUEST")
    return error_response(status, code, error.description or error.name)


def internal_error() -> ErrorResponse:
    """The response for anything unexpected: no stack trace leaves the server."""
    return error_response(500, "INTERNAL_ERROR", "An unexpected error occurred.")
