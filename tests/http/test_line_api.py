"""The waiting room over HTTP: tickets, the shuffled order, admission, NOT_ADMITTED, closing."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import trio

from actors import WaitingRoom
from actors.places_sql import line_order
from flashflow.admission import solve_proof
from flashflow.http.wire import (
    QUEUE_AUDIT,
    confirm_path,
    fill,
    purchase_path,
    queue_path,
    ticket_path,
)
from flashflow.tokens import mint

from ..helpers import assert_error, fetch, live_server, make_sale, pg
from .test_sse import EventReader

#: A line that opens an hour early, admits 5 a second, and gives each admission a minute.
ROOM = WaitingRoom(opens_before_s=3600, admit_per_s=5.0, window_s=60)


def data_of(response) -> dict:
    assert response.status_code < 300, response.text
    return response.json()["data"]


async def wait_for(client, sale_id, ticket, status: str, timeout_s: float = 15.0) -> dict:
    """Poll the ticket until it reaches ``status``."""
    with trio.fail_after(timeout_s):
        while True:
            body = data_of(await client.get(ticket_path(sale_id, ticket)))
            if body["status"] == status:
                return body
            await trio.sleep(0.1)


async def test_a_join_gives_one_ticket_per_user(settings):
    """A second join by the same user answers the same ticket (200), not a new one."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(minutes=5),
                           waiting_room=ROOM)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(queue_path(sale.id), json={"userId": "alice"})
            again = await server.client.post(queue_path(sale.id), json={"userId": "alice"})
            other = await server.client.post(queue_path(sale.id), json={"userId": "bobby"})
            line = data_of(await server.client.get(queue_path(sale.id)))
    assert first.status_code == 201 and again.status_code == 200 and other.status_code == 201
    assert data_of(first)["ticket"] == data_of(again)["ticket"] != data_of(other)["ticket"]
    ticket = data_of(first)
    assert ticket["status"] == "waiting"
    assert "position" not in ticket  # placed only at the opening
    assert line["ordered"] is False and line["lineLength"] == 0
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM tickets WHERE sale_id = $1", sale.id)
    assert sorted(r["user_id"] for r in rows) == ["alice", "bobby"]


async def test_no_purchase_without_admission(settings):
    """A purchase in a sale with a waiting room is 403 NOT_ADMITTED with the buyer's place
    until their ticket is admitted; with its token it is a 201, without it still 403."""
    sale = await make_sale(settings.database_url, stock=5, starts_in=timedelta(seconds=2),
                           waiting_room=replace(ROOM, admit_per_s=1.0))
    with trio.fail_after(40):
        async with live_server(settings) as server:
            client = server.client
            tickets = [data_of(await client.post(queue_path(sale.id), json={"userId": f"user{i}"}))
                       for i in range(4)]
            refused = await client.post(purchase_path(sale.id), json={"userId": "user0"})
            nobody = await client.post(purchase_path(sale.id), json={"userId": "zed"})
            last = None
            for ticket in tickets:
                body = await wait_for(client, sale.id, ticket["ticket"], "admitted")
                if body["position"] == 4:
                    last = ticket
            first = next(t for t in tickets if t is not last)
            admitted = await wait_for(client, sale.id, first["ticket"], "admitted")
            forged = await client.post(purchase_path(sale.id), json={
                "userId": "zed", "admissionToken": admitted["admissionToken"]})
            bare = await client.post(purchase_path(sale.id), json={"userId": first["userId"]})
            bought = await client.post(purchase_path(sale.id), json={
                "userId": first["userId"], "admissionToken": admitted["admissionToken"]})
    body = assert_error(refused, 403, "NOT_ADMITTED", detailed=True)
    assert body["details"]["position"] is None  # not placed before the opening
    assert assert_error(nobody, 403, "NOT_ADMITTED", detailed=True)["details"] == {
        "position": None, "ahead": None}
    assert_error(forged, 403, "NOT_ADMITTED", detailed=True)
    assert assert_error(bare, 403, "NOT_ADMITTED", detailed=True)["details"]["ahead"] == 0
    assert bought.status_code == 201, bought.text
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["user_id"] for r in rows] == [first["userId"]]


