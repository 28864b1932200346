"""The operators' admin API: create a sale, change one not started yet, end one early.

A sale may be given a waiting room (``waitingRoom``) when it is created, or added or changed
by a PATCH while it has not started; its line (and the line's committed seed) is written with
the sale.

Every route is behind :func:`require_admin`, checked before the body is read. With no admin
token configured the API is off and answers as an unknown path does (404). Each change is
written by the ledger in one transaction, then this process's catalog is reloaded at once
and the change is announced on Redis, so every other process and host reloads its own at
once too (``FLASHFLOW_CATALOG_REFRESH_S`` is only the backstop for a lost notice).

Every action is logged at INFO (:mod:`flashflow.http.admin_log`): done, with the sale id and
each changed field old -> new, or refused, with its status and code; the line's correlation
id is the one the answer's ``X-Correlation-Id`` header carries.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Iterable

from quart import Blueprint, Request, Response, request
from quart_schema import security_scheme_blueprint, validate_request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from actors import BackendUnavailable, FlashFlowError, Sale, Unauthorized, WaitingRoom
from actors.errors import InvalidInput, SaleNotActive, SaleNotFound, SaleStarted, StockBelowSold

from ..runtime import Runtime
from ..settings import Settings
from ..tokens import TokenVerifier, load_verifier
from . import errors, validation
from .admin_log import log_done, log_refused
from .openapi import (
    TOO_LARGE,
    UNAVAILABLE,
    UNSUPPORTED,
    WWW_AUTHENTICATE,
    Bearer,
    answers,
    ok,
    refusal,
)
from .schema import SaleCreate, SaleEnvelope, SaleUpdate, WaitingRoomIn
from .stock import sale_view
from .wire import ADMIN_SALE, ADMIN_SALE_END, ADMIN_SALES, envelope

log = logging.getLogger(__name__)

#: The scope a buyer-style JWT must hold to use the admin API.
ADMIN_SCOPE = "flashflow:admin"
ADMIN_CHALLENGE = f'Bearer realm="flashflow-admin", scope="{ADMIN_SCOPE}"'
#: The admin API's OpenAPI security scheme.
ADMIN_SCHEME = {"admin": Bearer(scheme="bearer", description=(
    f"FLASHFLOW_ADMIN_TOKEN, or a JWT whose scope holds {ADMIN_SCOPE} (signed with the buyers' "
    "token key)."))}


def require_admin(request: Request, settings: Settings,
                  verifier: TokenVerifier | None = None, scopes: tuple[str, ...] = (ADMIN_SCOPE,),
                  challenge: str = ADMIN_CHALLENGE) -> None:
    """Let the request through only with the admin bearer token, or a JWT of ``scopes``
    (one of them is enough).

    The JWT is checked by the buyers' ``verifier`` (the auth settings' key, issuer and
    audience); ``FLASHFLOW_ADMIN_TOKEN`` is compared in constant time.

    Raises:
        NotFound: neither an admin token nor a token key is configured: the API is off.
        Unauthorized: the ``Authorization: Bearer`` token is missing, wrong, or a valid
            JWT without the admin scope.
    """
    expected = settings.admin_token
    if not expected and verifier is None:
        raise NotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        if expected and hmac.compare_digest(given.encode(), expected.encode()):
            return
        if verifier is not None and given.count(".") == 2:
            try:
                if any(verifier.has_scope(given, scope) for scope in scopes):
                    return
            except Unauthorized:
                pass
    raise Unauthorized("A valid admin bearer token is required.", challenge=challenge)


def room_of(given: WaitingRoomIn | None) -> WaitingRoom | None:
    """The waiting room an admin body asks for, or None when it names none."""
    if given is None:
        return None
    return WaitingRoom(opens_before_s=given.opensSecondsBefore,
                       admit_per_s=given.admitPerSecond, window_s=given.admissionSeconds)


BAD_BODY = refusal({InvalidInput: "the sale id or the body is not valid."},
                   name="AdminBadRequest")
ADMIN_UNAUTHORIZED = refusal({Unauthorized: f"no admin bearer token (or a JWT without the "
                                            f"{ADMIN_SCOPE} scope)."},
                             headers=WWW_AUTHENTICATE, name="AdminUnauthorized")
ADMIN_NOT_FOUND = refusal({NotFound: "the admin API is off: no admin token, no token key",
                           SaleNotFound: "an unknown sale"},
                          refused="Not found", name="AdminNotFound")
#: Every admin route's refusals before its own.
REFUSALS = (BAD_BODY, ADMIN_UNAUTHORIZED, ADMIN_NOT_FOUND, UNAVAILABLE)


def install_admin(app: QuartTrio, runtime: Runtime) -> None:
    """Add the admin routes to ``app``; they answer 404 unless an admin token or a token key
    is set."""
    admin = Blueprint("admin", __name__)
    security_scheme_blueprint(admin, [{name: []} for name in ADMIN_SCHEME])
    verifier = load_verifier(runtime.settings)

    @admin.before_request
    async def authorise() -> None:
        require_admin(request, runtime.settings, verifier)

    @admin.errorhandler(FlashFlowError)
    async def refused(error: FlashFlowError) -> Response:
        sent = errors.for_error(error, runtime.settings.retry_after_s)
        # The others (a 400, a 401, a 503) are logged at INFO or above by errors.report.
        if sent.status_code < 500 and sent.status_code not in errors.CLIENT_FAULTS:
            log_refused(request.endpoint, request.view_args, sent.status_code,
                        sent.error_code, sent.headers[errors.CORRELATION_HEADER])
        return sent

    async def answer(sale: Sale, before: Sale | None, changed: Iterable[str],
                     status: int = 200) -> Response:
        """The answer to a change written: ``before`` is the sale as the catalog last held it
        (None for a new one), ``changed`` the wire names of the fields the request set."""
        correlation_id = str(uuid.uuid4())
        log_done(request.endpoint, sale, before, changed, correlation_id)
        # This process serves the change at once, and tells the others to.
        await runtime.catalog.refresh()
        try:
            await runtime.gate.store.announce(sale.id)
        except BackendUnavailable:
            log.warning("could not announce a change to sale %s; other processes will see "
                        "it at their next refresh", sale.id)
        sent = envelope(await sale_view(runtime, sale, runtime.clock()),
                        status=status)
        sent.headers[errors.CORRELATION_HEADER] = correlation_id
        return sent

    @admin.post(ADMIN_SALES)
    @validate_request(SaleCreate)
    @answers(ok(201, SaleEnvelope, "The sale, created."), *REFUSALS, TOO_LARGE, UNSUPPORTED)
    async def create_sale(data: SaleCreate) -> Response:
        sale = await runtime.ledger.create_sale(data.productName, data.totalStock,
                                                data.startTime, data.endTime, data.holdSeconds,
                                                per_user_limit=data.perUserLimit or 1,
                                                waiting_room=room_of(data.waitingRoom))
        await runtime.gate.store.ensure_loaded(sale)
        return await answer(sale, None, data.model_dump(exclude_none=True), status=201)

    @admin.patch(ADMIN_SALE)
    @validate_request(SaleUpdate)
    @answers(ok(200, SaleEnvelope, "The sale, changed."), *REFUSALS, TOO_LARGE, UNSUPPORTED,
             refusal({SaleStarted: "it has started",
                      StockBelowSold: "totalStock under the units sold"},
                     refused="The sale cannot be changed"))
    async def update_sale(sale_id: str, data: SaleUpdate) -> Response:
        wanted = validation.sale_id(sale_id)
        before = runtime.catalog.get(wanted)
        sale = await runtime.ledger.update_sale(
            wanted, product_name=data.productName,
            total_stock=data.totalStock, start_time=data.startTime, end_time=data.endTime,
            hold_seconds=data.holdSeconds, per_user_limit=data.perUserLimit,
            waiting_room=room_of(data.waitingRoom))
        # A gate loaded with the old stock is set to the new one now, not at the next pass.
        await runtime.reconciler.reconcile(sale)
        return await answer(sale, before, data.model_dump(exclude_none=True))

    @admin.post(ADMIN_SALE_END)
    @answers(ok(200, SaleEnvelope, "The sale, ended."), *REFUSALS, TOO_LARGE, UNSUPPORTED,
             refusal({SaleNotActive: "the sale has not started yet (change its window "
                                     "instead)."}))
    async def end_sale(sale_id: str) -> Response:
        # The gate stays: the reconciler covers an ended sale for an hour.
        wanted = validation.sale_id(sale_id)
        before = runtime.catalog.get(wanted)
        return await answer(await runtime.ledger.end_sale(wanted), before, ("endTime",))

    app.register_blueprint(admin)


__all__ = ["ADMIN_SCHEME", "install_admin", "require_admin"]
