"""The hot routes' answers, and a thin ASGI front that sends them without Quart's machinery.

:class:`HotRoutes` answers ``GET /healthz``, ``GET`` a sale (``/current`` or by id) and
``POST`` a purchase (``/current/purchase`` or by id) as :class:`wire.Answer` values: Quart's
routes send them as responses, and :func:`fast_path` sends them as two ASGI messages, the
way a bare ASGI app does. The fast path answers only requests it can answer exactly as
Quart would; anything else (another method or path, a body that is chunked, too large or not
JSON, a request with an ``Origin`` while CORS is on, ...) goes to the Quart app unchanged.
Its answers are counted by the same recorder under the same route rules.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from actors import FlashFlowError, InvalidInput, Sale
from actors.errors import StandingHold, Waitlisted

from ..runtime import Runtime
from . import errors, validation
from .auth import Asking, Auth
from .line import not_admitted
from .metrics import RequestMetrics, purchase_outcome
from .schema import PurchaseRequest, SignedInPurchaseRequest, validation_message
from .stock import sale_view
from .wire import (
    CURRENT,
    CURRENT_PURCHASE,
    HEALTHZ,
    JSON,
    SALE,
    SALE_PURCHASE,
    Answer,
    answer,
    place_body,
    purchase_body,
    sale_id_in,
)

__all__ = ["EXTENSION", "HotRoutes", "fast_path", "route_of", "takes"]

#: The key of ``app.extensions`` under which ``create_app`` leaves its :class:`HotRoutes`.
EXTENSION = "flashflow.hot_routes"

ASGIApp = Callable[[dict, Any, Any], Awaitable[None]]

_HEALTHY = answer({"status": "ok"})


@dataclass(frozen=True, slots=True)
class HotRoutes:
    """What the hot routes need, and their answers; built once by ``create_app``."""

    runtime: Runtime
    auth: Auth
    body_model: type[PurchaseRequest | SignedInPurchaseRequest]
    recorder: RequestMetrics
    #: Whether CORS is on: every answer then says ``Vary: Origin``.
    vary_origin: bool

    def health(self) -> Answer:
        """``GET /healthz``."""
        return _HEALTHY

    async def sale(self, raw_id: str | None) -> Answer:
        """``GET`` a sale: ``raw_id`` is the path's id, None for the current sale."""
        runtime = self.runtime
        now = runtime.clock()
        try:
            sale = runtime.serializer.sale(validation.sale_id(raw_id))
            return answer(await sale_view(runtime, sale, now))
        except FlashFlowError as exc:
            return errors.answer_for(exc, runtime.settings.retry_after_s)

    async def purchase(self, raw: bytes, asking: Asking, raw_id: str | None) -> Answer:
        """``POST`` a purchase of the raw JSON body ``raw`` (``raw_id`` as for :meth:`sale`).

        The hot path of a stampede: the model validates the raw bytes in one pass, and
        expected refusals are answers, not exceptions raised through a framework. A 201
        counts its units in the metrics.
        """
        retry_after_s = self.runtime.settings.retry_after_s
        try:
            body = self.body_model.model_validate_json(raw)
        except ValidationError as exc:
            return errors.answer_for(self._refused(exc, raw_id), retry_after_s)
        auth = self.auth
        runtime = self.runtime
        try:
            buyer = auth.identify(asking, body.userId)
            wanted = validation.sale_id(raw_id)
            lined = runtime.serializer.sale(wanted)
            if lined.waiting_room is not None and not runtime.admissions.admits(
                    body.admissionToken, lined.id, buyer):
                raise await not_admitted(runtime, lined, buyer)
            bought, sale = await runtime.serializer.buy(buyer, auth.client_address(asking),
                                                        wanted, body.quantity)
        except StandingHold as standing:
            # Pressed again while holding: the same hold, and no second 201.
            held = standing.purchase
            return answer(purchase_body(held, self._sale_of(held.sale_id)), status=200)
        except Waitlisted as waiting:
            return answer(place_body(waiting.place, self._sale_of(waiting.place.sale_id)),
                          status=202)
        except FlashFlowError as exc:
            return errors.answer_for(exc, retry_after_s)
        self.recorder.units(bought.quantity)
        return answer(purchase_body(bought, sale), status=201)

    def _refused(self, problem: ValidationError, raw_id: str | None) -> FlashFlowError:
        """The refusal of a body the model refused. A quantity that is not an integer within
        bounds is refused as the serializer refuses one over the limit, naming the sale's
        limit, so its first problem is answered from the sale (or that it has none)."""
        found = problem.errors()
        if not found or found[0].get("loc", ())[:1] != ("quantity",):
            return InvalidInput(validation_message(problem))
        try:
            return InvalidInput.over_limit(
                self.runtime.serializer.sale(validation.sale_id(raw_id)).per_user_limit)
        except FlashFlowError as exc:
            return exc

    def _sale_of(self, sale_id: uuid.UUID) -> Sale:
        """The sale a press was for (the serializer found it: it exists)."""
        return self.runtime.serializer.sale(sale_id)


