"""Contract tests of a sale with holds: holds, confirm and cancel, the waitlist, the status
read, against real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import replace

import trio

from flashflow.http.wire import (
    CURRENT,
    CURRENT_PURCHASE,
    cancel_path,
    confirm_path,
)

from ..helpers import assert_error, fetch, live_server, make_sale, pg

ADMIN = "admin-token-for-tests"


def admin(settings):
    return replace(settings, admin_token=ADMIN)


AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def rows(settings, sale_id):
    return await pg(settings.database_url, fetch,
                    "SELECT user_id, expires_at, confirmed_at FROM purchases WHERE sale_id = $1",
                    sale_id)


async def test_a_hold_then_the_same_hold_then_confirm(settings):
    """201 held with expiresAt; pressing again is 200 with the same hold; confirm is 200 and
    idempotent; the row is confirmed."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            again = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            body = first.json()["data"]
            status = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"})
            confirmed = await server.client.post(confirm_path(sale.id, body["purchaseId"]),
                                                 headers=AUTH)
            twice = await server.client.post(confirm_path(sale.id, body["purchaseId"]),
                                             headers=AUTH)
            current = await server.client.get(CURRENT)
    assert first.status_code == 201, first.text
    assert body["status"] == "held" and body["expiresAt"].endswith("Z")
    assert again.status_code == 200 and again.json()["data"] == body
    assert status.json()["data"] == {"purchased": True, "purchaseId": body["purchaseId"],
                                     "purchasedAt": body["purchasedAt"], "status": "held",
                                     "expiresAt": body["expiresAt"]}
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["data"]["status"] == "confirmed"
    assert twice.json() == confirmed.json()
    data = current.json()["data"]
    assert (data["remainingStock"], data["heldStock"], data["confirmedStock"],
            data["waitlistLength"], data["holdSeconds"]) == (1, 0, 1, 0, 60)
    [row] = await rows(settings, sale.id)
    assert row["confirmed_at"] is not None and row["confirmed_at"] < row["expires_at"]


async def test_full_sale_waitlists_and_a_cancel_offers_in_order(settings):
    """Stock 1 held: the next presses get 202 places in order; a cancel hands the unit to the
    first in line as a new hold; confirming it sells out and closes the line."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            bob = await c.post(CURRENT_PURCHASE, json={"userId": "bob12"})
            carol = await c.post(CURRENT_PURCHASE, json={"userId": "carol"})
            bob_again = await c.post(CURRENT_PURCHASE, json={"userId": "bob12"})
            cancelled = await c.post(cancel_path(sale.id, held["purchaseId"]), headers=AUTH)
            bob_status = (await c.get(CURRENT_PURCHASE, params={"userId": "bob12"})).json()
            carol_status = (await c.get(CURRENT_PURCHASE, params={"userId": "carol"})).json()
            alice_status = (await c.get(CURRENT_PURCHASE, params={"userId": "alice"})).json()
            late = await c.post(confirm_path(sale.id, held["purchaseId"]), headers=AUTH)
            paid = await c.post(confirm_path(sale.id, bob_status["data"]["purchaseId"]),
                                headers=AUTH)
            carol_after = (await c.get(CURRENT_PURCHASE, params={"userId": "carol"})).json()
            dave = await c.post(CURRENT_PURCHASE, json={"userId": "dave1"})
    assert bob.status_code == 202, bob.text
    assert bob.json()["data"]["position"] == 1 and bob.json()["data"]["status"] == "waitlisted"
    assert carol.status_code == 202 and carol.json()["data"]["position"] == 2
    assert bob_again.status_code == 202 and bob_again.json() == bob.json() | {
        "data": bob.json()["data"] | {"waitlistLength": 2}}
    assert cancelled.status_code == 200, cancelled.text
    assert bob_status["data"]["status"] == "held"
    assert carol_status["data"]["status"] == "waitlisted"
    assert carol_status["data"]["position"] == 1
    assert alice_status["data"] == {"purchased": False, "status": "cancelled"}
    assert_error(late, 409, "HOLD_CANCELLED")
    assert paid.status_code == 200
    assert carol_after["data"]["status"] == "closed"
    assert_error(dave, 409, "SOLD_OUT")


async def test_a_hold_lapses_on_time_and_goes_to_the_first_in_line(settings):
    """A 2-second hold lapses within a second of its end; the waiting buyer gets it."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=2)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            waiting = await c.post(CURRENT_PURCHASE, json={"userId": "bob12"})
            await trio.sleep(3.0)
            alice = (await c.get(CURRENT_PURCHASE, params={"userId": "alice"})).json()["data"]
            bob = (await c.get(CURRENT_PURCHASE, params={"userId": "bob12"})).json()["data"]
            late = await c.post(confirm_path(sale.id, held["purchaseId"]), headers=AUTH)
    assert waiting.status_code == 202
    assert alice["status"] == "lapsed"
    assert bob["status"] == "held"
    assert_error(late, 409, "HOLD_EXPIRED")
    endings = await pg(settings.database_url, fetch,
                       "SELECT ended_at - expires_at AS late, gate_done FROM hold_endings")
    assert len(endings) == 1 and endings[0]["gate_done"]
    assert endings[0]["late"].total_seconds() < 1.0


async def test_unknown_purchase_and_bad_ids(settings):
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            unknown = await server.client.post(confirm_path(sale.id, uuid.uuid4()), headers=AUTH)
            bad = await server.client.post(confirm_path(sale.id, "nope"), headers=AUTH)
            anonymous = await server.client.post(confirm_path(sale.id, uuid.uuid4()))
    assert_error(unknown, 404, "PURCHASE_NOT_FOUND")
    assert_error(bad, 400, "VALIDATION_ERROR")
    assert_error(anonymous, 401, "UNAUTHORIZED")
