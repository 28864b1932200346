"""Several sales at once: the list, a sale by id, its purchase, status and live events."""

from __future__ import annotations

import uuid
from datetime import timedelta

import trio

from flashflow.http.wire import CURRENT, SALES, purchase_path, sale_path

from ..helpers import assert_error, fetch, live_server, make_sale, pg
from .test_sse import EventReader


async def test_the_list_holds_upcoming_running_and_recently_ended_sales(settings):
    """GET /flash-sales lists sales by start, each as /current shows it; long-ended ones drop."""
    url = settings.database_url
    old = await make_sale(url, product="Old", starts_in=timedelta(hours=-3),
                          lasts=timedelta(hours=1))
    recent = await make_sale(url, product="Recent", starts_in=timedelta(minutes=-40),
                             lasts=timedelta(minutes=30))
    running = await make_sale(url, product="Running", stock=7)
    soon = await make_sale(url, product="Soon", starts_in=timedelta(hours=2))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            listed = (await server.client.get(SALES)).json()["data"]
            current = (await server.client.get(CURRENT)).json()["data"]
    assert [s["id"] for s in listed] == [str(recent.id), str(running.id), str(soon.id)]
    assert str(old.id) not in {s["id"] for s in listed}
    assert [s["status"] for s in listed] == ["ended", "active", "upcoming"]
    shown = listed[1]
    assert shown.pop("serverTime") and current.pop("serverTime")
    assert shown == current
    assert shown["remainingStock"] == 7


async def test_a_sale_by_id_answers_as_current_and_unknown_or_malformed_ids_are_refused(settings):
    """GET /flash-sales/{id} is the sale; an unknown id is 404 SALE_NOT_FOUND, junk is 400."""
    first = await make_sale(settings.database_url, product="First", lasts=timedelta(minutes=30))
    second = await make_sale(settings.database_url, product="Second", stock=3)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            got = (await server.client.get(sale_path(second.id))).json()["data"]
            current = (await server.client.get(CURRENT)).json()["data"]
            unknown = await server.client.get(sale_path(uuid.uuid4()))
            malformed = await server.client.get(sale_path("not-a-uuid"))
            buy_unknown = await server.client.post(purchase_path(uuid.uuid4()),
                                                   json={"userId": "alice"})
            buy_malformed = await server.client.post(f"{SALES}/1234/purchase",
                                                     json={"userId": "alice"})
            events_unknown = await server.client.get(f"{SALES}/{uuid.uuid4()}/events")
    assert (got["productName"], got["totalStock"], got["remainingStock"]) == ("Second", 3, 3)
    assert current["id"] == str(first.id), "the current sale is the one that ends first"
    assert_error(unknown, 404, "SALE_NOT_FOUND")
    assert_error(malformed, 400, "VALIDATION_ERROR")
    assert_error(buy_unknown, 404, "SALE_NOT_FOUND")
    assert_error(buy_malformed, 400, "VALIDATION_ERROR")
    assert_error(events_unknown, 404, "SALE_NOT_FOUND")


async def test_buying_by_id_buys_in_that_sale_only(settings):
    """A purchase by id lands in that sale; the status read by id and by /current agree."""
    first = await make_sale(settings.database_url, stock=2, product="First",
                            lasts=timedelta(minutes=30))
    second = await make_sale(settings.database_url, stock=2, product="Second")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            bought = await client.post(purchase_path(second.id), json={"userId": "alice"})
            again = await client.post(purchase_path(second.id), json={"userId": "alice"})
            in_first = await client.post(f"{SALES}/current/purchase", json={"userId": "alice"})
            by_id = (await client.get(purchase_path(second.id),
                                      params={"userId": "alice"})).json()["data"]
            by_first = (await client.get(purchase_path(first.id),
                                         params={"userId": "alice"})).json()["data"]
            nobody = (await client.get(purchase_path(second.id),
                                       params={"userId": "bob-b"})).json()["data"]
            bad_user = await client.get(purchase_path(second.id), params={"userId": "x"})
            listed = (await client.get(SALES)).json()["data"]
    assert bought.status_code == 201, bought.text
    assert bought.json()["data"]["productName"] == "Second"
    assert_error(again, 409, "ALREADY_PURCHASED")
    assert in_first.status_code == 201, "one purchase per user per sale, not per shop"
    assert by_id == {"purchased": True, "purchaseId": bought.json()["data"]["purchaseId"],
                     "purchasedAt": bought.json()["data"]["purchasedAt"]}
    assert by_first["purchaseId"] == in_first.json()["data"]["purchaseId"]
    assert nobody == {"purchased": False}
    assert_error(bad_user, 400, "VALIDATION_ERROR")
    rows = await pg(settings.database_url, fetch,
                    "SELECT sale_id, user_id FROM purchases ORDER BY sale_id = $1", first.id)
    assert {(r["sale_id"], r["user_id"]) for r in rows} == {(first.id, "alice"),
                                                           (second.id, "alice")}
    assert {s["id"]: s["remainingStock"] for s in listed} == {str(first.id): 1,
                                                              str(second.id): 1}


async def test_a_sale_that_is_not_current_streams_its_own_events(settings):
    """GET /flash-sales/{id}/events of a sale that is not current: snapshot, stock, sold out."""
    await make_sale(settings.database_url, stock=5, lasts=timedelta(minutes=30))
    other = await make_sale(settings.database_url, stock=1, product="Other")
    with trio.fail_after(30):
        async with live_server(settings) as server, \
                server.client.stream("GET", f"{SALES}/{other.id}/events") as response:
            reader = EventReader(response)
            snapshot = await reader.next_named("snapshot")
            bought = await server.client.post(purchase_path(other.id),
                                              json={"userId": "alice"})
            stock = await reader.next_named("stock")
            status = await reader.next_named("status")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert (snapshot.data["id"], snapshot.data["productName"]) == (str(other.id), "Other")
    assert bought.status_code == 201
    assert stock.data == {**stock.data, "saleId": str(other.id), "remainingStock": 0}
    assert (status.data["saleId"], status.data["soldOut"]) == (str(other.id), True)
