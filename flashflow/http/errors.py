"""The one table that maps Flash Flow errors to HTTP statuses and wire codes.

Every error answer is a :class:`wire.Answer` (status, headers, bytes), free of any framework,
so the fast path sends the very answer Quart would; Quart's routes send it as an
:class:`ErrorResponse`. The body is :func:`wire.error_body`, and the answer carries its wire
code so the metrics need not read the body back, and its correlation id in the
``X-Correlation-Id`` header as well as in the body.

Whether and how an error answer is logged is decided here too (:func:`report`), for the
fast path and Quart alike: the expected outcomes of a sale stay out of the default log (they
are counted in ``/metrics`` by code), the refusals that point at a broken client or an
attack are logged at INFO within :data:`CLIENT_FAULT_LINES`, and server errors always.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from actors.errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    Forbidden,
    HoldCancelled,
    HoldConfirmed,
    HoldExpired,
    InsufficientStock,
    InvalidInput,
    LineNotOpen,
    NotAdmitted,
    Overloaded,
    PurchaseNotFound,
    RateLimited,
    SaleNotActive,
    SaleNotFound,
    SaleStarted,
    ShuttingDown,
    SoldOut,
    StockBelowSold,
    TicketNotFound,
    Unauthorized,
    Undecided,
    UnsupportedMediaType,
)

from ..logs import LineBudget
from .wire import Answer, ErrorResponse, error_body, response

log = logging.getLogger("flashflow.http")

#: error class -> (HTTP status, wire code, whether to send Retry-After)
ERROR_TABLE: dict[type[FlashFlowError], tuple[int, str, bool]] = {
    InvalidInput: (400, "VALIDATION_ERROR", False),
    Unauthorized: (401, "UNAUTHORIZED", False),
    Forbidden: (403, "FORBIDDEN", False),
    SaleNotFound: (404, "SALE_NOT_FOUND", False),
    PurchaseNotFound: (404, "PURCHASE_NOT_FOUND", False),
    TicketNotFound: (404, "TICKET_NOT_FOUND", False),
    NotAdmitted: (403, "NOT_ADMITTED", False),
    LineNotOpen: (409, "LINE_NOT_OPEN", False),
    SaleNotActive: (409, "SALE_NOT_ACTIVE", False),
    SoldOut: (409, "SOLD_OUT", False),
    InsufficientStock: (409, "INSUFFICIENT_STOCK", False),
    AlreadyPurchased: (409, "ALREADY_PURCHASED", False),
    SaleStarted: (409, "SALE_STARTED", False),
    StockBelowSold: (409, "STOCK_BELOW_SOLD", False),
    HoldExpired: (409, "HOLD_EXPIRED", False),
    HoldCancelled: (409, "HOLD_CANCELLED", False),
    HoldConfirmed: (409, "ALREADY_CONFIRMED", False),
    UnsupportedMediaType: (415, "UNSUPPORTED_MEDIA_TYPE", False),
    RateLimited: (429, "RATE_LIMIT_EXCEEDED", True),
    Overloaded: (503, "UNAVAILABLE", True),
    BackendUnavailable: (503, "UNAVAILABLE", True),
    Undecided: (503, "UNAVAILABLE", True),
    ShuttingDown: (503, "UNAVAILABLE", True),
}

#: error class -> the ``details`` its answer carries in ``error`` (the others carry none)
DETAILS: dict[type[FlashFlowError], Callable[[Any], dict[str, Any]]] = {
    InsufficientStock: lambda error: {"remainingStock": error.remaining},
    NotAdmitted: lambda error: {"position": error.position, "ahead": error.ahead},
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


#: Every code an error answer's body may name.
WIRE_CODES: tuple[str, ...] = tuple(sorted(
    {code for _, code, _ in ERROR_TABLE.values()} | set(HTTP_CODES.values()) | {INTERNAL_ERROR}))


#: The response header that carries an error answer's correlation id (and an admin action's).
CORRELATION_HEADER = "X-Correlation-Id"

#: Client errors that point at a broken client or an attack: logged at INFO (within
#: :data:`CLIENT_FAULT_LINES`). Every other 4xx is an expected outcome of a sale (409 lost,
#: 429 too fast, 404 no sale now): logged at DEBUG only, so a stampede does not pay for a
#: line per loser, and counted by code in ``flashflow_http_errors_total``.
CLIENT_FAULTS = frozenset({400, 401, 403, 405, 413, 415, 431})

#: At most 10 client-fault lines a second per process, 20 at once: a flood cannot fill a disk.
CLIENT_FAULT_LINES = LineBudget(per_s=10.0, burst=20)


def report(status: int, code: str, message: str, correlation_id: str,
           error: BaseException | None = None) -> None:
    """Log an error answer by its status, with its correlation id.

    A 500 is logged at ERROR with ``error``'s traceback; any other 5xx at WARNING; a client
    fault (:data:`CLIENT_FAULTS`) at INFO within its line budget; any other 4xx at DEBUG.
    """
    extra = {"correlation_id": correlation_id, "error_code": code}
    if status >= 500:
        level = logging.ERROR if status == 500 else logging.WARNING
        log.log(level, "%s %s: %s", status, code, message, extra=extra,
                exc_info=error if error is not None else None)
    elif status in CLIENT_FAULTS:
        CLIENT_FAULT_LINES.log(log, logging.INFO, "%s %s: %s", status, code, message,
                               extra=extra)
    else:
        log.debug("%s %s: %s", status, code, message, extra=extra)


def error_answer(status: int, code: str, message: str, *,
                 retry_after_s: int | None = None, challenge: str | None = None,
                 allow: tuple[str, ...] = (), error: BaseException | None = None,
                 details: dict[str, Any] | None = None) -> Answer:
    """Build the error envelope with a fresh correlation id, and :func:`report` it with that id.

    ``allow``, the methods the path accepts, makes the ``Allow`` header a 405 must carry
    (RFC 9110, section 15.5.6); ``error``, the exception behind a 500, puts its traceback on
    the log line; ``details`` go in the body's ``error`` (see :data:`DETAILS`).
    """
    correlation_id = str(uuid.uuid4())
    report(status, code, message, correlation_id, error)
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after_s is not None:
        headers += (("Retry-After", str(retry_after_s)),)
    if challenge is not None:
        headers += (("WWW-Authenticate", challenge),)
    if allow:
        headers += (("Allow", ", ".join(allow)),)
    headers += ((CORRELATION_HEADER, correlation_id),)
    return Answer(status, error_body(status, code, message, correlation_id, details).encode(),
                  headers, code)


def table_entry(error: FlashFlowError) -> tuple[int, str, bool] | None:
    """The (status, wire code, Retry-After) the table above gives ``error``, or None."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def entry_of(cause: type[Exception]) -> tuple[int, str, bool]:
    """The (status, wire code, Retry-After) of an error class: a Flash Flow error's by the
    table above, an HTTP error the framework raises by :data:`HTTP_CODES`.

    Raises:
        KeyError: neither table answers for ``cause``.
    """
    for cls in cause.__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    code = getattr(cause, "code", None)
    if issubclass(cause, HTTPException) and code in HTTP_CODES:
        return code, HTTP_CODES[code], False
    raise KeyError(f"{cause.__name__} has no wire code")


