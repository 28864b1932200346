"""A sale's waiting room set by operators: created with a sale, added or changed before the
start, refused after it or when malformed, and absent from the bodies of a sale without one."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta

import trio

from actors import WaitingRoom
from flashflow.http.wire import ADMIN_SALES, admin_sale_path, iso, queue_path, sale_path

from ..helpers import assert_error, fetch, live_server, make_sale, pg
from .test_admin_api import AUTH, TOKEN, admin_lines, at, new_sale

#: A line that opens ten minutes early, admits 4 a second, and gives each admission 90 s.
ROOM = {"opensSecondsBefore": 600, "admitPerSecond": 4, "admissionSeconds": 90}
HEX64 = re.compile(r"[0-9a-f]{64}")
ROOM_COLUMNS = "SELECT line_opens_s, line_admit_per_s, line_window_s FROM flash_sales"


def room_rows(rows) -> list[tuple]:
    """The waiting room columns of ``flash_sales`` rows, as tuples."""
    return [(r["line_opens_s"], r["line_admit_per_s"], r["line_window_s"]) for r in rows]


async def test_a_sale_created_with_a_room_shows_it_and_serves_its_line(settings, caplog):
    """POST with waitingRoom answers the sale with it, GET shows it, its line answers with a
    64-hex commitment and the room's opening and admission (no join before that opening),
    and the log names the room."""
    settings = replace(settings, admin_token=TOKEN)
    start = at(timedelta(hours=1))
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="flashflow.http.admin"):
        async with live_server(settings) as server:
            client = server.client
            created = await client.post(ADMIN_SALES, headers=AUTH,
                                        json=new_sale(startTime=start, waitingRoom=ROOM))
            sale_id = created.json()["data"]["id"]
            shown = (await client.get(sale_path(sale_id))).json()["data"]
            line = await client.get(queue_path(sale_id))
            joined = await client.post(queue_path(sale_id), json={"userId": "alice"})
    assert created.status_code == 201, created.text
    assert created.json()["data"]["waitingRoom"] == ROOM == shown["waitingRoom"]
    assert line.status_code == 200, line.text
    body = line.json()["data"]
    assert HEX64.fullmatch(body["commitment"]), body["commitment"]
    assert body["ordered"] is False and body["lineLength"] == 0
    assert (body["admitRate"], body["admissionSeconds"]) == (4, 90)
    opens = datetime.fromisoformat(start) - timedelta(seconds=600)
    assert body["opensAt"] == iso(opens)
    assert_error(joined, 409, "LINE_NOT_OPEN")  # it opens ten minutes before the hour
    assert room_rows(await pg(settings.database_url, fetch, ROOM_COLUMNS)) == [(600, 4.0, 90)]
    (create,) = admin_lines(caplog)
    assert create.changes["waitingRoom"] == {"old": None, "new": ROOM}


async def test_a_patch_adds_then_changes_a_room_before_the_start(settings, caplog):
    """PATCH gives an upcoming sale a waiting room, whose line then answers; a second PATCH
    changes the room and keeps the line's commitment; the log shows each room old -> new."""
    settings = replace(settings, admin_token=TOKEN)
    sale = await make_sale(settings.database_url, starts_in=timedelta(hours=1))
    changed_room = {**ROOM, "admitPerSecond": 0.5, "admissionSeconds": 30}
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="flashflow.http.admin"):
        async with live_server(settings) as server:
            client = server.client
            no_line = await client.get(queue_path(sale.id))
            added = await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                       json={"waitingRoom": ROOM})
            first = (await client.get(queue_path(sale.id))).json()["data"]
            changed = await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                         json={"waitingRoom": changed_room, "totalStock": 7})
            second = (await client.get(queue_path(sale.id))).json()["data"]
            shown = (await client.get(sale_path(sale.id))).json()["data"]
    assert_error(no_line, 404, "TICKET_NOT_FOUND")
    assert added.status_code == 200, added.text
    assert added.json()["data"]["waitingRoom"] == ROOM
    assert changed.status_code == 200, changed.text
    assert shown["waitingRoom"] == changed_room and shown["totalStock"] == 7
    assert HEX64.fullmatch(first["commitment"])
    assert second["commitment"] == first["commitment"], "a changed room keeps its line's seed"
    assert (second["admitRate"], second["admissionSeconds"]) == (0.5, 30)
    assert room_rows(await pg(settings.database_url, fetch, ROOM_COLUMNS)) == [(600, 0.5, 30)]
    add, change = admin_lines(caplog)
    assert add.changes == {"waitingRoom": {"old": None, "new": ROOM}}
    assert change.changes["waitingRoom"] == {"old": ROOM, "new": changed_room}
    assert "waitingRoom" in change.getMessage()


