"""Contract tests of the purchase API against real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import trio

from flashflow.http.wire import CURRENT, CURRENT_PURCHASE

from ..helpers import (
    assert_error,
    fetch,
    gate_keys,
    ledger_of,
    live_server,
    make_sale,
    pg,
    redis_client,
)


async def test_first_purchase_is_201_with_the_confirmed_body(settings):
    """A user's first purchase is answered 201 in the data envelope and is in Postgres."""
    sale = await make_sale(settings.database_url, stock=5, product="Phone")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(CURRENT_PURCHASE, json={"userId": "  alice  "})
    assert response.status_code == 201, response.text
    body = response.json()["data"]
    assert body["userId"] == "alice"
    assert body["productName"] == "Phone"
    assert body["status"] == "confirmed"
    assert body["purchasedAt"].endswith("Z")
    assert (await ledger_of(settings, sale.id)).purchases == {"alice": body["purchaseId"]}


async def test_second_purchase_is_409_already_purchased(settings):
    """A user who already bought gets 409 ALREADY_PURCHASED and no second row."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(CURRENT_PURCHASE, json={"userId": "bob123"})
            again = await server.client.post(CURRENT_PURCHASE, json={"userId": "bob123"})
    assert first.status_code == 201
    assert_error(again, 409, "ALREADY_PURCHASED")
    assert len((await ledger_of(settings, sale.id)).purchases) == 1


async def test_sold_out_is_409_and_stock_stays_exact(settings):
    """With stock 2, the third buyer gets 409 SOLD_OUT and Redis holds 0."""
    sale = await make_sale(settings.database_url, stock=2)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(CURRENT_PURCHASE, json={"userId": f"user-{i}"})
                       for i in range(3)]
            current = await server.client.get(CURRENT)
    assert [a.status_code for a in answers[:2]] == [201, 201]
    assert_error(answers[2], 409, "SOLD_OUT")
    assert current.json()["data"]["remainingStock"] == 0
    assert current.json()["data"]["status"] == "active"
    stock_key, _ = gate_keys(settings, sale.id)
    assert redis_client(settings).get(stock_key) == "0"


async def test_sale_not_started_and_ended_are_409_sale_not_active(settings):
    """Purchases outside the window get 409 SALE_NOT_ACTIVE saying which side they are on."""
    await make_sale(settings.database_url, starts_in=timedelta(hours=1))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            early = await server.client.post(CURRENT_PURCHASE, json={"userId": "carol"})
            current = await server.client.get(CURRENT)
    assert "not started" in assert_error(early, 409, "SALE_NOT_ACTIVE")["message"]
    assert current.json()["data"]["status"] == "upcoming"


async def test_status_read_sees_purchases_made_elsewhere(settings):
    """A purchase committed by another process is read from the ledger, not missed."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            mine = await server.client.post(CURRENT_PURCHASE, json={"userId": "local-buyer"})
            await pg(settings.database_url, fetch,
                     "INSERT INTO purchases (id, sale_id, user_id) VALUES ($1, $2, $3)",
                     uuid.UUID(int=7), sale.id, "remote-buyer")
            local = await server.client.get(CURRENT_PURCHASE, params={"userId": "local-buyer"})
            remote = await server.client.get(CURRENT_PURCHASE, params={"userId": "remote-buyer"})
            nobody = await server.client.get(CURRENT_PURCHASE, params={"userId": "nobody-here"})
    assert local.json()["data"]["purchaseId"] == mine.json()["data"]["purchaseId"]
    assert remote.json()["data"]["purchaseId"] == str(uuid.UUID(int=7))
    assert nobody.json()["data"] == {"purchased": False}


async def test_current_is_answered_from_the_stock_feed(settings):
    """GET /current reads the stock the feed last heard, not Redis, and follows each change."""
    sale = await make_sale(settings.database_url, stock=5)
    stock_key, _ = gate_keys(settings, sale.id)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.get(CURRENT)
            redis_client(settings).set(stock_key, 3)  # behind the feed's back: not published
            unchanged = await server.client.get(CURRENT)
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})  # published: 2
            while (await server.client.get(CURRENT)
                   ).json()["data"]["remainingStock"] != 2:
                await trio.sleep(0.02)
    assert first.json()["data"]["remainingStock"] == 5
    assert unchanged.json()["data"]["remainingStock"] == 5
