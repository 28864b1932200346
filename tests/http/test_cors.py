"""Cross-origin calls: only the origins in FLASHFLOW_CORS_ORIGINS get CORS headers."""

from __future__ import annotations

from dataclasses import replace

import trio

from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import live_server, make_sale

SHOP = "https://shop.example"


async def preflight_and_post(settings, origin: str):
    """A preflight for a JSON POST from ``origin``, then the POST itself."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            preflight = await server.client.options(CURRENT_PURCHASE, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization"})
            post = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"},
                                            headers={"Origin": origin})
    return preflight, post


async def test_a_listed_origin_gets_its_preflight_and_cors_headers(settings):
    """A listed origin's preflight allows GET/POST with Authorization; answers name the origin."""
    preflight, post = await preflight_and_post(replace(settings, cors_origins=(SHOP,)), SHOP)
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Allow-Origin"] == SHOP
    assert post.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Origin" in post.headers["Vary"]


async def test_other_origins_get_no_cors_headers(settings):
    """An unlisted origin, or any origin by default, is given no Access-Control-* header."""
    listed = replace(settings, cors_origins=(SHOP,))
    for configured in (listed, settings):
        preflight, post = await preflight_and_post(configured, "https://evil.example")
        assert "Access-Control-Allow-Origin" not in post.headers
        assert "Access-Control-Allow-Methods" not in preflight.headers
