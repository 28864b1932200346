"""The OpenAPI document is served, valid and small, says what the validation enforces, and
lists every answer."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import trio
from openapi_spec_validator import validate

from flashflow.http.validation import REFUSED_CATEGORIES
from flashflow.http.wire import (
    ADMIN_SALE,
    ADMIN_SALE_END,
    ADMIN_SALES,
    CURRENT,
    CURRENT_EVENTS,
    CURRENT_PURCHASE,
    HEALTHZ,
    HOLD_CANCEL,
    HOLD_CONFIRM,
    METRICS,
    OPENAPI,
    READYZ,
    SALE,
    SALE_EVENTS,
    SALE_PURCHASE,
    SALES,
)

from ..helpers import live_server, make_sale

ERROR_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}
#: Small enough for a client generator or a fuzzer to read at once (it was 177 KB; the routes
#: of holds and the waitlist brought it to about 35 KB, the waiting room's to about 51 KB).
MAX_BYTES = 60_000


async def _served(settings) -> bytes:
    with trio.fail_after(30):
        async with live_server(settings) as server:
            return (await server.client.get(OPENAPI)).content


def documented(pattern: str) -> str:
    """A route pattern as the OpenAPI document writes it: ``{sale_id}`` for ``<sale_id>``."""
    return pattern.replace("<", "{").replace(">", "}")


def _statuses(doc: dict, path: str, method: str) -> set[int]:
    return {int(status) for status in doc["paths"][path][method]["responses"]}


def _resolved(doc: dict, item: dict) -> dict:
    """``item``, or what its ``$ref`` names in ``doc``."""
    while "$ref" in item:
        target: dict = doc
        for part in item["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        item = target
    return item


def _response(doc: dict, path: str, method: str, status: int) -> dict:
    return _resolved(doc, doc["paths"][path][method]["responses"][str(status)])


async def test_openapi_document_describes_the_api(settings):
    """/openapi.json lists every route and the userId rules the server enforces: a short
    pattern, and the whole rule in words."""
    await make_sale(settings.database_url)
    doc = json.loads(await _served(settings))
    paths = doc["paths"]
    purchase = CURRENT_PURCHASE
    assert {CURRENT, purchase, HEALTHZ, READYZ} <= set(paths)
    assert {"get", "post"} <= set(paths[purchase])
    schema = paths[purchase]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = _resolved(doc, schema)
    user_id = schema["properties"]["userId"]
    assert (user_id["minLength"], user_id["maxLength"]) == (3, 255)
    assert len(user_id["pattern"]) < 1000
    assert all(category in user_id["description"] for category in REFUSED_CATEGORIES)
    assert schema["required"] == ["userId"]
    assert "201" in paths[purchase]["post"]["responses"]


def _check_common(raw: bytes, refusals: set[int]) -> dict:
    assert len(raw) < MAX_BYTES, len(raw)
    doc = json.loads(raw)
    validate(doc)  # openapi-spec-validator: the OpenAPI 3.1 schema and its own rules
    paths = doc["paths"]
    operations = [(path, method, operation) for path, methods in paths.items()
                  for method, operation in methods.items()]
    repeated = Counter(operation["operationId"] for _, _, operation in operations)
    assert max(repeated.values()) == 1, repeated
    for sale, purchase, events in ((CURRENT, CURRENT_PURCHASE, CURRENT_EVENTS),
                                   (SALE, SALE_PURCHASE, SALE_EVENTS)):
        sale, purchase, events = documented(sale), documented(purchase), documented(events)
        assert _statuses(doc, purchase, "post") == (
            {200, 201, 202, 400, 403, 404, 409, 413, 415, 429, 500, 503} | refusals)
        assert _statuses(doc, purchase, "delete") == (
            {200, 400, 404, 405, 409, 429, 500, 503} | refusals)
        own = paths[documented(f"{purchase}/events")]["get"]["responses"]
        assert set(own["200"]["content"]) == {"text/event-stream"}
        assert _statuses(doc, purchase, "get") == (
            {200, 400, 404, 429, 500, 503} | refusals)
        assert _statuses(doc, sale, "get") == {200, 400, 404, 500, 503}
        streamed = paths[events]["get"]["responses"]
        assert set(streamed["200"]["content"]) == {"text/event-stream"}
        for status in (429, 503):
            header = _response(doc, purchase, "post", status)["headers"]
            assert header["Retry-After"]["schema"]["type"] == "integer"
        conflict = _response(doc, purchase, "post", 409)
        assert all(code in conflict["description"]
                   for code in ("SALE_NOT_ACTIVE", "SOLD_OUT", "ALREADY_PURCHASED"))
    assert _statuses(doc, SALES, "get") == {200, 500, 503}
    assert {201, 400, 401, 404} <= _statuses(doc, ADMIN_SALES, "post")
    assert {200, 400, 401, 404, 409} <= _statuses(doc, documented(ADMIN_SALE), "patch")
    assert {200, 400, 401, 404, 409} <= _statuses(doc, documented(ADMIN_SALE_END), "post")
    for step in (HOLD_CONFIRM, HOLD_CANCEL):
        assert _statuses(doc, documented(step), "post") == {200, 400, 401, 404, 409, 500, 503}
        assert paths[documented(step)]["post"]["security"] == [{"payments": []}]
    assert not {"/", METRICS, "/static/{name}", OPENAPI} & set(paths)
    # The error envelope is one schema, which every error answer names by $ref.
    assert doc["components"]["schemas"]["ErrorEnvelope"]["title"] == "ErrorEnvelope"
    assert json.dumps(doc).count('"title": "ErrorEnvelope"') == 1
    admin = doc["components"]["securitySchemes"]["admin"]
    assert (admin["type"], admin["scheme"]) == ("http", "bearer")
    for path, method, operation in operations:
        assert operation["responses"], operation
        if path.startswith(ADMIN_SALES):
            assert operation["security"] == [{"admin": []}], (path, method)
        internal = _response(doc, path, method, 500)
        assert internal["description"].startswith("INTERNAL_ERROR"), (path, method)
        for status in operation["responses"]:
            response = _response(doc, path, method, int(status))
            # Valid OpenAPI: a description, and content keyed by media types only.
            assert isinstance(response["description"], str)
            assert all("/" in media for media in response.get("content", {}))
            if int(status) >= 400 and (path, status) != (READYZ, "503"):
                assert response["content"]["application/json"]["schema"] == ERROR_ENVELOPE
    return doc


async def test_openapi_lists_every_answer(settings):
    """Each route lists each status it can answer, 500 included; internal routes are left
    out; the admin routes name their bearer scheme."""
    _check_common(await _served(settings), set())


async def test_openapi_lists_the_token_refusals_when_signed_in(settings):
    """With a token key the buyer routes also list 401 (with its challenge) and 403, and name
    the buyers' bearer scheme."""
    doc = _check_common(
        await _served(replace(settings, auth_jwt_secret="openapi-secret-0123456789abcdef0123")),
        {401, 403})
    unauthorized = _response(doc, CURRENT_PURCHASE, "post", 401)
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert doc["paths"][CURRENT_PURCHASE]["post"]["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_the_document_says_quantities(settings):
    """The purchase body takes an optional integer quantity (default 1, up to the sale's
    perUserLimit); the admin bodies take perUserLimit (1 to 100), which the sale may send; a
    purchase may send its quantity; INSUFFICIENT_STOCK is among the 409s, and an error may
    carry details with the remainingStock."""
    await make_sale(settings.database_url)
    doc = json.loads(await _served(settings))
    schemas = doc["components"]["schemas"]

    def body_of(path: str, method: str) -> dict:
        content = doc["paths"][path][method]["requestBody"]["content"]
        return _resolved(doc, content["application/json"]["schema"])

    asked = body_of(CURRENT_PURCHASE, "post")
    quantity = asked["properties"]["quantity"]
    assert (quantity["type"], quantity["minimum"], quantity["default"]) == ("integer", 1, 1)
    assert "perUserLimit" in quantity["description"]
    assert asked["required"] == ["userId"]
    for path, method in ((ADMIN_SALES, "post"), (documented(ADMIN_SALE), "patch")):
        limit = body_of(path, method)["properties"]["perUserLimit"]
        [integer] = [v for v in limit.get("anyOf", [limit]) if v["type"] == "integer"]
        assert (integer["minimum"], integer["maximum"]) == (1, 100), (path, limit)
    for name, field in (("SaleOut", "perUserLimit"), ("PurchaseOut", "quantity"),
                        ("PlaceOut", "quantity")):
        assert field in schemas[name]["properties"], name
        assert field not in schemas[name]["required"], name
    assert "INSUFFICIENT_STOCK" in _response(doc, CURRENT_PURCHASE, "post", 409)["description"]
    detail = schemas["ErrorDetail"]
    assert "details" in detail["properties"] and "details" not in detail["required"]
    data = _resolved(doc, detail["properties"]["details"])
    assert data["properties"]["remainingStock"]["type"] == "integer"
