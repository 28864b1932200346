"""Contract tests of a sale with holds: holds, confirm and cancel, the waitlist, the status
read, against real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import trio

from actors.holds import TALLY_TTL_S
from flashflow.http.wire import (
    CURRENT,
    CURRENT_PURCHASE,
    cancel_path,
    confirm_path,
    purchase_path,
)

from ..helpers import (
    assert_error,
    fetch,
    live_fronts,
    live_server,
    make_sale,
    pg,
    sale_row_locked,
)

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


async def standing(client, user, path=CURRENT_PURCHASE):
    """The status read's data for ``user``."""
    response = await client.get(path, params={"userId": user})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def places(settings, sale_id):
    """The users waiting in the sale's line, in the order of their places."""
    found = await pg(settings.database_url, fetch,
                     "SELECT user_id FROM waitlist WHERE sale_id = $1 AND offered_at IS NULL "
                     "ORDER BY place", sale_id)
    return [r["user_id"] for r in found]


async def test_concurrent_presses_of_one_user_get_one_201_and_the_same_hold(settings):
    """Eight presses of one user while the first is still committing, over the fast path and
    Quart alike: exactly one 201, seven 200s with the same hold, one row, one unit held."""
    settings = replace(settings, rate_user_burst=100)  # eight presses of one user at once
    sale = await make_sale(settings.database_url, stock=3, hold_seconds=60)
    fronts = (replace(settings, fast_path=True), replace(settings, fast_path=False))
    answers = []
    with trio.fail_after(30):
        async with live_fronts(settings, fronts) as servers:
            serializer = servers[0].runtime.serializer

            async def press(i):
                answers.append(await servers[i % 2].client.post(
                    CURRENT_PURCHASE, json={"userId": "alice"}))

            # The sale's row locked: the first press waits in its commit, so the other seven
            # arrive while it is in flight.
            async with sale_row_locked(settings.database_url, sale.id) as release, \
                    trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(press, i)
                while serializer.statistics().coalesced < 7:
                    await trio.sleep(0.01)
                release()
            await trio.sleep(TALLY_TTL_S)
            current = (await servers[0].client.get(CURRENT)).json()["data"]
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    assert len({a.content for a in answers}) == 1, [a.text for a in answers]
    assert answers[0].json()["data"]["status"] == "held"
    assert len(await rows(settings, sale.id)) == 1
    assert (current["remainingStock"], current["heldStock"]) == (2, 1)


async def test_places_follow_arrival_and_a_second_press_keeps_the_place(settings):
    """With every unit held, presses one after another get 202 places 1, 2, 3... in order;
    pressing again answers the same place; presses at once get distinct places with no gap,
    numbered as PostgreSQL holds them; a cancel offers the unit to place 1 and moves the rest."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    first = [f"line-{i}" for i in range(4)]
    crowd = [f"crowd-{i}" for i in range(6)]
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            ordered = [await c.post(CURRENT_PURCHASE, json={"userId": u}) for u in first]
            again = await c.post(CURRENT_PURCHASE, json={"userId": "line-2"})
            at_once = {}

            async def press(user):
                at_once[user] = await c.post(CURRENT_PURCHASE, json={"userId": user})

            async with trio.open_nursery() as nursery:
                for user in crowd:
                    nursery.start_soon(press, user)
            line = await places(settings, sale.id)
            cancelled = await c.post(cancel_path(sale.id, held["purchaseId"]), headers=AUTH)
            offered = await standing(c, "line-0")
            moved = await standing(c, "line-2")
    assert [a.status_code for a in ordered] == [202] * 4
    assert [(a.json()["data"]["position"], a.json()["data"]["waitlistLength"])
            for a in ordered] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert again.status_code == 202
    assert again.json()["data"] == ordered[2].json()["data"] | {"waitlistLength": 4}
    assert {u: a.status_code for u, a in at_once.items()} == dict.fromkeys(crowd, 202)
    positions = {u: a.json()["data"]["position"] for u, a in at_once.items()}
    assert sorted(positions.values()) == list(range(5, 11))
    assert line[:4] == first and len(line) == 10
    assert sorted(line[4:], key=positions.__getitem__) == line[4:]
    assert cancelled.status_code == 200, cancelled.text
    assert offered["status"] == "held" and offered["purchased"] is True
    assert (moved["status"], moved["position"], moved["waitlistLength"]) == ("waitlisted", 2, 9)
    assert await places(settings, sale.id) == line[1:]


async def test_a_buyer_cancels_their_own_hold_once_and_the_unit_goes_to_the_line(settings):
    """DELETE by the buyer: 200 cancelled; the first in line gets a new hold with a full
    window; a second DELETE, and one by a user holding nothing, are 404 PURCHASE_NOT_FOUND;
    the cancelled hold can no longer be confirmed; the payment step's cancel is idempotent."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            await c.post(CURRENT_PURCHASE, json={"userId": "bobby"})
            waiting = await standing(c, "carol")
            deleted = await c.delete(CURRENT_PURCHASE, params={"userId": "alice"})
            twice = await c.delete(CURRENT_PURCHASE, params={"userId": "alice"})
            stranger = await c.delete(purchase_path(sale.id), params={"userId": "carol"})
            nobody = await c.delete(CURRENT_PURCHASE)
            bobby = await standing(c, "bobby")
            alice = await standing(c, "alice")
            late = await c.post(confirm_path(sale.id, held["purchaseId"]), headers=AUTH)
            again = [await c.post(cancel_path(sale.id, bobby["purchaseId"]), headers=AUTH)
                     for _ in range(2)]
    assert waiting == {"purchased": False}
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"data": {"purchased": False, "status": "cancelled"}}
    assert_error(twice, 404, "PURCHASE_NOT_FOUND")
    assert_error(stranger, 404, "PURCHASE_NOT_FOUND")
    assert_error(nobody, 400, "VALIDATION_ERROR")
    assert alice == {"purchased": False, "status": "cancelled"}
    assert bobby["status"] == "held" and bobby["purchaseId"] != held["purchaseId"]
    window = (datetime.fromisoformat(bobby["expiresAt"])
              - datetime.fromisoformat(bobby["purchasedAt"]))
    assert timedelta(seconds=59) < window <= timedelta(seconds=60, milliseconds=1), window
    assert_error(late, 409, "HOLD_CANCELLED")
    assert [a.status_code for a in again] == [200, 200], again[1].text
    endings = await pg(settings.database_url, fetch,
                       "SELECT user_id, outcome, offered_user FROM hold_endings "
                       "ORDER BY ended_at")
    assert [tuple(e.values()) for e in endings] == [("alice", "cancelled", "bobby"),
                                                    ("bobby", "cancelled", None)]


