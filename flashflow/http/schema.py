"""The API's models: they validate requests and they are the OpenAPI document.

Requests are validated by quart-schema from these pydantic models; the rules for a
``userId`` live once, in :mod:`flashflow.http.validation`, and are reused here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from quart_schema import OpenAPIProvider, QuartSchema
from quart_trio import QuartTrio

from actors.errors import InvalidInput

from . import validation


def _checked(rule):
    """A pydantic validator from a rule of :mod:`validation` (its InvalidInput a ValueError)."""
    def check(value: Any) -> str:
        try:
            return rule(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
    return check


class _UserIdSchema:
    """The user id's JSON schema, built when the OpenAPI document is first asked for."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "type": "string",
            "minLength": validation.USER_ID_MIN,
            "maxLength": validation.USER_ID_MAX,
            "pattern": validation.user_id_pattern(),
            "description": "3 to 255 characters after trimming and NFC normalisation; no "
                           "character of Unicode categories "
                           f"{', '.join(validation.REFUSED_CATEGORIES)}.",
        }


UserId = Annotated[str, BeforeValidator(_checked(validation.user_id)), _UserIdSchema()]


ProductName = Annotated[
    str,
    BeforeValidator(_checked(validation.product_name)),
    WithJsonSchema({
        "type": "string", "minLength": 1, "maxLength": validation.PRODUCT_NAME_MAX,
        "description": "1 to 200 characters after trimming, no control characters.",
    }),
]
Stock = Annotated[int, Field(strict=True, ge=0, le=validation.STOCK_MAX)]
#: ISO 8601 with a zone offset or ``Z``: a time without one would be a guess.
Moment = Annotated[AwareDatetime, Field(description="ISO 8601 with an offset, e.g. 2030-01-01T10:00:00Z")]


def _check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise ValueError("endTime must be after startTime.")


class SaleCreate(BaseModel):
    """The body of ``POST /admin/flash-sales``: the sale's own wire names."""

    model_config = ConfigDict(extra="forbid")
    productName: ProductName
    totalStock: Stock
    startTime: Moment
    endTime: Moment

    @model_validator(mode="after")
    def window_in_order(self) -> Self:
        _check_window(self.startTime, self.endTime)
        return self


class SaleUpdate(BaseModel):
    """The body of ``PATCH /admin/flash-sales/{id}``: the fields to change, at least one."""

    model_config = ConfigDict(extra="forbid")
    productName: ProductName | None = None
    totalStock: Stock | None = None
    startTime: Moment | None = None
    endTime: Moment | None = None

    @model_validator(mode="after")
    def something_to_change(self) -> Self:
        if all(value is None for _, value in self):
            raise ValueError("Give at least one of productName, totalStock, startTime, endTime.")
        _check_window(self.startTime, self.endTime)
        return self


class PurchaseRequest(BaseModel):
    """The body of ``POST /purchase`` without authentication: it names the buyer."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId


class SignedInPurchaseRequest(BaseModel):
    """The body of ``POST /purchase`` with a bearer token: ``userId``, if sent, is its ``sub``."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId | SkipJsonSchema[None] = None


class StatusQuery(BaseModel):
    """The query string of ``GET /purchase`` without authentication."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId


class SignedInStatusQuery(BaseModel):
    """The query string of ``GET /purchase`` with a bearer token: ``userId`` is optional."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId | SkipJsonSchema[None] = None


