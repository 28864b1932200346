"""Request bodies: only JSON is read (415 otherwise), and an oversized one gets a readable 413."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import trio

from flashflow.http.wire import CURRENT_PURCHASE
from flashflow.server import DRAIN_MAX_BYTES

from ..helpers import assert_error, gate_keys, live_server, make_sale, redis_client
from .test_errors_and_status import purchase_rows


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/jsonx", None,
])
async def test_a_post_that_is_not_json_is_415_and_buys_nothing(settings, content_type):
    """A purchase sent as text, a form or with no type is 415 UNSUPPORTED_MEDIA_TYPE, unsold."""
    sale = await make_sale(settings.database_url, stock=5)
    headers = {"content-type": content_type} if content_type else {}
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(CURRENT_PURCHASE, headers=headers,
                                                content=b'{"userId": "alice"}')
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert await purchase_rows(settings) == []
    assert redis_client(settings).hlen(gate_keys(settings, sale.id)[1]) == 0


async def test_json_with_any_charset_is_read(settings):
    """``application/json; charset=utf-8`` (any case) is JSON: the purchase goes through."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, content=b'{"userId": "alice"}',
                headers={"content-type": "Application/JSON; charset=UTF-8"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("size", [100 * 1024, DRAIN_MAX_BYTES - 1024], ids=["100KB", "1MB"])
async def test_an_oversized_body_gets_its_413_and_the_connection_carries_on(settings, size):
    """A body over the limit gets a complete 413; the next request on its connection works."""
    await make_sale(settings.database_url, stock=5)

    def two_requests(base_url: str) -> tuple[httpx.Response, httpx.Response]:
        with httpx.Client(base_url=base_url, timeout=20) as client:
            big = client.post(CURRENT_PURCHASE, json={"userId": "alice", "pad": "x" * size})
            return big, client.post(CURRENT_PURCHASE, json={"userId": "alice"})

    with trio.fail_after(30):
        async with live_server(settings) as server:
            big, after = await trio.to_thread.run_sync(two_requests, server.base_url)
    assert_error(big, 413, "PAYLOAD_TOO_LARGE")
    assert big.headers.get("connection") != "close"
    assert after.status_code == 201, after.text
    assert [r["user_id"] for r in await purchase_rows(settings)] == ["alice"]


async def test_a_streamed_body_over_the_limit_gets_its_413(settings):
    """A chunked body without Content-Length that grows past the limit is 413, read in full."""
    await make_sale(settings.database_url, stock=5)

    async def chunks():
        yield b'{"userId": "alice", "pad": "'
        for _ in range(50):
            yield b"x" * 2048
        yield b'"}'

    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await purchase_rows(settings) == []


async def test_a_body_past_the_drain_bound_is_answered_with_connection_close(settings):
    """Past the bound the server reads no more: the 413 says ``Connection: close``."""
    settings = replace(settings, graceful_timeout_s=5)
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, content=b"x" * (2 * DRAIN_MAX_BYTES),
                headers={"content-type": "application/json"})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert response.headers["connection"] == "close"
