"""The operators' admin API: each refusal, each change, and a sale made over HTTP sold out."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import trio

from flashflow.http.wire import (
    ADMIN_SALE,
    ADMIN_SALE_END,
    ADMIN_SALES,
    OPENAPI,
    SALE,
    SALE_PURCHASE,
    SALES,
    admin_end_path,
    admin_sale_path,
    iso,
    purchase_path,
    sale_path,
)

from ..helpers import assert_error, fetch, ledger_of, live_server, make_sale, pg
from .test_openapi import documented

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def at(delta: timedelta) -> str:
    """An ISO 8601 time ``delta`` from now, in whole seconds (the wire shows milliseconds)."""
    moment = (datetime.now(UTC) + delta).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def new_sale(**overrides) -> dict:
    """A create body for a sale starting in an hour."""
    return {"productName": "Sneakers", "totalStock": 5, "startTime": at(timedelta(hours=1)),
            "endTime": at(timedelta(hours=2)), **overrides}


async def test_the_admin_api_is_off_without_a_token(settings):
    """With no FLASHFLOW_ADMIN_TOKEN every admin route is 404, token or not."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(hours=1))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            answers = [await client.post(ADMIN_SALES, json=new_sale(), headers=AUTH),
                       await client.patch(admin_sale_path(sale.id), json={"totalStock": 1}),
                       await client.post(admin_end_path(sale.id), headers=AUTH)]
    for answer in answers:
        assert_error(answer, 404, "NOT_FOUND")
    rows = await pg(settings.database_url, fetch, "SELECT total_stock FROM flash_sales")
    assert [r["total_stock"] for r in rows] == [sale.total_stock]


async def test_a_missing_or_wrong_token_is_401_before_the_body_is_read(settings):
    """No token, a wrong one, or another scheme: 401 UNAUTHORIZED with a Bearer challenge."""
    settings = replace(settings, admin_token=TOKEN)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            answers = [
                await client.post(ADMIN_SALES, json=new_sale()),
                await client.post(ADMIN_SALES, json=new_sale(),
                                  headers={"Authorization": "Bearer x"}),
                await client.post(ADMIN_SALES, content=b"{not json",
                                  headers={"Authorization": f"Bearer {TOKEN}x",
                                           "Content-Type": "application/json"}),
                await client.post(ADMIN_SALES, json=new_sale(), headers={"Authorization": TOKEN}),
                await client.post(ADMIN_SALES, json=new_sale(),
                                  headers={"Authorization": f"Basic {TOKEN}"}),
                await client.patch(admin_sale_path(uuid.uuid4()), json={"totalStock": 1}),
                await client.post(admin_end_path(uuid.uuid4())),
            ]
    for answer in answers:
        assert_error(answer, 401, "UNAUTHORIZED")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    rows = await pg(settings.database_url, fetch, "SELECT 1 FROM flash_sales")
    assert rows == []


async def test_bad_bodies_are_400_and_write_nothing(settings):
    """Create bodies that are not a sale, or whose window ends before it starts, are 400."""
    settings = replace(settings, admin_token=TOKEN)
    bodies = [
        {"productName": "Sneakers"},
        new_sale(totalStock=-1),
        new_sale(totalStock="5"),
        new_sale(productName="   "),
        new_sale(startTime="tomorrow"),
        new_sale(startTime="2030-01-01T10:00:00"),
        new_sale(endTime=at(timedelta(minutes=30))),
        new_sale(colour="red"),
    ]
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(ADMIN_SALES, json=b, headers=AUTH) for b in bodies]
            not_json = await server.client.post(
                ADMIN_SALES, content=b"{", headers={**AUTH, "Content-Type": "application/json"})
    for answer in [*answers, not_json]:
        assert_error(answer, 400, "VALIDATION_ERROR")
    assert answers[6].json()["error"]["message"] == "endTime must be after startTime."
    rows = await pg(settings.database_url, fetch, "SELECT 1 FROM flash_sales")
    assert rows == []


