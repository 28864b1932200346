"""Where a buyer stands in a sale with holds, as the status read says it; who may confirm;
and the end of a sale with holds. Against real Redis and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import trio

from flashflow.http.holds import PAYMENTS_CHALLENGE
from flashflow.http.wire import (
    CURRENT_PURCHASE,
    admin_end_path,
    cancel_path,
    confirm_path,
    purchase_path,
)
from flashflow.tokens import mint

from ..helpers import assert_error, fetch, live_server, make_sale, pg
from .test_auth import bearer, hs_settings  # noqa: F401 - the fixture
from .test_holds_api import AUTH, admin, rows, standing

HELD_KEYS = ["purchased", "purchaseId", "purchasedAt", "status", "expiresAt"]
CONFIRMED_KEYS = ["purchased", "purchaseId", "purchasedAt", "status"]
PLACE_KEYS = ["purchased", "status", "position", "waitlistLength"]


async def test_the_status_read_says_each_standing_exactly(settings):
    """held (with expiresAt), confirmed, waitlisted (position, length), lapsed, cancelled,
    closed and none: each status read body, key for key, in order."""
    # Status reads spend the user's tokens; the limit is not what is tested here.
    settings = replace(admin(settings), rate_user_burst=1000, rate_user_per_s=1000.0)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=3)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            alice = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            await c.post(CURRENT_PURCHASE, json={"userId": "erin1"})
            placed = [await c.post(CURRENT_PURCHASE, json={"userId": u})
                      for u in ("bobby", "carol", "frank")]
            deleted = await c.delete(CURRENT_PURCHASE, params={"userId": "erin1"})
            held = await standing(c, "alice")
            cancelled = await standing(c, "erin1")
            waiting = await standing(c, "carol")
            nothing = await standing(c, "david")
            offered = await standing(c, "bobby")
            paid = await c.post(confirm_path(sale.id, offered["purchaseId"]), headers=AUTH)
            confirmed = await standing(c, "bobby")
            with trio.fail_after(10):  # alice's hold lapses 3 s after it was made
                while (lapsed := await standing(c, "alice"))["status"] == "held":
                    await trio.sleep(0.2)
            carol = await standing(c, "carol")
            last = await c.post(confirm_path(sale.id, carol["purchaseId"]), headers=AUTH)
            closed = await standing(c, "frank")
            late = await c.post(CURRENT_PURCHASE, json={"userId": "george"})
            frank_again = await c.post(CURRENT_PURCHASE, json={"userId": "frank"})
    assert alice.status_code == 201 and [p.status_code for p in placed] == [202] * 3
    assert deleted.status_code == 200, deleted.text
    expected_hold = alice.json()["data"]
    assert list(held) == HELD_KEYS
    assert held == {"purchased": True, "purchaseId": expected_hold["purchaseId"],
                    "purchasedAt": expected_hold["purchasedAt"], "status": "held",
                    "expiresAt": expected_hold["expiresAt"]}
    assert cancelled == {"purchased": False, "status": "cancelled"}
    assert list(waiting) == PLACE_KEYS
    assert waiting == {"purchased": False, "status": "waitlisted", "position": 1,
                       "waitlistLength": 2}
    assert nothing == {"purchased": False}
    assert offered["status"] == "held"
    assert paid.status_code == 200, paid.text
    assert list(confirmed) == CONFIRMED_KEYS
    assert confirmed == {k: offered[k] for k in CONFIRMED_KEYS} | {"status": "confirmed"}
    assert lapsed == {"purchased": False, "status": "lapsed"}
    assert carol["status"] == "held", carol
    assert last.status_code == 200, last.text
    assert list(closed) == PLACE_KEYS
    assert (closed["purchased"], closed["status"]) == (False, "closed")
    assert_error(late, 409, "SOLD_OUT")
    assert_error(frank_again, 409, "SOLD_OUT")


async def test_the_payment_step_needs_the_payments_scope(hs_settings):  # noqa: F811
    """With buyers' tokens on and no admin token: a JWT whose scope holds
    flashflow:payments confirms and cancels; the buyer's own JWT, one with a look-alike scope
    and one signed with another key are 401 with the payments challenge, changing nothing."""
    settings = hs_settings
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    forger = replace(settings, auth_jwt_secret="another-secret-0123456789abcdefghij")
    payments = bearer(mint(settings, "shop", scope="openid flashflow:payments"))
    refused = [bearer(mint(settings, "alice")),
               bearer(mint(settings, "alice", scope="flashflow:payment flashflow:paymentsx")),
               bearer(mint(forger, "shop", scope="flashflow:payments")),
               {}]
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            alice = (await c.post(CURRENT_PURCHASE, json={},
                                  headers=bearer(mint(settings, "alice")))).json()["data"]
            bobby = (await c.post(CURRENT_PURCHASE, json={},
                                  headers=bearer(mint(settings, "bobby")))).json()["data"]
            answers = []
            for headers in refused:
                answers.append(await c.post(confirm_path(sale.id, alice["purchaseId"]),
                                            headers=headers))
                answers.append(await c.post(cancel_path(sale.id, bobby["purchaseId"]),
                                            headers=headers))
            still = await rows(settings, sale.id)
            confirmed = await c.post(confirm_path(sale.id, alice["purchaseId"]),
                                     headers=payments)
            cancelled = await c.post(cancel_path(sale.id, bobby["purchaseId"]),
                                     headers=payments)
    assert alice["status"] == bobby["status"] == "held"
    for answer in answers:
        assert_error(answer, 401, "UNAUTHORIZED")
        assert answer.headers["WWW-Authenticate"] == PAYMENTS_CHALLENGE
    assert sorted((r["user_id"], r["confirmed_at"]) for r in still) == [
        ("alice", None), ("bobby", None)]
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["data"]["status"] == "confirmed"
    assert cancelled.status_code == 200, cancelled.text
    [row] = await rows(settings, sale.id)
    assert row["user_id"] == "alice" and row["confirmed_at"] is not None


async def test_at_the_end_no_hold_or_place_is_made_and_the_line_closes(settings):
    """Once the sale ends: a press is 409 SALE_NOT_ACTIVE (no hold, no place), the waiting
    buyer's standing is closed, a hold made before keeps its window and confirms, and a hold
    cancelled after the end goes to nobody."""
    settings = replace(admin(settings), rate_user_burst=1000, rate_user_per_s=1000.0)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            alice = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            carol = (await c.post(CURRENT_PURCHASE, json={"userId": "carol"})).json()["data"]
            placed = await c.post(CURRENT_PURCHASE, json={"userId": "bobby"})
            ended = await c.post(admin_end_path(sale.id), headers=AUTH)
            late = await c.post(purchase_path(sale.id), json={"userId": "david"})
            waiting_again = await c.post(purchase_path(sale.id), json={"userId": "bobby"})
            bobby = await standing(c, "bobby", purchase_path(sale.id))
            paid = await c.post(confirm_path(sale.id, carol["purchaseId"]), headers=AUTH)
            given_back = await c.delete(purchase_path(sale.id), params={"userId": "alice"})
            bobby_after = await standing(c, "bobby", purchase_path(sale.id))
    assert placed.status_code == 202, placed.text
    assert ended.status_code == 200, ended.text
    assert_error(late, 409, "SALE_NOT_ACTIVE")
    assert_error(waiting_again, 409, "SALE_NOT_ACTIVE")
    assert (bobby["status"], bobby["purchased"]) == ("closed", False)
    assert paid.status_code == 200, paid.text
    assert given_back.status_code == 200, given_back.text
    assert bobby_after["status"] == "closed"
    assert [r["user_id"] for r in await rows(settings, sale.id)] == ["carol"]
    line = await pg(settings.database_url, fetch,
                    "SELECT user_id, offered_at FROM waitlist WHERE sale_id = $1", sale.id)
    assert [(r["user_id"], r["offered_at"]) for r in line] == [("bobby", None)]
    endings = await pg(settings.database_url, fetch,
                       "SELECT user_id, offered_user FROM hold_endings")
    assert [tuple(e.values()) for e in endings] == [("alice", None)]
    assert alice["status"] == "held"
