"""The API's models: they validate requests and they are the bodies of the OpenAPI document.

Requests are validated by quart-schema from these pydantic models; the rules for a
``userId`` live once, in :mod:`flashflow.http.validation`, and are reused here. The bodies
the API sends are made from the fields :mod:`flashflow.http.wire` declares for them, and an
error's code from the codes :mod:`flashflow.http.errors` maps. What each route answers, and
the document built from it, is :mod:`flashflow.http.openapi`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from actors.errors import InvalidInput

from . import line_wire, validation, wire
from .errors import WIRE_CODES


def _checked(rule):
    """A pydantic validator from a rule of :mod:`validation` (its InvalidInput a ValueError)."""
    def check(value: Any) -> str:
        try:
            return rule(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
    return check


UserId = Annotated[
    str,
    BeforeValidator(_checked(validation.user_id)),
    WithJsonSchema({
        "type": "string", "minLength": validation.USER_ID_MIN,
        "maxLength": validation.USER_ID_MAX, "pattern": validation.user_id_pattern(),
        "description": validation.user_id_rule(),
    }),
]


def _no_default(schema: dict[str, Any]) -> None:
    # An optional userId is left out, not sent as null: its schema holds no null default.
    schema.pop("default", None)


#: A userId that a bearer token's subject may stand in for.
OPTIONAL = Field(None, json_schema_extra=_no_default)


ProductName = Annotated[
    str,
    BeforeValidator(_checked(validation.product_name)),
    WithJsonSchema({
        "type": "string", "minLength": 1, "maxLength": validation.PRODUCT_NAME_MAX,
        "description": "1 to 200 characters after trimming, no control characters.",
    }),
]
Stock = Annotated[int, Field(strict=True, ge=0, le=validation.STOCK_MAX)]
#: A hold's payment window, in seconds (a day at most).
HoldSeconds = Annotated[int, Field(strict=True, ge=1, le=validation.HOLD_SECONDS_MAX)]
#: The most units one buyer may take (1: one each, as in the original product).
PerUserLimit = Annotated[int, Field(
    strict=True, ge=1, le=validation.PER_USER_LIMIT_MAX,
    description="The most units one buyer may take, all in one purchase (1 when left out).")]
#: The units a purchase asks for: an integer (not a boolean, a float or a string), up to the
#: sale's perUserLimit, which only the sale knows: the serializer checks that bound, and a
#: refusal here is answered with it too (:func:`flashflow.http.fast.HotRoutes.purchase`).
Quantity = Annotated[int, Field(
    strict=True, ge=1, le=validation.PER_USER_LIMIT_MAX,
    description="The units to buy, all or none: 1 (the default) to the sale's perUserLimit.")]
#: ISO 8601 with a zone offset or ``Z``: a time without one would be a guess.
Moment = Annotated[
    AwareDatetime, Field(description="ISO 8601 with an offset, e.g. 2030-01-01T10:00:00Z")]


#: A sale's waiting room, as the admin API takes it.
class WaitingRoomIn(BaseModel):
    """A waiting room: when its line opens, how fast it admits, how long an admission lasts."""

    model_config = ConfigDict(extra="forbid")
    opensSecondsBefore: Annotated[int, Field(
        strict=True, ge=0, le=validation.LINE_OPENS_MAX_S,
        description="How long before startTime buyers may join the line (a week at most).")]
    admitPerSecond: Annotated[float, Field(
        strict=True, gt=0, le=validation.ADMIT_PER_S_MAX,
        description="Tickets admitted a second, in order, from startTime.")]
    admissionSeconds: Annotated[int, Field(
        strict=True, ge=1, le=validation.HOLD_SECONDS_MAX,
        description="How long an admitted buyer may buy.")]


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
    #: With it, a winning press is a hold that payment confirms within this many seconds.
    holdSeconds: HoldSeconds | None = None
    #: The most units one buyer may take; 1 when left out.
    perUserLimit: PerUserLimit | None = None
    #: With it, buyers join a fair line and buy only once admitted.
    waitingRoom: WaitingRoomIn | None = None

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
    holdSeconds: HoldSeconds | None = None
    perUserLimit: PerUserLimit | None = None
    waitingRoom: WaitingRoomIn | None = None

    @model_validator(mode="after")
    def something_to_change(self) -> Self:
        if all(value is None for _, value in self):
            raise ValueError("Give at least one of productName, totalStock, startTime, endTime, "
                             "holdSeconds, perUserLimit, waitingRoom.")
        _check_window(self.startTime, self.endTime)
        return self


#: In a sale with a waiting room, the admission token its ticket was given once admitted.
AdmissionToken = Annotated[str, Field(max_length=4096, description=(
    "A sale with a waiting room only: the admissionToken of the buyer's admitted ticket."))]


class PurchaseRequest(BaseModel):
    """The body of ``POST /purchase`` without authentication: it names the buyer."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId
    quantity: Quantity = 1
    admissionToken: AdmissionToken | SkipJsonSchema[None] = OPTIONAL