def answer_for(error: FlashFlowError, retry_after_s: int) -> Answer:
    """The answer to a Flash Flow error, by the table above."""
    entry = table_entry(error)
    if entry is None:
        return internal_answer(error)
    status, code, retry = entry
    wait_s = getattr(error, "retry_after_s", retry_after_s)
    detailed = DETAILS.get(type(error))
    return error_answer(status, code, error.message, retry_after_s=wait_s if retry else None,
                        challenge=getattr(error, "challenge", None),
                        details=None if detailed is None else detailed(error))


def internal_answer(error: BaseException | None = None) -> Answer:
    """The answer to anything unexpected (``error``): no stack trace leaves the server, but
    the log line holds it, with the correlation id the answer carries."""
    return error_answer(500, INTERNAL_ERROR, "An unexpected error occurred.", error=error)


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
        return internal_error(error)
    code = HTTP_CODES.get(status, "BAD_REQUEST")
    # The router names the methods the path accepts (in no set order) on its 405.
    allow = (tuple(sorted(error.valid_methods or ()))
             if isinstance(error, MethodNotAllowed) else ())
    return error_response(status, code, error.description or error.name, allow=allow)


def internal_error(error: BaseException | None = None) -> ErrorResponse:
    """The Quart response for anything unexpected (``error``)."""
    return response(internal_answer(error))