#: The OpenAPI security scheme of the bearer token, and a route's requirement of it.
BEARER_SCHEME = {"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}}
BEARER = [{"bearer": []}]


class SaleOut(BaseModel):
    """A sale as ``GET /current`` returns it."""

    id: str
    productName: str
    totalStock: int
    remainingStock: int
    startTime: str
    endTime: str
    status: Literal["upcoming", "active", "ended"]
    serverTime: str


class SaleEnvelope(BaseModel):
    """``{"data": sale}``."""

    data: SaleOut


class SaleListEnvelope(BaseModel):
    """``{"data": [sale, ...]}``: upcoming, running and recently ended sales, by start time."""

    data: list[SaleOut]


class PurchaseOut(BaseModel):
    """A confirmed purchase."""

    purchaseId: str
    userId: str
    productName: str
    status: Literal["confirmed"]
    purchasedAt: str


class PurchaseEnvelope(BaseModel):
    """``{"data": purchase}``."""

    data: PurchaseOut


class PurchaseStatusOut(BaseModel):
    """Whether a user holds a purchase in the current sale."""

    purchased: bool
    purchaseId: str | None = None
    purchasedAt: str | None = None


class PurchaseStatusEnvelope(BaseModel):
    """``{"data": status}``."""

    data: PurchaseStatusOut


class ErrorDetail(BaseModel):
    """What went wrong, with the id under which it was logged."""

    code: str
    message: str
    correlationId: str


class ErrorEnvelope(BaseModel):
    """Every error response."""

    status: Literal["error"]
    code: int
    error: ErrorDetail


class HealthOut(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class HealthEnvelope(BaseModel):
    """``{"data": {"status": "ok"}}``."""

    data: HealthOut


class ReadinessOut(BaseModel):
    """Whether each backend answers (``redis``, ``postgres``) and the current sale's gate is
    loaded (``gate``)."""

    ready: bool
    checks: dict[str, bool]


class ReadinessEnvelope(BaseModel):
    """``{"data": {"ready": ..., "checks": {...}}}``: 200 when ready, 503 when not."""

    data: ReadinessOut


#: Where the answers a route documents are kept on its view function.
ANSWERS_ATTRIBUTE = "_flashflow_answers"
#: The media type of the live event streams.
EVENT_STREAM = "text/event-stream"

RETRY_AFTER = {"Retry-After": {
    "description": "Whole seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {
    "description": "The bearer challenge (RFC 6750).",
    "required": True,
    "schema": {"type": "string"},
}}


@dataclass(frozen=True)
class Answer:
    """One response a route can give, as the OpenAPI document lists it.

    ``model`` is the JSON body's model; ``None`` with ``media_type`` set documents a body of
    that media type as a string (the event stream).
    """

    status: int
    description: str
    model: type[BaseModel] | None = ErrorEnvelope
    media_type: str = "application/json"
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


def ok(status: int, model: type[BaseModel], description: str | None = None) -> Answer:
    """A success answer; its description is the model's docstring unless given."""
    return Answer(status, description or (model.__doc__ or "").strip(), model)


BAD_REQUEST = Answer(400, "VALIDATION_ERROR: the sale id, the query string or the body is "
                          "not valid.")
BAD_SALE_ID = Answer(400, "VALIDATION_ERROR: the sale id is not valid.")
UNAUTHORIZED = Answer(401, "UNAUTHORIZED: no single valid bearer token.",
                      headers=WWW_AUTHENTICATE)
FORBIDDEN = Answer(403, "FORBIDDEN: userId names another user than the token's subject.")
NOT_FOUND = Answer(404, "SALE_NOT_FOUND: no such sale (or, for /current, no current sale).")
PURCHASE_CONFLICT = Answer(409, "The purchase is refused; error.code says why: "
                                "SALE_NOT_ACTIVE (not started yet, or ended), SOLD_OUT, or "
                                "ALREADY_PURCHASED (this user already holds one).")
TOO_LARGE = Answer(413, "PAYLOAD_TOO_LARGE: the body is over the size limit.")
UNSUPPORTED = Answer(415, "UNSUPPORTED_MEDIA_TYPE: a body that is not application/json.")
RATE_LIMITED = Answer(429, "RATE_LIMIT_EXCEEDED: this user or client address is over its "
                           "rate; retry after Retry-After seconds.", headers=RETRY_AFTER)
UNAVAILABLE = Answer(503, "UNAVAILABLE: overloaded, shutting down, or a backend (Redis, "
                          "PostgreSQL) does not answer; retry after Retry-After seconds.",
                     headers=RETRY_AFTER)

T = TypeVar("T", bound=Callable[..., Any])


def answers(*items: Answer) -> Callable[[T], T]:
    """Document the responses a route gives (each status once)."""
    def decorator(func: T) -> T:
        listed = dict(getattr(func, ANSWERS_ATTRIBUTE, {}))
        listed.update({item.status: item for item in items})
        setattr(func, ANSWERS_ATTRIBUTE, listed)
        return func
    return decorator


class Document(OpenAPIProvider):
    """quart-schema's document, with each route's :func:`answers`: per-status descriptions,
    response headers where OpenAPI puts them, and non-JSON media types."""

    def build_paths(self, rule: Any) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        listed: dict[int, Answer] = getattr(self._app.view_functions[rule.endpoint],
                                            ANSWERS_ATTRIBUTE, {})
        responses: dict[int, dict[str, Any]] = {}
        for status, item in sorted(listed.items()):
            if item.model is None:
                response: dict[str, Any] = {
                    "content": {item.media_type: {"schema": {"type": "string"}}}}
            else:
                response, definitions = self.build_response_object(item.model, None)
                components.update(definitions)
            response["description"] = item.description
            if item.headers:
                response["headers"] = dict(item.headers)
            responses[status] = response
        for operations in paths.values():
            for operation in operations.values():
                operation["responses"] = {**operation["responses"], **responses}
        return paths, components


def install_schema(app: QuartTrio, signed_in: bool) -> None:
    """Serve the OpenAPI document at ``/openapi.json`` (no UI pages: they load from CDNs)."""
    QuartSchema(
        app,
        info={"title": "Flash Flow", "version": "1"},
        swagger_ui_path=None, redoc_ui_path=None, scalar_ui_path=None,
        security_schemes=BEARER_SCHEME if signed_in else None,
        openapi_provider_class=Document,
    )


def validation_message(cause: Exception | None) -> str:
    """A readable message for the first problem a model found in a request."""
    problems = getattr(cause, "errors", list)()
    if not problems:
        return "The request is not valid."
    first = problems[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "body"
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "The request body must be valid JSON."
    if kind == "missing":
        return f"{field} is required."
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return "The request body must be a JSON object (Content-Type: application/json)."
    if kind == "value_error":
        return str(first["ctx"]["error"])
    return f"{field}: {first.get('msg', 'is not valid')}."