class SignedInPurchaseRequest(BaseModel):
    """The body of ``POST /purchase`` with a bearer token: ``userId``, if sent, is its ``sub``."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId | SkipJsonSchema[None] = OPTIONAL
    quantity: Quantity = 1
    admissionToken: AdmissionToken | SkipJsonSchema[None] = OPTIONAL


#: A join's proof of work: a nonce (see flashflow.admission).
Proof = Annotated[str, Field(min_length=1, max_length=64, description=(
    "When the line asks for proofBits above 0: a nonce such that sha256(\"{saleId}:{userId}:"
    "{nonce}\") starts with proofBits zero bits."))]


class JoinRequest(BaseModel):
    """The body of ``POST .../queue`` without authentication: it names the buyer."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId
    proof: Proof | SkipJsonSchema[None] = OPTIONAL


class SignedInJoinRequest(BaseModel):
    """The body of ``POST .../queue`` with a bearer token: ``userId``, if sent, is its ``sub``."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId | SkipJsonSchema[None] = OPTIONAL
    proof: Proof | SkipJsonSchema[None] = OPTIONAL


class StatusQuery(BaseModel):
    """The query string of ``GET /purchase`` without authentication."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId


class SignedInStatusQuery(BaseModel):
    """The query string of ``GET /purchase`` with a bearer token: ``userId`` is optional."""

    model_config = ConfigDict(extra="ignore")
    userId: UserId | SkipJsonSchema[None] = OPTIONAL


def sent(name: str, body: wire.Body) -> type[BaseModel]:
    """The model of a body the API sends, named ``name``: its fields and their schemas as
    :mod:`wire` declares them."""
    fields: dict[str, Any] = {
        field: (Annotated[Any, WithJsonSchema(schema)],
                OPTIONAL if field in body.optional else ...)
        for field, schema in body.fields.items()}
    return create_model(name, __doc__=body.description, **fields)


SaleOut = sent("SaleOut", wire.SALE_BODY)
PurchaseOut = sent("PurchaseOut", wire.PURCHASE_BODY)
PurchaseStatusOut = sent("PurchaseStatusOut", wire.PURCHASE_STATUS_BODY)
PlaceOut = sent("PlaceOut", wire.PLACE_BODY)
LineOut = sent("LineOut", line_wire.LINE_BODY)
TicketOut = sent("TicketOut", line_wire.TICKET_BODY)
AuditOut = sent("AuditOut", line_wire.AUDIT_BODY)


class SaleEnvelope(BaseModel):
    """``{"data": sale}``."""

    data: SaleOut


class SaleListEnvelope(BaseModel):
    """``{"data": [sale, ...]}``: upcoming, running and recently ended sales, by start time."""

    data: list[SaleOut]


class PurchaseEnvelope(BaseModel):
    """``{"data": purchase}``."""

    data: PurchaseOut


class PlaceEnvelope(BaseModel):
    """``{"data": place}``."""

    data: PlaceOut


class LineEnvelope(BaseModel):
    """``{"data": line}``."""

    data: LineOut


class TicketEnvelope(BaseModel):
    """``{"data": ticket}``."""

    data: TicketOut


class AuditEnvelope(BaseModel):
    """``{"data": audit}``."""

    data: AuditOut


class PurchaseStatusEnvelope(BaseModel):
    """``{"data": status}``."""

    data: PurchaseStatusOut


class ErrorData(BaseModel):
    """The data an error carries (INSUFFICIENT_STOCK only): ``remainingStock``, the most units
    a purchase could still take."""

    remainingStock: int


class ErrorDetail(BaseModel):
    """What went wrong, with the id under which it was logged; ``details`` for an error that
    carries data."""

    code: Annotated[str, WithJsonSchema({"type": "string", "enum": list(WIRE_CODES)})]
    message: str
    correlationId: str
    details: ErrorData | SkipJsonSchema[None] = OPTIONAL


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
