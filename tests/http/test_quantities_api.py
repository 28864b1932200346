"""Quantities over HTTP: a sale's perUserLimit, a purchase's quantity, INSUFFICIENT_STOCK.

A sale whose limit is 1 answers byte for byte as the original product, quantity or not; the
keys a sale of several units per buyer adds are written out here, in their order, so a
field that creeps into a body fails a test.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import httpx
import trio

from flashflow.http.wire import (
    ADMIN_SALES,
    CURRENT,
    CURRENT_PURCHASE,
    METRICS,
    admin_sale_path,
    confirm_path,
    purchase_path,
    sale_path,
)

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
from .test_admin_api import AUTH, TOKEN, new_sale
from .test_holds_wire import PURCHASE_KEYS, SALE_KEYS, data_of
from .test_metrics import samples, value
from .test_sse import open_events

#: A sale whose buyers may take several units: the original keys, then the limit.
LIMITED_SALE_KEYS = [*SALE_KEYS, "perUserLimit"]
#: A 201 in such a sale: the original keys, with the units after the product.
UNITS_PURCHASE_KEYS = ["purchaseId", "userId", "productName", "quantity", "status",
                       "purchasedAt"]


async def quantities(settings, sale_id: uuid.UUID) -> dict[str, int]:
    """Each buyer's quantity, as PostgreSQL holds it."""
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id, quantity FROM purchases WHERE sale_id = $1", sale_id)
    return {r["user_id"]: r["quantity"] for r in rows}


async def sold(settings, sale_id: uuid.UUID) -> int:
    """The ledger's count of units sold."""
    [row] = await pg(settings.database_url, fetch,
                     "SELECT sold FROM flash_sales WHERE id = $1", sale_id)
    return row["sold"]


def insufficient(response: httpx.Response) -> dict:
    """The ``error`` of a 409 INSUFFICIENT_STOCK: the envelope with ``details`` beside the
    three keys every error carries, and nothing else."""
    assert response.status_code == 409, response.text
    body = response.json()
    assert (body["status"], body["code"]) == ("error", 409)
    error = body["error"]
    assert list(error) == ["code", "message", "correlationId", "details"]
    assert error["code"] == "INSUFFICIENT_STOCK"
    assert response.headers["x-correlation-id"] == error["correlationId"]
    return error


async def wait_for_remaining(client: httpx.AsyncClient, path: str, expected: int) -> dict:
    """The sale's body once its remainingStock reads ``expected`` (the feed may lag)."""
    while True:
        data = (await client.get(path)).json()["data"]
        if data["remainingStock"] == expected:
            return data
        await trio.sleep(0.02)


async def test_per_user_limit_round_trips_through_the_admin_api(settings):
    """Create with perUserLimit 4, PATCH to 6, then to 1: each answer and the sale's body say
    it (and say nothing of it at 1); PostgreSQL holds it; a limit out of 1..100 or not an
    integer is 400 and changes nothing."""
    settings = replace(settings, admin_token=TOKEN)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            created = await c.post(ADMIN_SALES, json=new_sale(perUserLimit=4), headers=AUTH)
            sale_id = created.json()["data"]["id"]
            shown = await c.get(sale_path(sale_id))
            refused_creates = [await c.post(ADMIN_SALES, json=new_sale(perUserLimit=bad),
                                            headers=AUTH)
                               for bad in (0, 101, "2", 2.5, True, -1)]
            refused_patches = [await c.patch(admin_sale_path(sale_id), json={"perUserLimit": bad},
                                             headers=AUTH)
                               for bad in (0, 101, "2", 2.5, True)]
            six = await c.patch(admin_sale_path(sale_id), json={"perUserLimit": 6}, headers=AUTH)
            one = await c.patch(admin_sale_path(sale_id), json={"perUserLimit": 1}, headers=AUTH)
            plain = await c.get(sale_path(sale_id))
    assert created.status_code == 201, created.text
    assert data_of(created, LIMITED_SALE_KEYS)["perUserLimit"] == 4
    assert data_of(shown, LIMITED_SALE_KEYS)["perUserLimit"] == 4
    for refused in (*refused_creates, *refused_patches):
        assert "perUserLimit" in assert_error(refused, 400, "VALIDATION_ERROR")["message"]
    assert six.status_code == 200, six.text
    assert data_of(six, LIMITED_SALE_KEYS)["perUserLimit"] == 6
    assert one.status_code == 200, one.text
    data_of(one, SALE_KEYS)
    data_of(plain, SALE_KEYS)
    rows = await pg(settings.database_url, fetch, "SELECT per_user_limit FROM flash_sales")
    assert [r["per_user_limit"] for r in rows] == [1]