async def test_a_room_cannot_be_set_once_the_sale_has_started(settings):
    """PATCH of the room of a started sale, or adding one to it, is 409 SALE_STARTED and
    writes nothing: the columns stay and no line is made."""
    settings = replace(settings, admin_token=TOKEN)
    url = settings.database_url
    lined = await make_sale(url, waiting_room=WaitingRoom(600, 4.0, 90))
    bare = await make_sale(url)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            answers = [await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                          json={"waitingRoom": {**ROOM, "admitPerSecond": 50}})
                       for sale in (lined, bare)]
    for answer in answers:
        assert_error(answer, 409, "SALE_STARTED")
    rows = await pg(url, fetch, f"{ROOM_COLUMNS} WHERE id = ANY($1::uuid[])", [lined.id, bare.id])
    assert sorted(room_rows(rows), key=str) == sorted([(600, 4.0, 90), (None, None, None)],
                                                       key=str)
    assert [r["sale_id"] for r in await pg(url, fetch, "SELECT sale_id FROM lines")] == [lined.id]


#: Waiting rooms no sale may have: negative, a zero or negative rate, over the bounds, an
#: extra or a missing key, a number as a string or a boolean, not an object.
BAD_ROOMS = [
    {**ROOM, "opensSecondsBefore": -1},
    {**ROOM, "admitPerSecond": 0},
    {**ROOM, "admitPerSecond": -2},
    {**ROOM, "admissionSeconds": 0},
    {**ROOM, "opensSecondsBefore": 604_801},
    {**ROOM, "admitPerSecond": 100_001},
    {**ROOM, "admissionSeconds": 86_401},
    {**ROOM, "colour": "red"},
    {"opensSecondsBefore": 600, "admitPerSecond": 4},
    {**ROOM, "admitPerSecond": "4"},
    {**ROOM, "admitPerSecond": True},
    {**ROOM, "opensSecondsBefore": 1.5},
    [600, 4, 90],
    "on",
]


async def test_bad_rooms_are_400_and_write_nothing(settings):
    """Every malformed waitingRoom is 400 VALIDATION_ERROR on create and on PATCH (as is a
    PATCH of a null room), and neither a sale nor a room nor a line is written."""
    settings = replace(settings, admin_token=TOKEN)
    url = settings.database_url
    sale = await make_sale(url, starts_in=timedelta(hours=1))
    with trio.fail_after(60):
        async with live_server(settings) as server:
            client = server.client
            created = [await client.post(ADMIN_SALES, headers=AUTH,
                                         json=new_sale(waitingRoom=room)) for room in BAD_ROOMS]
            patched = [await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                          json={"waitingRoom": room, "totalStock": 99})
                       for room in BAD_ROOMS]
            null = await client.patch(admin_sale_path(sale.id), headers=AUTH,
                                      json={"waitingRoom": None})
    for answer in [*created, *patched, null]:
        assert_error(answer, 400, "VALIDATION_ERROR")
    rows = await pg(url, fetch, "SELECT id, total_stock, line_opens_s, line_admit_per_s, "
                                "line_window_s FROM flash_sales")
    assert [(r["id"], r["total_stock"]) for r in rows] == [(sale.id, sale.total_stock)]
    assert room_rows(rows) == [(None, None, None)]
    assert await pg(url, fetch, "SELECT 1 FROM lines") == []


def sale_bytes(data: dict, name: str, stock: int, remaining: int, start: str, end: str,
               status: str) -> bytes:
    """The exact body of a sale without a room, as the product has always answered it."""
    return json.dumps({"data": {
        "id": data["id"], "productName": name, "totalStock": stock, "remainingStock": remaining,
        "startTime": iso(datetime.fromisoformat(start)),
        "endTime": iso(datetime.fromisoformat(end)), "status": status,
        "serverTime": data["serverTime"]}}).encode()


async def test_a_sale_without_a_room_answers_byte_for_byte_as_before(settings):
    """Created, patched and read without a waitingRoom, a sale's bodies are the product's
    original bytes, with no waitingRoom key, and it has no line."""
    settings = replace(settings, admin_token=TOKEN)
    body = new_sale()
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            created = await client.post(ADMIN_SALES, headers=AUTH, json=body)
            sale_id = created.json()["data"]["id"]
            patched = await client.patch(admin_sale_path(sale_id), headers=AUTH,
                                         json={"totalStock": 6})
            shown = await client.get(sale_path(sale_id))
            line = await client.get(queue_path(sale_id))
    start, end = body["startTime"], body["endTime"]
    assert created.status_code == 201, created.text
    assert created.content == sale_bytes(created.json()["data"], "Sneakers", 5, 5, start, end,
                                         "upcoming")
    assert patched.content == sale_bytes(patched.json()["data"], "Sneakers", 6, 6, start, end,
                                         "upcoming")
    assert shown.content == sale_bytes(shown.json()["data"], "Sneakers", 6, 6, start, end,
                                       "upcoming")
    assert b"waitingRoom" not in created.content + patched.content + shown.content
    assert_error(line, 404, "TICKET_NOT_FOUND")
    assert await pg(settings.database_url, fetch, "SELECT 1 FROM lines") == []
