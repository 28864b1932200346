"""The OpenAPI document: what each route answers, its security schemes, and the document
quart-schema builds from the routes, made valid and small.

A route lists its answers with :func:`answers`; every route also answers :data:`INTERNAL`.
An error answer is documented by :func:`refusal` from the errors behind it, so its status,
codes and ``Retry-After`` are the error table's.
Bodies are :mod:`flashflow.http.schema`'s models, each listed once under
``components/schemas``; an answer several routes give is listed once under
``components/responses``. Both are named by ``$ref``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from quart_schema import OpenAPIProvider, QuartSchema
from quart_schema.openapi import HttpSecurityScheme
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from actors.errors import (
    AlreadyPurchased,
    Forbidden,
    InsufficientStock,
    InvalidInput,
    NotAdmitted,
    Overloaded,
    RateLimited,
    SaleNotActive,
    SaleNotFound,
    SoldOut,
    Unauthorized,
    UnsupportedMediaType,
)

from .errors import INTERNAL_ERROR, entry_of
from .schema import ErrorEnvelope
from .wire import OPENAPI


@dataclass
class Bearer(HttpSecurityScheme):
    """An HTTP bearer security scheme that says in words which token it takes."""

    description: str | None = None


#: The OpenAPI security scheme of the buyers' bearer token, and a route's requirement of it.
BEARER_SCHEME = {"bearer": Bearer(scheme="bearer", bearer_format="JWT",
                                  description="A buyer's JWT: its sub is the userId.")}
BEARER = [{"bearer": []}]


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
class DocumentedAnswer:
    """One response a route can give, as the OpenAPI document lists it.

    ``model`` is the JSON body's model; ``None`` with ``media_type`` set documents a body of
    that media type as a string (the event stream). An answer with a ``name`` is listed once,
    under ``components/responses``, and each route that gives it refers to it there.
    """

    status: int
    description: str
    model: type[BaseModel] | None = ErrorEnvelope
    media_type: str = "application/json"
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str | None = None


def ok(status: int, model: type[BaseModel], description: str | None = None
       ) -> DocumentedAnswer:
    """A success answer; its description is the model's docstring unless given."""
    return DocumentedAnswer(status, description or (model.__doc__ or "").strip(), model)


def refusal(causes: Mapping[type[Exception], str], *, refused: str = "",
            headers: dict[str, dict[str, Any]] | None = None,
            name: str | None = None) -> DocumentedAnswer:
    """An error answer, its status and codes as :mod:`errors` maps its ``causes``.

    Each cause is an error class with why it is raised ("" to say nothing more); the
    description names each wire code once. With several codes it opens with ``refused``. The
    answer says ``Retry-After`` where the error table sends it.

    Raises:
        ValueError: the causes are answered with different statuses.
    """
    whys: dict[str, str] = {}
    statuses, retry = set(), False
    for cause, why in causes.items():
        status, code, retried = entry_of(cause)
        statuses.add(status)
        retry |= retried
        whys.setdefault(code, why)
    if len(statuses) != 1:
        raise ValueError(f"causes answered with several statuses: {sorted(statuses)}")
    if len(whys) == 1:
        [(code, why)] = whys.items()
        description = f"{code}: {why}"
    else:
        said = [f"{code} ({why})" if why else code for code, why in whys.items()]
        description = (f"{refused}; error.code says why: {', '.join(said[:-1])}, or "
                       f"{said[-1]}.")
    return DocumentedAnswer(statuses.pop(), description,
                            headers={**(RETRY_AFTER if retry else {}), **(headers or {})},
                            name=name)


BAD_REQUEST = refusal({InvalidInput: "the sale id, the query string or the body is not valid."},
                      name="BadRequest")
BAD_SALE_ID = refusal({InvalidInput: "the sale id is not valid."}, name="BadSaleId")
UNAUTHORIZED = refusal({Unauthorized: "no single valid bearer token."},
                       headers=WWW_AUTHENTICATE, name="Unauthorized")
FORBIDDEN = refusal({Forbidden: "userId names another user than the token's subject."},
                    name="Forbidden")
_NOT_ADMITTED_WHY = ("a sale with a waiting room, and no valid admissionToken of this buyer; "
                     "error.details gives their position and the tickets ahead")
NOT_ADMITTED = refusal({Forbidden: "userId names another user than the token's subject",
                        NotAdmitted: _NOT_ADMITTED_WHY},
                       refused="Forbidden", name="PurchaseForbidden")
NOT_ADMITTED_ONLY = refusal({NotAdmitted: _NOT_ADMITTED_WHY}, name="NotAdmitted")
NOT_FOUND = refusal({SaleNotFound: "no such sale (or, for /current, no current sale)."},
                    name="SaleNotFound")