async def test_the_order_is_the_seeds_and_admission_follows_it(settings):
    """Before the opening the line shows only its commitment; after it, the audit reveals a
    seed whose sha256 is that commitment, the early tickets' order is the one the seed gives,
    and they were admitted in that order, a later arrival after them."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(seconds=2),
                           waiting_room=replace(ROOM, admit_per_s=20.0))
    with trio.fail_after(40):
        async with live_server(settings) as server:
            client = server.client
            early = [data_of(await client.post(queue_path(sale.id), json={"userId": f"e{i:02}"}))
                     for i in range(20)]
            before = data_of(await client.get(fill(QUEUE_AUDIT, sale.id)))
            while datetime.now(UTC) < sale.start_time + timedelta(seconds=0.5):
                await trio.sleep(0.1)
            late = data_of(await client.post(queue_path(sale.id), json={"userId": "late"}))
            await wait_for(client, sale.id, late["ticket"], "admitted")
            after = data_of(await client.get(fill(QUEUE_AUDIT, sale.id)))
    assert before["seed"] is None and before["ordered"] is False
    assert after["commitment"] == before["commitment"]
    seed = bytes.fromhex(after["seed"])
    assert hashlib.sha256(seed).hexdigest() == after["commitment"]
    by_position = sorted(after["tickets"], key=lambda t: t["position"])
    early_ids = [uuid.UUID(t["ticket"]) for t in early]
    assert [uuid.UUID(t["ticket"]) for t in by_position[:20]] == line_order(seed, early_ids)
    assert by_position[20]["ticket"] == late["ticket"] and late["position"] == 21
    admitted = [t["admittedAt"] for t in by_position]
    assert None not in admitted and admitted == sorted(admitted)


async def test_the_stream_tells_the_ticket_its_turn(settings):
    """A ticket's stream opens with the ticket, then sends ``admitted`` with its token."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(seconds=2),
                           waiting_room=ROOM)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            ticket = data_of(await server.client.post(queue_path(sale.id),
                                                      json={"userId": "alice"}))
            path = ticket_path(sale.id, ticket["ticket"]) + "/events"
            async with server.client.stream("GET", path) as response:
                reader = EventReader(response)
                first = await reader.next()
                turn = await reader.next_named("admitted", timeout_s=15)
    assert first.name == "ticket" and first.data["status"] == "waiting"
    assert turn.data["status"] == "admitted" and turn.data["position"] == 1
    assert turn.data["admissionToken"]


async def test_the_line_closes_when_the_sale_sells_out(settings):
    """Once every unit is sold the line closes: a waiting stream gets ``closed`` with
    SOLD_OUT, and a new join is 409 SOLD_OUT."""
    # One admission every 10 s: alice's at the opening, carol's (behind her) long after.
    sale = await make_sale(settings.database_url, stock=1, starts_in=timedelta(seconds=3),
                           waiting_room=replace(ROOM, admit_per_s=0.1))
    with trio.fail_after(40):
        async with live_server(settings) as server:
            client = server.client
            first = data_of(await client.post(queue_path(sale.id), json={"userId": "alice"}))
            while datetime.now(UTC) < sale.start_time:
                await trio.sleep(0.1)
            waiting = data_of(await client.post(queue_path(sale.id), json={"userId": "carol"}))
            body = await wait_for(client, sale.id, first["ticket"], "admitted")
            bought = await client.post(purchase_path(sale.id), json={
                "userId": "alice", "admissionToken": body["admissionToken"]})
            async with client.stream("GET", ticket_path(sale.id, waiting["ticket"]) + "/events"
                                     ) as response:
                closed = await EventReader(response).next_named("closed", timeout_s=10)
            refused = await client.post(queue_path(sale.id), json={"userId": "dave1"})
    assert bought.status_code == 201, bought.text
    assert closed.data["status"] == "closed" and closed.data["closedReason"] == "SOLD_OUT"
    assert_error(refused, 409, "SOLD_OUT")


async def test_a_sale_without_a_waiting_room_has_no_line(settings):
    """Without a waiting room the queue routes are 404 and a purchase needs no token."""
    sale = await make_sale(settings.database_url)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            joined = await server.client.post(queue_path(sale.id), json={"userId": "alice"})
            bought = await server.client.post(purchase_path(sale.id), json={"userId": "alice"})
            sale_body = data_of(await server.client.get(f"/api/v1/flash-sales/{sale.id}"))
    assert_error(joined, 404, "TICKET_NOT_FOUND")
    assert bought.status_code == 201
    assert "waitingRoom" not in sale_body


