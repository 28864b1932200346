"""The OpenAPI document is served and says what the validation enforces."""

from __future__ import annotations

import trio

from ..helpers import live_server, make_sale


async def test_openapi_document_describes_the_api(settings):
    """/openapi.json lists every route and the userId rules the server enforces."""
    await make_sale(settings.database_url)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            doc = (await server.client.get("/openapi.json")).json()
    paths = doc["paths"]
    purchase = "/api/v1/flash-sales/current/purchase"
    assert {"/api/v1/flash-sales/current", purchase, "/healthz", "/readyz"} <= set(paths)
    assert {"get", "post"} <= set(paths[purchase])
    schema = paths[purchase]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    user_id = schema["properties"]["userId"]
    assert (user_id["minLength"], user_id["maxLength"]) == (3, 255)
    assert schema["required"] == ["userId"]
    assert "201" in paths[purchase]["post"]["responses"]