PURCHASE_CONFLICT = refusal({SaleNotActive: "not started yet, or ended", SoldOut: "",
                             InsufficientStock: "fewer units than the quantity asked can "
                                                "still be sold; error.details.remainingStock "
                                                "says how many",
                             AlreadyPurchased: "this user already holds one"},
                            refused="The purchase is refused", name="PurchaseRefused")
TOO_LARGE = refusal({RequestEntityTooLarge: "the body is over the size limit."},
                    name="PayloadTooLarge")
UNSUPPORTED = refusal({UnsupportedMediaType: "a body that is not application/json."},
                      name="UnsupportedMediaType")
RATE_LIMITED = refusal({RateLimited: "this user or client address is over its rate; retry "
                                     "after Retry-After seconds."}, name="RateLimited")
UNAVAILABLE = refusal({Overloaded: "overloaded, shutting down, or a backend (Redis, "
                                   "PostgreSQL) does not answer; retry after Retry-After "
                                   "seconds."}, name="Unavailable")
#: Every route's last answer.
INTERNAL = DocumentedAnswer(500, f"{INTERNAL_ERROR}: something unexpected failed (no stack "
                                 "trace leaves the server).", name="InternalError")

T = TypeVar("T", bound=Callable[..., Any])


def answers(*items: DocumentedAnswer) -> Callable[[T], T]:
    """Document the responses a route gives (each status once)."""
    def decorator(func: T) -> T:
        listed = dict(getattr(func, ANSWERS_ATTRIBUTE, {}))
        listed.update({item.status: item for item in items})
        setattr(func, ANSWERS_ATTRIBUTE, listed)
        return func
    return decorator


class Document(OpenAPIProvider):
    """quart-schema's document, with each route's :func:`answers` (and :data:`INTERNAL`):
    per-status descriptions, response headers where OpenAPI puts them, non-JSON media types;
    each body's model once, under ``components/schemas``, and each named answer once, under
    ``components/responses``, both by ``$ref``.

    A view that answers at ``/current`` and by id has one operation id per rule: the by-id
    one ends in ``_by_id``.
    """

    def schema(self) -> dict[str, Any]:
        self._responses: dict[str, dict[str, Any]] = {}
        document = super().schema()
        document["components"]["responses"] = dict(sorted(self._responses.items()))
        return document

    def build_paths(self, rule: Any) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        listed: dict[int, DocumentedAnswer] = getattr(self._app.view_functions[rule.endpoint],
                                            ANSWERS_ATTRIBUTE, {})
        responses = {status: self._response(item, components)
                     for status, item in sorted({INTERNAL.status: INTERNAL, **listed}.items())}
        by_id = not rule.defaults and any(
            other.defaults for other in self._app.url_map.iter_rules(rule.endpoint))
        for operations in paths.values():
            for operation in operations.values():
                operation["responses"] = {**operation["responses"], **responses}
                if by_id:
                    operation["operationId"] += "_by_id"
        return paths, components

    def _response(self, item: DocumentedAnswer, components: dict[str, Any]) -> dict[str, Any]:
        """The response object of an answer, or a reference to it if it has a name."""
        response: dict[str, Any] = {
            "description": item.description,
            "content": {item.media_type: {"schema": self._body(item.model, components)}},
        }
        if item.headers:
            response["headers"] = dict(item.headers)
        if item.name is None:
            return response
        if self._responses.setdefault(item.name, response) != response:
            raise ValueError(f"Two different answers are named {item.name}.")
        return {"$ref": f"#/components/responses/{item.name}"}

    def _body(self, model: type[BaseModel] | None, components: dict[str, Any]
              ) -> dict[str, Any]:
        """A body's schema: a reference to its model, added to ``components``; a string when
        there is no model."""
        if model is None:
            return {"type": "string"}
        response, definitions = self.build_response_object(model, None)
        components.update(definitions)
        components[model.__name__] = response["content"]["application/json"]["schema"]
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def install_schema(app: QuartTrio, schemes: dict[str, HttpSecurityScheme]) -> None:
    """Serve the OpenAPI document at ``/openapi.json`` (no UI pages: they load from CDNs),
    with the security ``schemes`` the routes name."""
    QuartSchema(
        app,
        openapi_path=OPENAPI,
        info={"title": "Flash Flow", "version": "1"},
        swagger_ui_path=None, redoc_ui_path=None, scalar_ui_path=None,
        security_schemes=schemes,
        openapi_provider_class=Document,
    )
