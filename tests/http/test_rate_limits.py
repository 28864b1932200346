"""Rate limits: per user id and per client address, shared through Redis."""

from __future__ import annotations

from dataclasses import replace

import trio

from ..helpers import fetch, live_server, make_sale, pg

PURCHASE = "/api/v1/flash-sales/current/purchase"


async def test_answers_from_memory_spend_no_tokens(settings):
    """Once a sale is known sold out, presses past the burst still get 409 SOLD_OUT, not 429."""
    settings = replace(settings, rate_user_per_s=0.5, rate_user_burst=2)
    await make_sale(settings.database_url, stock=0)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(PURCHASE, json={"userId": "spammer"})
                       for _ in range(10)]
    assert [a.status_code for a in answers] == [409] * 10
    assert {a.json()["error"]["code"] for a in answers} == {"SOLD_OUT"}


async def test_user_over_its_burst_gets_429_with_retry_after(settings):
    """Past its burst a user gets 429 with Retry-After; nothing is written for it."""
    settings = replace(settings, rate_user_per_s=0.5, rate_user_burst=2)
    sale = await make_sale(settings.database_url, stock=100)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            # Six presses race before the first one commits, so each one spends a token.
            async with trio.open_nursery() as nursery:
                answers = []

                async def press() -> None:
                    answers.append(await server.client.post(PURCHASE, json={"userId": "racer"}))

                for _ in range(6):
                    nursery.start_soon(press)
    codes = sorted(a.status_code for a in answers)
    limited = [a for a in answers if a.status_code == 429]
    assert limited, codes
    assert set(codes) <= {201, 409, 429}
    for answer in limited:
        assert answer.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(answer.headers["Retry-After"]) >= 1
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["user_id"] for r in rows] == ["racer"]


async def test_address_limit_applies_across_users(settings):
    """Many users from one address past the address burst get 429."""
    settings = replace(settings, rate_address_per_s=0.5, rate_address_burst=3)
    sale = await make_sale(settings.database_url, stock=100)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(PURCHASE, json={"userId": f"crowd-{i}"})
                       for i in range(6)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429, 429]
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM purchases WHERE sale_id = $1", sale.id)
    assert len(rows) == 3
