"""The OpenAPI document is served, says what the validation enforces, and lists every answer."""

from __future__ import annotations

from dataclasses import replace

import schemathesis
import trio

from ..helpers import live_server, make_sale

CURRENT = "/api/v1/flash-sales/current"
BY_ID = "/api/v1/flash-sales/{sale_id}"
ADMIN = "/api/v1/admin/flash-sales"


async def _document(settings) -> dict:
    with trio.fail_after(30):
        async with live_server(settings) as server:
            return (await server.client.get("/openapi.json")).json()


def _statuses(doc: dict, path: str, method: str) -> set[int]:
    return {int(status) for status in doc["paths"][path][method]["responses"]}


async def test_openapi_document_describes_the_api(settings):
    """/openapi.json lists every route and the userId rules the server enforces."""
    await make_sale(settings.database_url)
    doc = await _document(settings)
    paths = doc["paths"]
    purchase = f"{CURRENT}/purchase"
    assert {CURRENT, purchase, "/healthz", "/readyz"} <= set(paths)
    assert {"get", "post"} <= set(paths[purchase])
    schema = paths[purchase]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    user_id = schema["properties"]["userId"]
    assert (user_id["minLength"], user_id["maxLength"]) == (3, 255)
    assert schema["required"] == ["userId"]
    assert "201" in paths[purchase]["post"]["responses"]


def _check_common(doc: dict, refusals: set[int]) -> None:
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI meta-schema
    paths = doc["paths"]
    for base in (CURRENT, BY_ID):
        assert _statuses(doc, f"{base}/purchase", "post") == (
            {201, 400, 404, 409, 413, 415, 429, 503} | refusals)
        assert _statuses(doc, f"{base}/purchase", "get") == (
            {200, 400, 404, 429, 503} | refusals)
        assert _statuses(doc, base, "get") == {200, 400, 404, 503}
        events = paths[f"{base}/events"]["get"]["responses"]
        assert set(events["200"]["content"]) == {"text/event-stream"}
        for status in ("429", "503"):
            header = paths[f"{base}/purchase"]["post"]["responses"][status]["headers"]
            assert header["Retry-After"]["schema"]["type"] == "integer"
        conflict = paths[f"{base}/purchase"]["post"]["responses"]["409"]["description"]
        assert all(code in conflict for code in ("SALE_NOT_ACTIVE", "SOLD_OUT", "ALREADY_PURCHASED"))
        error = paths[f"{base}/purchase"]["post"]["responses"]["409"]["content"]["application/json"]
        assert error["schema"]["title"] == "ErrorEnvelope"
    assert _statuses(doc, "/api/v1/flash-sales", "get") == {200, 503}
    assert {201, 400, 401, 404} <= _statuses(doc, ADMIN, "post")
    assert {200, 400, 401, 404, 409} <= _statuses(doc, f"{ADMIN}/{{sale_id}}", "patch")
    assert {200, 400, 401, 404, 409} <= _statuses(doc, f"{ADMIN}/{{sale_id}}/end", "post")
    assert not {"/", "/metrics", "/static/{name}", "/openapi.json"} & set(paths)
    for operations in paths.values():
        for operation in operations.values():
            assert operation["responses"], operation
            for response in operation["responses"].values():
                # Valid OpenAPI: a description, and content keyed by media types only.
                assert isinstance(response["description"], str)
                assert all("/" in media for media in response.get("content", {}))


async def test_openapi_lists_every_answer(settings):
    """Each route lists each status it can answer; internal routes are left out."""
    _check_common(await _document(settings), set())


async def test_openapi_lists_the_token_refusals_when_signed_in(settings):
    """With a token key the buyer routes also list 401 (with its challenge) and 403."""
    doc = await _document(replace(settings, auth_jwt_secret="openapi-secret-0123456789abcdef0123"))
    _check_common(doc, {401, 403})
    unauthorized = doc["paths"][f"{CURRENT}/purchase"]["post"]["responses"]["401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