async def test_a_sale_created_over_http_is_listed_and_sells_out_exactly(settings):
    """POST /admin/flash-sales answers 201 with the sale; its gate is loaded; it sells 3 of 3."""
    settings = replace(settings, admin_token=TOKEN)
    body = new_sale(productName="  Drop  ", totalStock=3, startTime=at(timedelta(seconds=-1)),
                    endTime=at(timedelta(hours=1)))
    with trio.fail_after(60):
        async with live_server(settings) as server:
            client = server.client
            created = await client.post(ADMIN_SALES, json=body, headers=AUTH)
            assert created.status_code == 201, created.text
            sale = created.json()["data"]
            loaded = await server.runtime.gate.store.is_loaded(server.runtime.catalog.get(
                uuid.UUID(sale["id"])))
            listed = (await client.get(SALES)).json()["data"]
            answers = [await client.post(purchase_path(sale['id']),
                                         json={"userId": f"buyer-{i}"}) for i in range(5)]
            after = (await client.get(sale_path(sale['id']))).json()["data"]
    assert (sale["productName"], sale["totalStock"], sale["remainingStock"]) == ("Drop", 3, 3)
    assert sale["status"] == "active" and sale["endTime"].endswith("Z")
    assert loaded, "the gate of a sale made over HTTP is loaded at once"
    assert [s["id"] for s in listed] == [sale["id"]]
    assert [a.status_code for a in answers] == [201, 201, 201, 409, 409]
    assert answers[-1].json()["error"]["code"] == "SOLD_OUT"
    assert after["remainingStock"] == 0
    rows = await pg(settings.database_url, fetch, "SELECT sold FROM flash_sales")
    assert [r["sold"] for r in rows] == [3]


async def test_an_upcoming_sale_can_be_changed_and_its_gate_follows(settings):
    """PATCH changes stock, window and name of an upcoming sale; the gate shows the new stock."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, stock=5, starts_in=timedelta(hours=1))
    start, end = at(timedelta(hours=3)), at(timedelta(hours=4))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            before = (await client.get(sale_path(sale.id))).json()["data"]
            changed = await client.patch(admin_sale_path(sale.id), headers=AUTH, json={
                "totalStock": 9, "productName": "Renamed", "startTime": start, "endTime": end})
            shown = (await client.get(sale_path(sale.id))).json()["data"]
            inverted = await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                          json={"endTime": at(timedelta(hours=2))})
            empty = await client.patch(admin_sale_path(sale.id), headers=AUTH, json={})
            unknown = await client.patch(admin_sale_path(uuid.uuid4()), headers=AUTH,
                                         json={"totalStock": 1})
            malformed = await client.patch(admin_sale_path("nope"), headers=AUTH,
                                           json={"totalStock": 1})
    assert before["remainingStock"] == 5
    assert changed.status_code == 200, changed.text
    assert shown == {**shown, "productName": "Renamed", "totalStock": 9, "remainingStock": 9}
    assert datetime.fromisoformat(shown["startTime"]) == datetime.fromisoformat(start)
    assert_error(inverted, 400, "VALIDATION_ERROR")
    assert_error(empty, 400, "VALIDATION_ERROR")
    assert_error(unknown, 404, "SALE_NOT_FOUND")
    assert_error(malformed, 400, "VALIDATION_ERROR")
    rows = await pg(settings.database_url, fetch,
                    "SELECT total_stock, product_name FROM flash_sales")
    assert [(r["total_stock"], r["product_name"]) for r in rows] == [(9, "Renamed")]


async def test_a_started_sale_cannot_be_changed(settings):
    """PATCH of a sale whose window has opened is 409 SALE_STARTED and changes nothing."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            refused = await server.client.patch(admin_sale_path(sale.id), headers=AUTH,
                                                json={"totalStock": 50})
    assert_error(refused, 409, "SALE_STARTED")
    rows = await pg(settings.database_url, fetch, "SELECT total_stock FROM flash_sales")
    assert [r["total_stock"] for r in rows] == [5]


