"""The demo payment route of ``flashflow up``: absent unless ``demo_payments`` is on, and then
a confirm of the hold it names, with the real confirm's answers; the page is told of it only
then. Real Redis and PostgreSQL."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import replace

import trio

from flashflow.http.wire import CURRENT_PURCHASE, DEMO_PAY, demo_pay_path

from ..helpers import assert_error, fetch, live_server, make_sale, pg

#: The page's tag that carries the demo payment route's pattern (empty: no such route).
DEMO_TAG = re.compile(r'<meta name="flashflow-demo-pay" content="([^"]*)">')


async def confirmed_at(settings, purchase_id):
    [row] = await pg(settings.database_url, fetch,
                     "SELECT confirmed_at FROM purchases WHERE id = $1", uuid.UUID(purchase_id))
    return row["confirmed_at"]


async def test_without_the_demo_mode_there_is_no_pay_route(settings):
    """By default the route is 404 NOT_FOUND like any unknown path, the hold stays unpaid,
    and the page is told of no Pay route."""
    assert not settings.demo_payments
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            held = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            purchase_id = held.json()["data"]["purchaseId"]
            pay = await server.client.post(demo_pay_path(sale.id, purchase_id))
            page = await server.client.get("/")
    assert held.status_code == 201, held.text
    assert_error(pay, 404, "NOT_FOUND")
    assert await confirmed_at(settings, purchase_id) is None
    assert DEMO_TAG.search(page.text).group(1) == ""


async def test_in_the_demo_mode_pay_confirms_the_hold(settings):
    """With demo_payments on, pay is 200 with the purchase confirmed (the same again), the row
    is confirmed in PostgreSQL, the status read says confirmed, and the page carries the
    route's pattern; an unknown purchase is 404 PURCHASE_NOT_FOUND."""
    settings = replace(settings, demo_payments=True)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            paid = await c.post(demo_pay_path(sale.id, held["purchaseId"]))
            again = await c.post(demo_pay_path(sale.id, held["purchaseId"]))
            status = (await c.get(CURRENT_PURCHASE, params={"userId": "alice"})).json()["data"]
            unknown = await c.post(demo_pay_path(sale.id, uuid.uuid4()))
            page = await c.get("/")
    assert held["status"] == "held"
    assert paid.status_code == 200, paid.text
    body = paid.json()["data"]
    assert (body["purchaseId"], body["userId"], body["status"]) == (
        held["purchaseId"], "alice", "confirmed")
    assert again.status_code == 200 and again.json() == paid.json()
    assert status["status"] == "confirmed" and status["purchased"] is True
    confirmed = await confirmed_at(settings, held["purchaseId"])
    assert confirmed is not None
    assert_error(unknown, 404, "PURCHASE_NOT_FOUND")
    assert html.unescape(DEMO_TAG.search(page.text).group(1)) == DEMO_PAY


async def test_in_the_demo_mode_a_late_pay_is_refused(settings):
    """Pay after the hold lapsed is 409 HOLD_EXPIRED, and the row stays unconfirmed."""
    # The status read is polled below: no rate limit in the way.
    settings = replace(settings, demo_payments=True, rate_limit_enabled=False)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=1)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            status = {}
            while status.get("status") != "lapsed":
                await trio.sleep(0.25)
                status = (await c.get(CURRENT_PURCHASE, params={"userId": "alice"})).json()["data"]
            late = await c.post(demo_pay_path(sale.id, held["purchaseId"]))
    assert_error(late, 409, "HOLD_EXPIRED")
    assert await pg(settings.database_url, fetch,
                    "SELECT id FROM purchases WHERE id = $1", uuid.UUID(held["purchaseId"])) == []