@dataclass(frozen=True, slots=True)
class _Route:
    """A request the fast path takes: its route rule, and the sale id of its path."""

    rule: str
    sale_id: str | None
    purchase: bool


_HEALTH_ROUTE = _Route(HEALTHZ, None, purchase=False)
_CURRENT_ROUTE = _Route(CURRENT, None, purchase=False)
_CURRENT_PURCHASE_ROUTE = _Route(CURRENT_PURCHASE, None, purchase=True)
_JSON = JSON.encode()


def route_of(method: str, path: str) -> _Route | None:
    """The hot route of ``method`` and ``path`` as werkzeug would match it, else None."""
    if method == "GET":
        if path == HEALTHZ:
            return _HEALTH_ROUTE
        if path == CURRENT:
            return _CURRENT_ROUTE
        sale_id = sale_id_in(SALE, path)
        return None if sale_id is None else _Route(SALE, sale_id, purchase=False)
    if method == "POST":
        if path == CURRENT_PURCHASE:
            return _CURRENT_PURCHASE_ROUTE
        sale_id = sale_id_in(SALE_PURCHASE, path)
        return None if sale_id is None else _Route(SALE_PURCHASE, sale_id, purchase=True)
    return None


def takes(headers: list[tuple[bytes, bytes]], purchase: bool, max_body_bytes: int,
          cors: bool) -> bool:
    """Whether the fast path answers a hot route's request with these headers exactly as
    Quart would: a purchase's body must be JSON of a known length within the limit (Quart
    answers the others: 415, 413, a missing body), a GET has no body (Quart drains it), and
    an ``Origin`` is Quart's to answer while CORS is on."""
    length = mimetype = None
    for name, value in headers:
        if name == b"content-length":
            length = int(value) if length is None else -1
        elif name == b"content-type":
            mimetype = value.partition(b";")[0].strip().lower() if mimetype is None else b""
        elif name == b"transfer-encoding" or (name == b"origin" and cors):
            return False
    if purchase:
        return length is not None and 0 <= length <= max_body_bytes and mimetype == _JSON
    return not length


def fast_path(app: ASGIApp, hot: HotRoutes, max_body_bytes: int) -> ASGIApp:
    """Wrap ``app`` (the Quart app as served) so the hot routes are answered in front of it."""
    base_headers = [(b"content-type", _JSON)]
    after = [(b"vary", b"Origin")] if hot.vary_origin else []
    recorder = hot.recorder

    async def front(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await app(scope, receive, send)
            return
        method = scope["method"]
        route = route_of(method, scope["path"])
        if route is None or not takes(scope["headers"], route.purchase, max_body_bytes,
                                      hot.vary_origin):
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            if route.purchase:
                raw = await read_body(receive)
                if raw is None:
                    return  # the client went away before its body arrived
                sent = await hot.purchase(raw, Asking.from_asgi(scope.get("client"),
                                                                scope["headers"]),
                                          route.sale_id)
            elif route is _HEALTH_ROUTE:
                sent = hot.health()
            else:
                sent = await hot.sale(route.sale_id)
        except Exception as exc:  # noqa: BLE001 - internal_answer logs it, with its traceback
            sent = errors.internal_answer(exc)
        recorder.observe(route.rule, method, sent.status, time.perf_counter() - started,
                         sent.error_code)
        if route.purchase:
            recorder.purchase(purchase_outcome(sent.status, sent.error_code))
        headers = [(name.lower().encode(), value.encode()) for name, value in sent.headers]
        headers += base_headers
        headers.append((b"content-length", str(len(sent.body)).encode()))
        headers += after
        await send({"type": "http.response.start", "status": sent.status, "headers": headers})
        await send({"type": "http.response.body", "body": sent.body})

    return front


async def read_body(receive: Any) -> bytes | None:
    """The whole request body, or None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)

