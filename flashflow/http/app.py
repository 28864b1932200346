"""The Quart-Trio HTTP front: routes, envelopes and the wiring of error handlers."""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_schema import (
    RequestSchemaValidationError,
    document_request,
    operation_id,
    security_scheme,
    validate_querystring,
)
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from actors import FlashFlowError, InvalidInput, SaleStatus
from actors.errors import UnsupportedMediaType

from ..runtime import Runtime
from . import errors, validation
from .admin import ADMIN_SCHEME, install_admin
from .auth import Asking, Auth
from .cors import install_cors
from .demo import install_demo_payments
from .fast import EXTENSION, HotRoutes
from .holds import PAYMENTS_SCHEME, install_holds
from .line import install_line
from .metrics import install_metrics
from .openapi import (
    BAD_REQUEST,
    BAD_SALE_ID,
    BEARER,
    BEARER_SCHEME,
    FORBIDDEN,
    NOT_ADMITTED,
    NOT_ADMITTED_ONLY,
    NOT_FOUND,
    PURCHASE_CONFLICT,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNSUPPORTED,
    answers,
    install_schema,
    ok,
)
from .page import install_page
from .schema import (
    HealthEnvelope,
    PlaceEnvelope,
    PurchaseEnvelope,
    PurchaseRequest,
    PurchaseStatusEnvelope,
    ReadinessEnvelope,
    SaleEnvelope,
    SaleListEnvelope,
    SignedInPurchaseRequest,
    SignedInStatusQuery,
    StatusQuery,
    validation_message,
)
from .sse import install_sse
from .stock import sale_view
from .wire import (
    CURRENT,
    CURRENT_PURCHASE,
    DEMO_PAY,
    HEALTHZ,
    READYZ,
    SALE,
    SALE_PURCHASE,
    SALES,
    envelope,
    purchase_status_body,
    response,
    standing_body,
)


