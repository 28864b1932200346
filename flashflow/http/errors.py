"""The one table that maps Flash Flow errors to HTTP statuses and wire codes.

Every error answer is a :class:`wire.Answer` (status, headers, bytes), free of any framework,
so the fast path sends the very answer Quart would; Quart's routes send it as an
:class:`ErrorResponse`. The body is :func:`wire.error_body`, and the answer carries its wire
code so the metrics need not read the body back.
"""

from __future__ import annotations

import logging
import uuid

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from actors.errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    Forbidden,
    InvalidInput,
    Overloaded,
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

from .wire import Answer, ErrorResponse, error_body, response

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
    UnsupportedMediaType: (415, "UNSUPPORTED_MEDIA_TYPE", False),
    RateLimited: (429, "RATE_LIMIT_EXCEEDED", True),
    Overloaded: (503, "UNAVAILABLE", True),
    BackendUnavailable: (503, "UNAVAILABLE", True),
    Undecided: (503, "UNAVAILABLE", True),
    ShuttingDown: (503, "UNAVAILABLE", True),
}

#: The wire code of anything unexpected (500).
INTERNAL_ERROR = "INTERNAL_ERROR"

#: HTTP errors raised by the framework itself (routing, body limits) -> wire code
HTTP_CODES: dict[int, str] = {
    400: "VALIDATION_ERROR",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "BAD_REQUEST",
}


def error_answer(status: int, code: str, message: str, *,
                 retry_after_s: int | None = None, challenge: str | None = None,
                 allow: tuple[str, ...] = ()) -> Answer:
    """Build the error envelope with a fresh correlation id, and log it with that id.

    ``allow``, the methods the path accepts, makes the ``Allow`` header a 405 must carry
    (RFC 9110, section 15.5.6).
    """
    correlation_id = str(uuid.uuid4())
    # A sale's losers are many and expected: client errors are logged at DEBUG so a
    # stampede does not pay for a log line per 409; server errors always show.
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log.log(level, "%s %s: %s", status, code, message,
            extra={"correlation_id": correlation_id, "error_code": code})
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after_s is not None:
        headers += (("Retry-After", str(retry_after_s)),)
    if challenge is not None:
        headers += (("WWW-Authenticate", challenge),)
    if allow:
        headers += (("Allow", ", ".join(allow)),)
    return Answer(status, error_body(status, code, message, correlation_id).encode(), headers,
                  code)


def table_entry(error: FlashFlowError) -> tuple[int, str, bool] | None:
    """The (status, wire code, Retry-After) the table above gives ``error``, or None."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def answer_for(error: FlashFlowError, retry_after_s: int) -> Answer:
    """The answer to a Flash Flow error, by the table above."""
    entry = table_entry(error)
    if entry is None:
        return internal_answer()
    status, code, retry = entry
    wait_s = getattr(error, "retry_after_s", retry_after_s)
    return error_answer(status, code, error.message, retry_after_s=wait_s if retry else None,
                        challenge=getattr(error, "challenge", None))


def internal_answer() -> Answer:
    """The answer to anything unexpected: no stack trace leaves the server."""
    return error_answer(500, INTERNAL_ERROR, "An unexpected error occurred.")


def error_response(status: int, code: str, message: str, *,
                   retry_after_s: int | None = None, challenge: str | None = None,
                   allow: tuple[str, ...] = ()) -> ErrorResponse:
    """:func:`error_answer` as a Quart response."""
    return response(error_answer(status, code, message, retry_after_s=retry_after_s,
                                 challenge=challenge, allow=allow))


def for_error(error: FlashFlowError, retry_after_s: int) -> ErrorResponse:
    """The Quart response for a Flash Flow error, by the table above."""
    return response(answer_for(error, retry_after_s))


def for_http(error: HTTPException) -> ErrorResponse:
    """The response for an HTTP error raised by the framework."""
    status = error.code or 500
    if status >= 500:
        return internal_error()
    code = HTTP_CODES.get(status, "BAD_REQUEST")
    # The router names the methods the path accepts (in no set order) on its 405.
    allow = (tuple(sorted(error.valid_methods or ()))
             if isinstance(error, MethodNotAllowed) else ())
    return error_response(status, code, error.description or error.name, allow=allow)


def internal_error() -> ErrorResponse:
    """The Quart response for anything unexpected."""
    return response(internal_answer())