async def test_a_proof_of_work_is_asked_when_set(settings):
    """With FLASHFLOW_LINE_PROOF_BITS a join without a valid proof is 400 and writes
    nothing; with one it is a ticket."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(minutes=5),
                           waiting_room=ROOM)
    settings = replace(settings, line_proof_bits=8)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            line = data_of(await server.client.get(queue_path(sale.id)))
            bare = await server.client.post(queue_path(sale.id), json={"userId": "alice"})
            wrong = await server.client.post(queue_path(sale.id),
                                             json={"userId": "alice", "proof": "x"})
            proof = solve_proof(sale.id, "alice", 8)
            joined = await server.client.post(queue_path(sale.id),
                                              json={"userId": "alice", "proof": proof})
    assert line["proofBits"] == 8
    assert_error(bare, 400, "VALIDATION_ERROR")
    assert joined.status_code == 201
    rows = await pg(settings.database_url, fetch,
                    "SELECT count(*) AS n FROM tickets WHERE sale_id = $1", sale.id)
    assert rows[0]["n"] == 1
    assert wrong.status_code in (201, 400)  # "x" may happen to hold: 1 in 256


async def test_with_holds_the_line_moves_until_every_unit_is_confirmed(settings):
    """A held unit may come back: the line stays open and keeps admitting while the only
    unit is held, and closes (SOLD_OUT) once the hold is confirmed."""
    settings = replace(settings, admin_token="admin-token-for-tests")
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60,
                           starts_in=timedelta(seconds=1),
                           waiting_room=replace(ROOM, admit_per_s=2.0))
    confirm = {"Authorization": "Bearer admin-token-for-tests"}
    with trio.fail_after(40):
        async with live_server(settings) as server:
            client = server.client
            first = data_of(await client.post(queue_path(sale.id), json={"userId": "alice"}))
            second = data_of(await client.post(queue_path(sale.id), json={"userId": "bobby"}))
            mine = await wait_for(client, sale.id, first["ticket"], "admitted")
            held = await client.post(purchase_path(sale.id), json={
                "userId": "alice", "admissionToken": mine["admissionToken"]})
            # The unit is held, not sold for good: the line goes on to the next ticket.
            theirs = await wait_for(client, sale.id, second["ticket"], "admitted")
            open_line = data_of(await client.get(queue_path(sale.id)))
            paid = await client.post(confirm_path(sale.id, held.json()["data"]["purchaseId"]),
                                     headers=confirm)
            with trio.fail_after(10):
                while "closedReason" not in (line := data_of(await client.get(
                        queue_path(sale.id)))):
                    await trio.sleep(0.1)
            late = await client.post(queue_path(sale.id), json={"userId": "carol"})
    assert held.status_code == 201 and held.json()["data"]["status"] == "held"
    assert theirs["status"] == "admitted" and "closedReason" not in open_line
    assert paid.status_code == 200
    assert line["closedReason"] == "SOLD_OUT"
    assert_error(late, 409, "SOLD_OUT")


async def test_with_tokens_the_ticket_and_the_admission_are_the_token_users(settings):
    """With bearer tokens on, a join takes the token's sub as the user, and the admission
    token it is given buys only for that user."""
    settings = replace(settings, auth_jwt_secret="s" * 32)
    sale = await make_sale(settings.database_url, starts_in=timedelta(seconds=1),
                           waiting_room=ROOM)
    alice = {"Authorization": f"Bearer {mint(settings, 'alice')}"}
    bobby = {"Authorization": f"Bearer {mint(settings, 'bobby')}"}
    with trio.fail_after(30):
        async with live_server(settings) as server:
            client = server.client
            ticket = data_of(await client.post(queue_path(sale.id), json={}, headers=alice))
            admitted = await wait_for(client, sale.id, ticket["ticket"], "admitted")
            stolen = await client.post(purchase_path(sale.id), headers=bobby,
                                       json={"admissionToken": admitted["admissionToken"]})
            bought = await client.post(purchase_path(sale.id), headers=alice,
                                       json={"admissionToken": admitted["admissionToken"]})
    assert ticket["userId"] == "alice"
    assert_error(stolen, 403, "NOT_ADMITTED", detailed=True)
    assert bought.status_code == 201 and bought.json()["data"]["userId"] == "alice"