async def test_a_quantity_out_of_range_or_not_an_integer_is_400_naming_the_limit(settings):
    """0, 5 with a limit of 4, 101, -1, "2", 2.0, true, null, a list: each is 400
    VALIDATION_ERROR naming the limit, writes no row, takes nothing from Redis and spends no
    rate-limit token (a buyer's burst is 5: they then buy 4 at once); in a sale of one unit a
    buyer, 2 is refused naming 1."""
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=4)
    plain = await make_sale(settings.database_url, stock=10, product="Plain")
    bad = [0, 5, 101, -1, "2", 2.0, True, False, None, [2], {"n": 2}]
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            refused = [await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": q})
                       for q in bad]
            raw = await c.post(CURRENT_PURCHASE, content=b'{"userId": "alice", "quantity": 2.0}',
                               headers={"content-type": "application/json"})
            over_one = await c.post(purchase_path(plain.id),
                                    json={"userId": "alice", "quantity": 2})
            stock_key, buyers_key = gate_keys(settings, sale.id)
            r = redis_client(settings)
            gate_after = (r.get(stock_key), r.hlen(buyers_key))
            buckets = f"{settings.key_prefix}*rl*"
            spent_before = sorted(r.scan_iter(match=buckets))
            rows_after = await quantities(settings, sale.id)
            bought = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 4})
            spent_after = sorted(r.scan_iter(match=buckets))
    for answer, quantity in zip([*refused, raw], [*bad, 2.0], strict=True):
        message = assert_error(answer, 400, "VALIDATION_ERROR")["message"]
        assert "quantity" in message and "1 to 4" in message, (quantity, message)
    assert "1 to 1" in assert_error(over_one, 400, "VALIDATION_ERROR")["message"]
    assert gate_after == ("10", 0)
    assert spent_before == [] and spent_after, spent_after  # the purchase spent its tokens
    assert rows_after == {}
    assert bought.status_code == 201, bought.text
    assert await quantities(settings, sale.id) == {"alice": 4}
    assert await quantities(settings, plain.id) == {}


async def test_a_purchase_of_several_units_is_one_row_and_the_second_is_409(settings):
    """A purchase of 3 (limit 4) is one 201 that says its quantity, one row of 3 units, 3
    units off the gate, the sale's body and the live stream; the buyer's second purchase is
    409 ALREADY_PURCHASED, whatever its quantity, and takes nothing."""
    sale = await make_sale(settings.database_url, stock=10, per_user_limit=4, product="Socks")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            async with open_events(server) as reader:
                snapshot = await reader.next_named("snapshot")
                bought = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 3})
                stock = await reader.next_named("stock")
            again = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 1})
            other = await c.post(purchase_path(sale.id), json={"userId": "alice"})
            await wait_for_remaining(c, CURRENT, 7)
            current = await c.get(CURRENT)
            status = await c.get(CURRENT_PURCHASE, params={"userId": "alice"})
    assert snapshot.data["perUserLimit"] == 4 and snapshot.data["remainingStock"] == 10
    assert stock.data["remainingStock"] == 7
    assert bought.status_code == 201, bought.text
    purchase = data_of(bought, UNITS_PURCHASE_KEYS)
    assert (purchase["userId"], purchase["productName"], purchase["quantity"]) == (
        "alice", "Socks", 3)
    assert_error(again, 409, "ALREADY_PURCHASED")
    assert_error(other, 409, "ALREADY_PURCHASED")
    body = data_of(current, LIMITED_SALE_KEYS)
    assert (body["totalStock"], body["remainingStock"], body["perUserLimit"]) == (10, 7, 4)
    assert status.json()["data"]["purchaseId"] == purchase["purchaseId"]
    assert await quantities(settings, sale.id) == {"alice": 3}
    assert await sold(settings, sale.id) == 3
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    assert (r.get(stock_key), r.hlen(buyers_key)) == ("7", 1)
    assert (await ledger_of(settings, sale.id)).purchases == {"alice": purchase["purchaseId"]}


async def test_a_plain_sale_answers_as_the_original_product_with_quantity_1(settings):
    """In a sale of one unit a buyer, a body with quantity 1 is answered as one without it:
    the original keys, no perUserLimit, no quantity."""
    sale = await make_sale(settings.database_url, stock=3, product="Lamp")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            with_one = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 1})
            without = await c.post(CURRENT_PURCHASE, json={"userId": "bobby"})
            current = await c.get(CURRENT)
    for response in (with_one, without):
        assert response.status_code == 201, response.text
        data_of(response, PURCHASE_KEYS)
    data_of(current, SALE_KEYS)
    assert await quantities(settings, sale.id) == {"alice": 1, "bobby": 1}


