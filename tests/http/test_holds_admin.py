"""The admin API of sales with holds: ``holdSeconds`` on create and on change, and every
value it refuses, against real Redis and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import trio

from flashflow.http.wire import ADMIN_SALES, CURRENT_PURCHASE, admin_sale_path, sale_path

from ..helpers import assert_error, fetch, live_server, make_sale, pg
from .test_admin_api import AUTH, TOKEN, new_sale
from .test_holds_wire import HOLD_SALE_KEYS, SALE_KEYS

#: What a create or a change may not set holdSeconds to: out of 1..86400, or not an integer.
BAD_HOLD_SECONDS = [0, -1, 86_401, "10", 1.5, True, [30]]


async def hold_seconds_in(settings) -> list:
    """Every sale's hold_seconds, by product name."""
    rows = await pg(settings.database_url, fetch,
                    "SELECT product_name, hold_seconds FROM flash_sales ORDER BY product_name")
    return [(r["product_name"], r["hold_seconds"]) for r in rows]


async def test_a_sale_created_with_holds_answers_its_window_and_empty_counts(settings):
    """POST with holdSeconds is 201 with holdSeconds and heldStock, confirmedStock and
    waitlistLength 0 after the original keys; the row holds the window; the bounds 1 and
    86400 are taken; without holdSeconds the sale answers the original keys only."""
    settings = replace(settings, admin_token=TOKEN)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            created = await client.post(ADMIN_SALES, headers=AUTH,
                                        json=new_sale(productName="Held", holdSeconds=30))
            shortest = await client.post(ADMIN_SALES, headers=AUTH,
                                         json=new_sale(productName="Short", holdSeconds=1))
            longest = await client.post(ADMIN_SALES, headers=AUTH,
                                        json=new_sale(productName="Long", holdSeconds=86_400))
            plain = await client.post(ADMIN_SALES, headers=AUTH,
                                      json=new_sale(productName="Plain"))
            shown = await client.get(sale_path(created.json()["data"]["id"]))
    assert created.status_code == 201, created.text
    body = created.json()["data"]
    assert list(body) == HOLD_SALE_KEYS
    assert {k: body[k] for k in HOLD_SALE_KEYS[3:4] + HOLD_SALE_KEYS[-4:]} == {
        "remainingStock": 5, "holdSeconds": 30, "heldStock": 0, "confirmedStock": 0,
        "waitlistLength": 0}
    assert body["status"] == "upcoming"
    assert shown.json()["data"]["holdSeconds"] == 30
    assert [shortest.status_code, longest.status_code, plain.status_code] == [201, 201, 201]
    assert list(plain.json()["data"]) == SALE_KEYS
    assert await hold_seconds_in(settings) == [
        ("Held", 30), ("Long", 86_400), ("Plain", None), ("Short", 1)]


async def test_holds_can_be_set_or_changed_before_the_start_only(settings):
    """PATCH holdSeconds turns an upcoming plain sale into one with holds, and changes the
    window of one with holds; once the sale has started it is 409 SALE_STARTED, unchanged."""
    settings = replace(settings, admin_token=TOKEN)
    url = settings.database_url
    plain = await make_sale(url, stock=3, product="Plain", starts_in=timedelta(hours=1))
    held = await make_sale(url, stock=3, product="Held", starts_in=timedelta(hours=1),
                           hold_seconds=60)
    running = await make_sale(url, stock=3, product="Running", hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            now_held = await client.patch(admin_sale_path(plain.id), headers=AUTH,
                                          json={"holdSeconds": 120})
            changed = await client.patch(admin_sale_path(held.id), headers=AUTH,
                                         json={"holdSeconds": 15})
            refused = await client.patch(admin_sale_path(running.id), headers=AUTH,
                                         json={"holdSeconds": 5})
            pressed = await client.post(CURRENT_PURCHASE, json={"userId": "alice"})
    assert now_held.status_code == 200, now_held.text
    assert list(now_held.json()["data"]) == HOLD_SALE_KEYS
    assert now_held.json()["data"]["holdSeconds"] == 120
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["holdSeconds"] == 15
    assert_error(refused, 409, "SALE_STARTED")
    assert await hold_seconds_in(settings) == [("Held", 15), ("Plain", 120), ("Running", 60)]
    # The running sale's window is the one its holds get.
    assert pressed.status_code == 201, pressed.text
    assert pressed.json()["data"]["status"] == "held"


@pytest.mark.parametrize("hold_seconds", BAD_HOLD_SECONDS, ids=repr)
async def test_a_bad_hold_window_is_400_naming_the_field_and_writes_nothing(settings,
                                                                            hold_seconds):
    """holdSeconds out of 1..86400, a string, a float, a boolean or a list: create and change
    are 400 VALIDATION_ERROR whose message names holdSeconds; no sale is written or changed."""
    settings = replace(settings, admin_token=TOKEN)
    upcoming = await make_sale(settings.database_url, stock=3, product="Upcoming",
                               starts_in=timedelta(hours=1), hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            created = await server.client.post(
                ADMIN_SALES, headers=AUTH,
                json=new_sale(productName="Refused", holdSeconds=hold_seconds))
            changed = await server.client.patch(admin_sale_path(upcoming.id), headers=AUTH,
                                                json={"holdSeconds": hold_seconds})
    for answer in (created, changed):
        assert "holdSeconds" in assert_error(answer, 400, "VALIDATION_ERROR")["message"]
    assert await hold_seconds_in(settings) == [("Upcoming", 60)]