async def sold_then_moved(conn, sale_id, users, start) -> None:
    """Commit purchases of ``users``, then move the sale's start by hand, as with psql."""
    for user in users:
        await conn.execute("INSERT INTO purchases (id, sale_id, user_id) VALUES ($1, $2, $3)",
                           uuid.uuid4(), sale_id, user)
    await conn.execute("UPDATE flash_sales SET start_time = $2 WHERE id = $1", sale_id, start)


async def test_stock_below_what_is_sold_is_409(settings):
    """A sale holding 2 committed units (moved back to upcoming by hand) cannot go below 2."""
    settings = replace(settings, admin_token=TOKEN)
    url = settings.database_url
    sale = await make_sale(url, stock=5)
    await pg(url, sold_then_moved, sale.id, ["ann", "ben"],
             datetime.now(UTC) + timedelta(minutes=30))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            below = await server.client.patch(admin_sale_path(sale.id), headers=AUTH,
                                              json={"totalStock": 1})
            at_sold = await server.client.patch(admin_sale_path(sale.id), headers=AUTH,
                                                json={"totalStock": 2})
    assert "2 units" in assert_error(below, 409, "STOCK_BELOW_SOLD")["message"]
    assert at_sold.status_code == 200, at_sold.text
    assert at_sold.json()["data"]["remainingStock"] == 0
    rows = await pg(url, fetch, "SELECT total_stock, sold FROM flash_sales")
    assert [(r["total_stock"], r["sold"]) for r in rows] == [(2, 2)]


async def test_ending_a_sale_early_stops_its_purchases(settings):
    """POST /end sets endTime to the database's now: buying is then 409 SALE_NOT_ACTIVE."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, stock=5)
    upcoming = await make_sale(settings.database_url, starts_in=timedelta(hours=1))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            bought = await client.post(purchase_path(sale.id), json={"userId": "early"})
            ended = await client.post(admin_end_path(sale.id), headers=AUTH)
            late = await client.post(purchase_path(sale.id), json={"userId": "late1"})
            again = await client.post(admin_end_path(sale.id), headers=AUTH)
            not_started = await client.post(admin_end_path(upcoming.id), headers=AUTH)
            unknown = await client.post(admin_end_path(uuid.uuid4()), headers=AUTH)
            checked = server.runtime.reconciler.sales_to_check(server.runtime.clock())
    assert bought.status_code == 201
    assert ended.status_code == 200, ended.text
    assert ended.json()["data"]["status"] == "ended"
    assert datetime.fromisoformat(ended.json()["data"]["endTime"]) < datetime.now(UTC)
    assert_error(late, 409, "SALE_NOT_ACTIVE")
    assert again.json()["data"]["endTime"] == ended.json()["data"]["endTime"]
    assert_error(not_started, 409, "SALE_NOT_ACTIVE")
    assert_error(unknown, 404, "SALE_NOT_FOUND")
    assert sale.id in {s.id for s in checked}, "an ended sale's gate is still reconciled"
    assert list((await ledger_of(settings, sale.id)).purchases) == ["early"]


async def test_the_openapi_document_lists_the_admin_and_id_routes(settings):
    """/openapi.json names the new routes and the create body's fields."""
    settings = replace(settings, admin_token=TOKEN)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            doc = (await server.client.get(OPENAPI)).json()
    paths = doc["paths"]
    assert {documented(pattern) for pattern in (
        SALES, SALE, SALE_PURCHASE, ADMIN_SALES, ADMIN_SALE, ADMIN_SALE_END)} <= set(paths)
    assert "patch" in paths[documented(ADMIN_SALE)]
    schema = paths[ADMIN_SALES]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"productName", "totalStock", "startTime", "endTime"}


