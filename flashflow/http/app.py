"""The Quart-Trio HTTP front: routes, envelopes and the wiring of error handlers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from quart import Response, g, request
from quart_schema import (
    RequestSchemaValidationError,
    document_request,
    document_response,
    security_scheme,
    validate_querystring,
)
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from actors import (
    FlashFlowError,
    InvalidInput,
    Purchase,
    Sale,
    SaleNotActive,
    SaleNotFound,
    SaleStatus,
)
from actors.errors import UnsupportedMediaType

from ..metrics import install_metrics
from ..runtime import Runtime
from . import errors
from .auth import Auth
from .cors import install_cors
from .page import install_page
from .schema import (
    BEARER,
    ErrorEnvelope,
    PurchaseEnvelope,
    PurchaseRequest,
    PurchaseStatusEnvelope,
    SaleEnvelope,
    SignedInPurchaseRequest,
    SignedInStatusQuery,
    StatusQuery,
    install_schema,
    validation_message,
)
from .sse import install_sse

log = logging.getLogger("flashflow.http")

API = "/api/v1/flash-sales/current"


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as JavaScript's ``toISOString``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(payload: Any, status: int = 200) -> Response:
    """A success response in the ``{"data": ...}`` envelope."""
    return Response(json.dumps({"data": payload}), status=status, content_type="application/json")


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


class JsonRequest(TrioRequest):
    """A request whose unparseable JSON body is a VALIDATION_ERROR, said plainly."""

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise InvalidInput("The request body must be valid JSON.")

    async def get_json(self, force: bool = False, silent: bool = False,
                       cache: bool = True) -> Any:
        # Undecodable bytes and absurd nesting fail outside Quart's own ValueError net.
        try:
            return await super().get_json(force, silent, cache)
        except (UnicodeDecodeError, RecursionError):
            raise InvalidInput("The request body must be valid JSON.") from None


def create_app(runtime: Runtime) -> QuartTrio:
    """Build the HTTP application around a running actor tree.

    Raises:
        SettingsError: the token key named by the settings cannot be used.
    """
    settings = runtime.settings
    auth = Auth.from_settings(settings)
    app = QuartTrio(__name__, static_folder=None)
    app.request_class = JsonRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    signed_in = auth.verifier is not None
    install_schema(app, signed_in)
    # With a token key, a body or query may leave userId out: the token names the buyer.
    body_model = SignedInPurchaseRequest if signed_in else PurchaseRequest
    query_model = SignedInStatusQuery if signed_in else StatusQuery
    requires = security_scheme(BEARER) if signed_in else (lambda route: route)

    def current_sale(now: datetime) -> Sale:
        sale = runtime.catalog.current(now)
        if sale is None:
            raise SaleNotFound()
        return sale

    @app.get(API)
    @document_response(SaleEnvelope, 200)
    @document_response(ErrorEnvelope, 404)
    async def get_current() -> Response:
        now = runtime.clock()
        sale = current_sale(now)
        remaining = await runtime.gate.remaining(sale)
        return envelope(sale_body(sale, remaining, now))

    @app.post(f"{API}/purchase")
    @requires
    @document_request(body_model)
    @document_response(PurchaseEnvelope, 201)
    @document_response(ErrorEnvelope, 409)
    async def purchase() -> Response:
        # The hot path of a stampede: the model validates the raw bytes in one pass, and
        # expected refusals are answered here rather than raised through Quart's handlers.
        try:
            body = body_model.model_validate_json(await request.get_data(cache=False))
        except ValidationError as exc:
            g.purchase_outcome = "VALIDATION_ERROR"
            return errors.error_response(400, "VALIDATION_ERROR", validation_message(exc))
        try:
            bought, sale = await buy(auth.identify(request, body.userId))
        except FlashFlowError as exc:
            response, g.purchase_outcome = errors.for_error_with_code(exc, settings.retry_after_s)
            return response
        g.purchase_outcome = "CONFIRMED"
        return envelope(purchase_body(bought, sale), status=201)

    async def buy(user_id: str) -> tuple[Purchase, Sale]:
        now = runtime.clock()
        sale = current_sale(now)
        status = sale.status(now)
        if status is not SaleStatus.ACTIVE:
            raise SaleNotActive(started=status is SaleStatus.ENDED)
        # Answers known in memory (a repeat buyer, a sold-out sale) cost no tokens: they
        # never reach Redis or PostgreSQL, which is what the limits protect.
        runtime.serializer.answer_from_memory(sale, user_id)
        if runtime.limiter is not None:
            await runtime.limiter.check(user_id, auth.client_address(request))
        return await runtime.serializer.purchase(sale, user_id), sale

    @app.get(f"{API}/purchase")
    @requires
    @validate_querystring(query_model)
    @document_response(PurchaseStatusEnvelope, 200)
    async def purchase_status(query_args: StatusQuery | SignedInStatusQuery) -> Response:
        user_id = auth.identify(request, query_args.userId)
        sale = current_sale(runtime.clock())
        # A purchase this process committed is answered from memory; anything else is
        # read from the ledger, the source of truth, and spends tokens like a purchase.
        found = runtime.serializer.known_purchase(sale.id, user_id)
        if found is None and runtime.limiter is not None:
            await runtime.limiter.check(user_id, auth.client_address(request))
        found = found or await runtime.ledger.find_purchase(sale.id, user_id)
        if found is None:
            return envelope({"purchased": False})
        return envelope({"purchased": True, "purchaseId": str(found.id),
                     "purchasedAt": iso(found.purchased_at)})

    @app.get("/healthz")
    async def healthz() -> Response:
        return envelope({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = await readiness(runtime)
        status = 200 if all(checks.values()) else 503
        return envelope({"ready": status == 200, "checks": checks}, status=status)

    @app.before_request
    async def require_json_bodies() -> None:
        # A form or text/plain POST needs no CORS preflight, so a cross-site page could
        # send one: only application/json (any charset) is read.
        if (request.method == "POST" and request.url_rule is not None
                and request.mimetype != "application/json"):
            raise UnsupportedMediaType()

    @app.errorhandler(FlashFlowError)
    async def on_flashflow_error(error: FlashFlowError) -> Response:
        return errors.for_error(error, settings.retry_after_s)

    @app.errorhandler(RequestSchemaValidationError)
    async def on_invalid_request(error: RequestSchemaValidationError) -> Response:
        return errors.error_response(400, "VALIDATION_ERROR",
                                     validation_message(error.validation_error))

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        return errors.for_http(error)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        log.exception("unexpected error", exc_info=error)
        return errors.internal_error()

    install_metrics(app, runtime, auth.check_metrics)
    install_cors(app, settings.cors_origins)
    install_sse(app, runtime)
    install_page(app)
    return app


async def readiness(runtime: Runtime) -> dict[str, bool]:
    """Whether Redis and PostgreSQL answer and the current sale's gate is loaded."""
    checks = {"redis": False, "postgres": False, "gate": False}
    try:
        checks["redis"] = await runtime.gate.ping()
    except FlashFlowError:
        pass
    try:
        checks["postgres"] = await runtime.ledger.ping()
    except FlashFlowError:
        pass
    now = runtime.clock()
    sale = runtime.catalog.current(now)
    if sale is None or sale.status(now) is SaleStatus.ENDED:
        checks["gate"] = True
    elif checks["redis"]:
        try:
            checks["gate"] = await runtime.gate.is_loaded(sale)
        except FlashFlowError:
            pass
    return checks