class InvalidJsonIs400Request(TrioRequest):
    """A request whose unparseable JSON body is a VALIDATION_ERROR, said plainly.

    The purchase route reads raw bytes; the admin routes' ``validate_request`` reads the body
    through ``get_json``, where bad JSON would otherwise be Quart's own 400 message and
    undecodable bytes a 500.
    """

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
    app.request_class = InvalidJsonIs400Request
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    signed_in = auth.verifier is not None
    install_schema(app, {**ADMIN_SCHEME, **PAYMENTS_SCHEME,
                         **(BEARER_SCHEME if signed_in else {})})
    # With a token key, a body or query may leave userId out: the token names the buyer.
    body_model = SignedInPurchaseRequest if signed_in else PurchaseRequest
    query_model = SignedInStatusQuery if signed_in else StatusQuery
    requires = security_scheme(BEARER) if signed_in else (lambda route: route)
    # Without a token key no request is refused for its credentials.
    signed_in_refusals = (UNAUTHORIZED, FORBIDDEN) if signed_in else ()
    # Filled in below, once the metrics' recorder exists; the routes run only after that.
    hot: HotRoutes

    @app.get(SALES)
    @answers(ok(200, SaleListEnvelope), UNAVAILABLE)
    async def list_sales() -> Response:
        now = runtime.clock()
        return envelope([await sale_view(runtime, sale, now)
                         for sale in runtime.catalog.recent(now)])

    # Each route below answers at /current and by id: one view, two rules; /current's
    # rule passes ``sale_id=None`` (the current sale), so the endpoint names stay as they were.
    current = {"defaults": {"sale_id": None}}

    @app.get(CURRENT, **current)
    @app.get(SALE)
    @operation_id("sale")
    @answers(ok(200, SaleEnvelope), BAD_SALE_ID, NOT_FOUND, UNAVAILABLE)
    async def get_current(sale_id: str | None) -> Response:
        return response(await hot.sale(sale_id))

    @app.post(CURRENT_PURCHASE, **current)
    @app.post(SALE_PURCHASE)
    @requires
    @document_request(body_model)
    @answers(ok(201, PurchaseEnvelope),
             ok(200, PurchaseEnvelope, "A sale with holds: the user holds a unit already; the "
                                       "same hold."),
             ok(202, PlaceEnvelope, "A sale with holds: every unit is held or confirmed, some "
                                    "not yet paid; the user's place in the waitlist."),
             BAD_REQUEST, *signed_in_refusals, NOT_ADMITTED if signed_in else NOT_ADMITTED_ONLY,
             NOT_FOUND, PURCHASE_CONFLICT, TOO_LARGE, UNSUPPORTED, RATE_LIMITED, UNAVAILABLE)
    async def purchase(sale_id: str | None) -> Response:
        return response(await hot.purchase(await request.get_data(cache=False),
                                           Asking.of(request), sale_id))

    @app.get(CURRENT_PURCHASE, **current)
    @app.get(SALE_PURCHASE)
    @requires
    @validate_querystring(query_model)
    @answers(ok(200, PurchaseStatusEnvelope), BAD_REQUEST, *signed_in_refusals, NOT_FOUND,
             RATE_LIMITED, UNAVAILABLE)
    async def purchase_status(sale_id: str | None,
                              query_args: StatusQuery | SignedInStatusQuery) -> Response:
        asking = Asking.of(request)
        sale, status = await runtime.serializer.standing(
            auth.identify(asking, query_args.userId), validation.sale_id(sale_id),
            address=auth.client_address(asking))
        return envelope(standing_body(status, sale) if sale.holds
                        else purchase_status_body(status.purchase, sale))

    @app.get(HEALTHZ)
    @answers(ok(200, HealthEnvelope))
    async def healthz() -> Response:
        return response(hot.health())

    @app.get(READYZ)
    @answers(ok(200, ReadinessEnvelope),
             ok(503, ReadinessEnvelope, "Not ready: a check failed (no Retry-After)."))
    async def readyz() -> Response:
        checks = await readiness(runtime)
        status = 200 if all(checks.values()) else 503
        return envelope({"ready": status == 200, "checks": checks}, status=status)

    @app.before_request
    async def require_json_bodies() -> None:
        # A form or text/plain POST needs no CORS preflight, so a cross-site page could
        # send one: only application/json (any charset) is read.
        has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
        if (request.method == "POST" and request.url_rule is not None and has_body
                and request.mimetype != "application/json"):
            raise UnsupportedMediaType()

    @app.errorhandler(FlashFlowError)
    async def on_flashflow_error(error: FlashFlowError) -> Response:
        return errors.for_error(error, settings.retry_after_s)

    @app.errorhandler(RequestSchemaValidationError)
    async def on_invalid_request(error: RequestSchemaValidationError) -> Response:
        return errors.for_error(InvalidInput(validation_message(error.validation_error)),
                                settings.retry_after_s)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        return errors.for_http(error)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        return errors.internal_error(error)

    recorder = install_metrics(app, runtime, auth.check_metrics)
    hot = HotRoutes(runtime, auth, body_model, recorder, vary_origin=bool(settings.cors_origins))
    # server.asgi_app puts the fast path in front of the app with these, unless it is off.
    app.extensions[EXTENSION] = hot
    install_cors(app, settings.cors_origins)
    install_sse(app, runtime)
    install_holds(app, runtime, auth, requires=requires, refusals=signed_in_refusals)
    install_line(app, runtime, auth, requires=requires, refusals=signed_in_refusals)
    install_admin(app, runtime)
    if settings.demo_payments:
        install_demo_payments(app, runtime)
    install_page(app, DEMO_PAY if settings.demo_payments else None)
    return app


async def readiness(runtime: Runtime) -> dict[str, bool]:
    """Whether Redis and PostgreSQL answer and the current sale's gate is loaded."""
    checks = {"redis": False, "postgres": False, "gate": False}
    try:
        checks["redis"] = await runtime.gate.store.ping()
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
            checks["gate"] = await runtime.gate.store.is_loaded(sale)
        except FlashFlowError:
            pass
    return checks