async def test_a_jwt_with_the_admin_scope_authorises_without_an_admin_token(settings):
    """With buyers' token keys set, a JWT whose scope holds flashflow:admin is an operator;
    a buyer's JWT without that scope, or one signed with another key, is 401."""
    from flashflow.tokens import mint

    settings = replace(settings, auth_jwt_secret="admin-scope-secret-0123456789abcdef")
    forger = replace(settings, auth_jwt_secret="another-secret-0123456789abcdefghij")
    operator = {"Authorization": "Bearer " + mint(settings, "ops", scope="flashflow:admin")}
    refused = [{"Authorization": "Bearer " + mint(settings, "buyer")},
               {"Authorization": "Bearer " + mint(settings, "buyer", scope="flashflow:shop")},
               {"Authorization": "Bearer " + mint(forger, "ops", scope="flashflow:admin")}]
    with trio.fail_after(30):
        async with live_server(settings) as server:
            created = await server.client.post(ADMIN_SALES, json=new_sale(), headers=operator)
            answers = [await server.client.post(ADMIN_SALES, json=new_sale(), headers=h)
                       for h in refused]
    assert created.status_code == 201, created.text
    for answer in answers:
        assert_error(answer, 401, "UNAUTHORIZED")
        assert 'scope="flashflow:admin"' in answer.headers["WWW-Authenticate"]
    rows = await pg(settings.database_url, fetch, "SELECT product_name FROM flash_sales")
    assert len(rows) == 1


def admin_lines(caplog) -> list:
    """The admin API's log lines, in order."""
    return [r for r in caplog.records if r.name == "flashflow.http.admin"]


async def test_every_admin_action_is_logged_with_its_changes(settings, caplog):
    """Create, patch and end are INFO lines naming the sale, each change old -> new and the
    correlation id of the answer's X-Correlation-Id."""
    settings = replace(settings, admin_token=TOKEN)
    running = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="flashflow.http.admin"):
        async with live_server(settings) as server:
            client = server.client
            created = await client.post(ADMIN_SALES, json=new_sale(totalStock=100), headers=AUTH)
            sale_id = created.json()["data"]["id"]
            patched = await client.patch(admin_sale_path(sale_id), headers=AUTH,
                                         json={"totalStock": 80})
            ended = await client.post(admin_end_path(running.id), headers=AUTH)
    assert [a.status_code for a in (created, patched, ended)] == [201, 200, 200]
    create, patch, end = admin_lines(caplog)
    for line, answer, action, sale in [(create, created, "create", sale_id),
                                       (patch, patched, "update", sale_id),
                                       (end, ended, "end", str(running.id))]:
        assert line.levelno == logging.INFO
        assert (line.admin_action, line.sale_id) == (action, sale)
        assert line.correlation_id == answer.headers["x-correlation-id"]
        uuid.UUID(line.correlation_id)
    assert create.changes["totalStock"] == {"old": None, "new": 100}
    assert set(create.changes) == {"productName", "totalStock", "startTime", "endTime"}
    assert patch.changes == {"totalStock": {"old": 100, "new": 80}}
    assert "totalStock 100 -> 80" in patch.getMessage()
    assert end.changes == {"endTime": {"old": iso(running.end_time),
                                       "new": ended.json()["data"]["endTime"]}}


async def test_a_refused_admin_action_is_logged_with_its_code(settings, caplog):
    """A 409 refusal of an admin change is an INFO line with the answer's correlation id."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="flashflow.http.admin"):
        async with live_server(settings) as server:
            refused = await server.client.patch(admin_sale_path(sale.id), headers=AUTH,
                                                json={"totalStock": 50})
    error = assert_error(refused, 409, "SALE_STARTED")
    (line,) = admin_lines(caplog)
    assert line.levelno == logging.INFO
    assert (line.admin_action, line.sale_id, line.error_code) == (
        "update", str(sale.id), "SALE_STARTED")
    assert line.correlation_id == error["correlationId"]