async def test_a_confirmed_purchase_cannot_be_cancelled(settings):
    """Once paid: the buyer's DELETE and the payment step's cancel are 409 ALREADY_CONFIRMED,
    pressing again is 409 ALREADY_PURCHASED, and the row stays confirmed."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            paid = await c.post(confirm_path(sale.id, held["purchaseId"]), headers=AUTH)
            deleted = await c.delete(CURRENT_PURCHASE, params={"userId": "alice"})
            cancelled = await c.post(cancel_path(sale.id, held["purchaseId"]), headers=AUTH)
            pressed = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            after = await standing(c, "alice")
    assert paid.status_code == 200, paid.text
    assert_error(deleted, 409, "ALREADY_CONFIRMED")
    assert_error(cancelled, 409, "ALREADY_CONFIRMED")
    assert_error(pressed, 409, "ALREADY_PURCHASED")
    assert after["status"] == "confirmed"
    [row] = await rows(settings, sale.id)
    assert row["user_id"] == "alice" and row["confirmed_at"] is not None


async def test_a_purchase_of_one_sale_is_unknown_to_another(settings):
    """Confirm or cancel naming another sale than the hold's is 404 PURCHASE_NOT_FOUND and
    leaves the hold as it was; named with its own sale, it confirms."""
    settings = admin(settings)
    mine = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    other = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(purchase_path(mine.id), json={"userId": "alice"})).json()
            purchase_id = held["data"]["purchaseId"]
            confirmed = await c.post(confirm_path(other.id, purchase_id), headers=AUTH)
            cancelled = await c.post(cancel_path(other.id, purchase_id), headers=AUTH)
            still = await standing(c, "alice", purchase_path(mine.id))
            paid = await c.post(confirm_path(mine.id, purchase_id), headers=AUTH)
    assert_error(confirmed, 404, "PURCHASE_NOT_FOUND")
    assert_error(cancelled, 404, "PURCHASE_NOT_FOUND")
    assert still["status"] == "held" and still["purchaseId"] == purchase_id
    assert paid.status_code == 200, paid.text
    assert await rows(settings, other.id) == []


async def test_a_waiting_buyer_leaves_the_line_and_those_behind_move_up(settings):
    """DELETE by a buyer in line: 200 {purchased: false}, the place is gone, the places behind
    move up, and the unit that comes back goes to the next one still waiting."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            for user in ("bobby", "carol"):
                assert (await c.post(CURRENT_PURCHASE, json={"userId": user})).status_code == 202
            left = await c.delete(CURRENT_PURCHASE, params={"userId": "bobby"})
            again = await c.delete(CURRENT_PURCHASE, params={"userId": "bobby"})
            bobby, carol = await standing(c, "bobby"), await standing(c, "carol")
            await c.post(cancel_path(sale.id, held["purchaseId"]), headers=AUTH)
            offered = await standing(c, "carol")
    assert left.status_code == 200 and left.json() == {"data": {"purchased": False}}
    assert_error(again, 404, "PURCHASE_NOT_FOUND")
    assert bobby == {"purchased": False}
    assert (carol["status"], carol["position"], carol["waitlistLength"]) == ("waitlisted", 1, 1)
    assert offered["status"] == "held"
    places = await pg(settings.database_url, fetch, "SELECT user_id FROM waitlist")
    assert [p["user_id"] for p in places] == ["carol"]
