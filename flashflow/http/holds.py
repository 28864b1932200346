"""The routes of a sale with holds: the payment step, a buyer's cancel, a buyer's own stream.

- ``POST .../purchases/{purchaseId}/confirm`` and ``.../cancel``: the shop's payment step,
  with the admin token or a JWT whose ``scope`` holds ``flashflow:payments``. A confirm
  answers the purchase, confirmed (the same ``200`` when sent again); a confirm that comes
  after the hold's end, by PostgreSQL's clock at commit, is ``409 HOLD_EXPIRED``.
- ``DELETE .../purchase``: the buyer cancels their own hold (named as the status read names
  them); the unit goes back at once, to the first in the waitlist. A buyer waiting in line
  leaves it (``{"purchased": false}``), and the places behind move up.
- ``GET .../purchase/events``: the buyer's standing, live: a ``standing`` event (the body of
  the status read) each time it changes, then a last one when it is final (confirmed, or
  the waitlist closed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from itertools import count
from typing import TypeVar

from quart import Response, make_response, request
from quart_schema import security_scheme, validate_querystring
from quart_trio import QuartTrio
from werkzeug.exceptions import MethodNotAllowed

from actors import BuyerStatus, Standing, Unauthorized
from actors.errors import HoldCancelled, HoldConfirmed, HoldExpired, PurchaseNotFound

from ..runtime import Runtime
from . import validation
from .admin import ADMIN_SCOPE, require_admin
from .auth import Asking, Auth
from .openapi import (
    BAD_REQUEST,
    EVENT_STREAM,
    NOT_FOUND,
    RATE_LIMITED,
    UNAVAILABLE,
    WWW_AUTHENTICATE,
    Bearer,
    DocumentedAnswer,
    answers,
    ok,
    refusal,
)
from .schema import PurchaseEnvelope, PurchaseStatusEnvelope, SignedInStatusQuery, StatusQuery
from .sse import HEADERS, HEARTBEAT, first_event_id, frame
from .wire import (
    CURRENT_PURCHASE,
    CURRENT_PURCHASE_EVENTS,
    HOLD_CANCEL,
    HOLD_CONFIRM,
    SALE_PURCHASE,
    SALE_PURCHASE_EVENTS,
    envelope,
    purchase_body,
    standing_body,
)

T = TypeVar("T")

#: The scope a JWT must hold to confirm or cancel holds (the admin token may too).
PAYMENTS_SCOPE = "flashflow:payments"
PAYMENTS_CHALLENGE = f'Bearer realm="flashflow-payments", scope="{PAYMENTS_SCOPE}"'
PAYMENTS_SCHEME = {"payments": Bearer(scheme="bearer", description=(
    f"FLASHFLOW_ADMIN_TOKEN, or a JWT whose scope holds {PAYMENTS_SCOPE} (signed with the "
    "buyers' token key)."))}
#: What a purchase path of a sale without holds takes (its 405 names them, as before).
PLAIN_PURCHASE_METHODS = ("GET", "HEAD", "POST")
#: Standings after which a buyer's stream has nothing more to say.
FINAL = frozenset({Standing.CONFIRMED, Standing.CLOSED})

HOLD_REFUSED = refusal({HoldExpired: "the hold reached its end unpaid",
                        HoldCancelled: "the hold was cancelled",
                        HoldConfirmed: "the purchase is confirmed (cannot be cancelled)"},
                       refused="The hold has ended", name="HoldEnded")
NO_PURCHASE = refusal({PurchaseNotFound: "no such purchase in this sale (for this user)"},
                      refused="Not found", name="PurchaseNotFound")
NOTHING_TO_CANCEL = refusal(
    {MethodNotAllowed: "a sale without holds has no hold to cancel (Allow names the methods "
                       "its purchase path takes)."}, name="NothingToCancel")
PAYMENTS_UNAUTHORIZED = refusal(
    {Unauthorized: f"no admin token, nor a JWT with the {PAYMENTS_SCOPE} scope."},
    headers=WWW_AUTHENTICATE, name="PaymentsUnauthorized")


def install_holds(app: QuartTrio, runtime: Runtime, auth: Auth, *,
                  requires: Callable[[T], T], refusals: tuple[DocumentedAnswer, ...],
                  heartbeat_s: float = 15.0, retry_ms: int = 3000) -> None:
    """Add the payment step's routes, the buyer's cancel and the buyer's stream to ``app``.

    ``requires`` marks a buyer's route with the buyers' security scheme (when tokens are on),
    and ``refusals`` are the refusals tokens add to a buyer's route.
    """
    holds = runtime.holds
    query_model = SignedInStatusQuery if auth.verifier is not None else StatusQuery

    def payments() -> None:
        require_admin(request, runtime.settings, auth.verifier,
                      scopes=(PAYMENTS_SCOPE, ADMIN_SCOPE), challenge=PAYMENTS_CHALLENGE)

    @app.post(HOLD_CONFIRM)
    @security_scheme([{name: []} for name in PAYMENTS_SCHEME])
    @answers(ok(200, PurchaseEnvelope, "The purchase, confirmed."), BAD_REQUEST,
             PAYMENTS_UNAUTHORIZED, NO_PURCHASE, HOLD_REFUSED, UNAVAILABLE)
    async def confirm_hold(sale_id: str, purchase_id: str) -> Response:
        payments()
        sale = runtime.serializer.sale(validation.sale_id(sale_id))
        purchase = await holds.confirm(sale.id, validation.purchase_id(purchase_id))
        return envelope(purchase_body(purchase, sale))

    @app.post(HOLD_CANCEL)
    @security_scheme([{name: []} for name in PAYMENTS_SCHEME])
    @answers(ok(200, PurchaseStatusEnvelope, "The hold, cancelled."), BAD_REQUEST,
             PAYMENTS_UNAUTHORIZED, NO_PURCHASE, HOLD_REFUSED, UNAVAILABLE)
    async def cancel_hold(sale_id: str, purchase_id: str) -> Response:
        payments()
        sale = runtime.serializer.sale(validation.sale_id(sale_id))
        await holds.cancel(sale.id, validation.purchase_id(purchase_id))
        return envelope(standing_body(BuyerStatus(Standing.CANCELLED), sale))

    @app.delete(CURRENT_PURCHASE, defaults={"sale_id": None})
    @app.delete(SALE_PURCHASE)
    @requires
    @validate_querystring(query_model)
    @answers(ok(200, PurchaseStatusEnvelope, "The buyer's hold, cancelled."), BAD_REQUEST,
             *refusals, NOT_FOUND, NOTHING_TO_CANCEL, NO_PURCHASE, HOLD_REFUSED, RATE_LIMITED,
             UNAVAILABLE)
    async def cancel_own_hold(sale_id: str | None,
                              query_args: StatusQuery | SignedInStatusQuery) -> Response:
        asking = Asking.of(request)
        user = auth.identify(asking, query_args.userId)
        wanted = validation.sale_id(sale_id)
        if not runtime.serializer.sale(wanted).holds:
            # A sale without holds has nothing to cancel: the path answers as it always did.
            raise MethodNotAllowed(valid_methods=PLAIN_PURCHASE_METHODS)
        sale, status = await runtime.serializer.standing(
            user, wanted, address=auth.client_address(asking))
        if status.standing is Standing.WAITLISTED and await holds.leave(sale.id, user):
            return envelope(standing_body(BuyerStatus(None), sale))
        if status.purchase is None:
            raise PurchaseNotFound("You hold no unit of this sale, nor a place in its line.")
        await holds.cancel(sale.id, status.purchase.id, user)
        return envelope(standing_body(BuyerStatus(Standing.CANCELLED), sale))

    @app.get(CURRENT_PURCHASE_EVENTS, defaults={"sale_id": None})
    @app.get(SALE_PURCHASE_EVENTS)
    @requires
    @validate_querystring(query_model)
    @answers(DocumentedAnswer(200, "The buyer's standing, live: a standing event (the status "
                                   "read's body) at each change, and heartbeat comments.",
                              model=None, media_type=EVENT_STREAM),
             BAD_REQUEST, *refusals, NOT_FOUND, UNAVAILABLE)
    async def buyer_events(sale_id: str | None,
                           query_args: StatusQuery | SignedInStatusQuery) -> Response:
        user = auth.identify(Asking.of(request), query_args.userId)
        sale = runtime.serializer.sale(validation.sale_id(sale_id))
        ids = count(first_event_id(request.headers.get("Last-Event-ID")))

        async def frames() -> AsyncIterator[bytes]:
            async with holds.watch(sale.id, user) as handle:
                seen: BuyerStatus | None = None
                retry: int | None = retry_ms
                while True:
                    status = await handle.next(seen, heartbeat_s)
                    if status is None or status == seen:
                        yield HEARTBEAT
                        continue
                    seen = status
                    yield frame("standing", standing_body(status, sale), next(ids), retry_ms=retry)
                    retry = None
                    if status.standing in FINAL:
                        return

        response = await make_response(frames(), 200, HEADERS)
        response.timeout = None
        return response


__all__ = ["PAYMENTS_SCHEME", "PAYMENTS_SCOPE", "install_holds"]