async def test_more_units_than_are_left_is_409_insufficient_stock_with_what_is_left(settings):
    """Stock 5, limit 4: after a purchase of 3, asking 3 is 409 INSUFFICIENT_STOCK with
    details.remainingStock 2 and writes nothing; asking 2 then buys them, and the next buyer
    is told SOLD_OUT. The units sold are the stock exactly."""
    sale = await make_sale(settings.database_url, stock=5, per_user_limit=4)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            first = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 3})
            short = await c.post(CURRENT_PURCHASE, json={"userId": "bobby", "quantity": 3})
            after_short = await quantities(settings, sale.id)
            rest = await c.post(CURRENT_PURCHASE, json={"userId": "bobby", "quantity": 2})
            late = await c.post(CURRENT_PURCHASE, json={"userId": "carol"})
            await wait_for_remaining(c, CURRENT, 0)
    assert first.status_code == 201, first.text
    error = insufficient(short)
    assert error["details"] == {"remainingStock": 2}
    assert "2 units" in error["message"]
    assert after_short == {"alice": 3}
    assert rest.status_code == 201, rest.text
    assert json.loads(rest.content)["data"]["quantity"] == 2
    assert_error(late, 409, "SOLD_OUT")
    assert await quantities(settings, sale.id) == {"alice": 3, "bobby": 2}
    assert await sold(settings, sale.id) == 5
    stock_key, _ = gate_keys(settings, sale.id)
    assert redis_client(settings).get(stock_key) == "0"


async def test_metrics_count_units_sold_and_insufficient_stock_answers(settings):
    """flashflow_purchased_units_total adds each 201's quantity; an INSUFFICIENT_STOCK answer
    counts under its wire code in flashflow_purchases_total and flashflow_http_errors_total."""
    await make_sale(settings.database_url, stock=6, per_user_limit=4)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            answers = [await c.post(CURRENT_PURCHASE, json={"userId": user, **more})
                       for user, more in (("alice", {"quantity": 4}), ("bobby", {}),
                                          ("carol", {"quantity": 2}),
                                          ("dave1", {"quantity": 1}))]
            scrape = samples((await c.get(METRICS)).text)
    assert [a.status_code for a in answers] == [201, 201, 409, 201]
    assert value(scrape, "flashflow_purchased_units_total") == 6
    assert value(scrape, "flashflow_purchases_total", outcome="CONFIRMED") == 3
    assert value(scrape, "flashflow_purchases_total", outcome="INSUFFICIENT_STOCK") == 1
    assert value(scrape, "flashflow_http_errors_total", status="409",
                 code="INSUFFICIENT_STOCK") == 1



async def test_a_sale_with_holds_and_a_limit_says_the_units_of_each_hold_and_place(settings):
    """Holds of 90 s, stock 3, limit 3: a hold of 2 says its quantity (201, and the 200 of a
    second press); asking 2 with 1 free is a 202 place that says its 2 units; the confirm
    says the hold's 2 units; the sale's body carries the limit before the holds' fields."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, stock=3, product="Pair", hold_seconds=90,
                           per_user_limit=3)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            held = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 2})
            again = await c.post(CURRENT_PURCHASE, json={"userId": "alice", "quantity": 2})
            placed = await c.post(CURRENT_PURCHASE, json={"userId": "bobby", "quantity": 2})
            purchase_id = json.loads(held.content)["data"]["purchaseId"]
            confirmed = await c.post(confirm_path(sale.id, purchase_id), headers=AUTH)
            current = await c.get(CURRENT)
    assert held.status_code == 201, held.text
    hold = data_of(held, [*UNITS_PURCHASE_KEYS, "expiresAt"])
    assert (hold["quantity"], hold["status"]) == (2, "held")
    assert again.status_code == 200 and again.content == held.content
    assert placed.status_code == 202, placed.text
    assert data_of(placed, ["userId", "productName", "quantity", "status", "position",
                            "waitlistLength"])["quantity"] == 2
    assert confirmed.status_code == 200, confirmed.text
    paid = data_of(confirmed, [*UNITS_PURCHASE_KEYS, "expiresAt", "confirmedAt"])
    assert (paid["quantity"], paid["status"]) == (2, "confirmed")
    body = data_of(current, [*LIMITED_SALE_KEYS, "holdSeconds", "heldStock", "confirmedStock",
                             "waitlistLength"])
    assert (body["perUserLimit"], body["remainingStock"]) == (3, 1)
    assert await quantities(settings, sale.id) == {"alice": 2}
