"""The bodies on the wire, key for key and byte for byte: a sale without holds answers exactly
as the original product did, and a sale with holds adds only its declared fields.

The expected keys are written out here, in the order the original product sends them, rather
than taken from :mod:`flashflow.http.wire`, so a field that creeps into a body fails a test.
Both fronts (the fast path and Quart alone) are held to them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import httpx
import trio

from actors.holds import TALLY_TTL_S
from flashflow.http.wire import (
    CURRENT,
    CURRENT_PURCHASE,
    SALES,
    confirm_path,
    purchase_path,
    sale_path,
)

from ..helpers import assert_error, live_server, make_sale
from .test_holds_api import AUTH, admin

#: ``GET /current`` of the original product.
SALE_KEYS = ["id", "productName", "totalStock", "remainingStock", "startTime", "endTime",
             "status", "serverTime"]
#: What a sale with holds adds, after them.
HOLD_SALE_KEYS = [*SALE_KEYS, "holdSeconds", "heldStock", "confirmedStock", "waitlistLength"]
#: A ``201`` purchase of the original product.
PURCHASE_KEYS = ["purchaseId", "userId", "productName", "status", "purchasedAt"]
#: A status read that found a purchase, in the original product.
BOUGHT_KEYS = ["purchased", "purchaseId", "purchasedAt"]


def data_of(response: httpx.Response, keys: list[str]) -> dict:
    """The envelope's data, checked to be exactly ``keys`` in that order, sent as the original
    product's encoder writes it (``json.dumps`` defaults)."""
    data = json.loads(response.content)["data"]
    assert list(data) == keys, list(data)
    assert response.content == json.dumps({"data": data}).encode()
    return data


def moment(text: str) -> datetime:
    """A wire timestamp (ISO 8601, milliseconds, ``Z``)."""
    assert text.endswith("Z") and len(text) == len("2030-01-01T10:00:00.000Z"), text
    return datetime.fromisoformat(text)


async def test_a_sale_without_holds_answers_as_the_original_product(settings):
    """GET /current, by id and in the list, a 201, the status reads, the 409s: the original
    keys in their order, nothing more, and no 200 or 202 of a sale with holds."""
    sale = await make_sale(settings.database_url, stock=2, product="Lamp")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            before = await c.get(CURRENT)
            by_id = await c.get(sale_path(sale.id))
            listed = await c.get(SALES)
            bought = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            again = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            second = await c.post(purchase_path(sale.id), json={"userId": "bobby"})
            sold_out = await c.post(CURRENT_PURCHASE, json={"userId": "carol"})
            status = await c.get(CURRENT_PURCHASE, params={"userId": "alice"})
            nothing = await c.get(CURRENT_PURCHASE, params={"userId": "carol"})
            after = await c.get(CURRENT)
    for response in (before, by_id, after):
        assert response.status_code == 200, response.text
        data = data_of(response, SALE_KEYS)
        assert (data["id"], data["productName"], data["totalStock"], data["status"]) == (
            str(sale.id), "Lamp", 2, "active")
    [entry] = json.loads(listed.content)["data"]
    assert list(entry) == SALE_KEYS
    assert (data_of(before, SALE_KEYS)["remainingStock"],
            data_of(after, SALE_KEYS)["remainingStock"]) == (2, 0)
    assert (bought.status_code, second.status_code) == (201, 201), bought.text
    purchase = data_of(bought, PURCHASE_KEYS)
    assert (purchase["userId"], purchase["productName"], purchase["status"]) == (
        "alice", "Lamp", "confirmed")
    moment(purchase["purchasedAt"])
    assert data_of(second, PURCHASE_KEYS)["userId"] == "bobby"
    assert_error(again, 409, "ALREADY_PURCHASED")
    assert_error(sold_out, 409, "SOLD_OUT")
    assert data_of(status, BOUGHT_KEYS) == {"purchased": True,
                                            "purchaseId": purchase["purchaseId"],
                                            "purchasedAt": purchase["purchasedAt"]}
    assert nothing.content == b'{"data": {"purchased": false}}'


async def test_a_sale_with_holds_adds_only_its_declared_fields(settings):
    """With holds: the sale adds holdSeconds and its units by standing; a 201 hold adds
    expiresAt (the window after purchasedAt); the 200 of a second press is the 201's body;
    a 202 place and a confirmed purchase carry exactly their keys."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, product="Lamp", hold_seconds=90)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            c = server.client
            before = await c.get(CURRENT)
            held = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            again = await c.post(purchase_path(sale.id), json={"userId": "alice"})
            placed = await c.post(CURRENT_PURCHASE, json={"userId": "bobby"})
            await trio.sleep(TALLY_TTL_S)  # the shown split is at most this old
            during = await c.get(sale_path(sale.id))
            purchase_id = json.loads(held.content)["data"]["purchaseId"]
            confirmed = await c.post(confirm_path(sale.id, purchase_id), headers=AUTH)
            await trio.sleep(TALLY_TTL_S)
            after = await c.get(CURRENT)
    shown = data_of(before, HOLD_SALE_KEYS)
    assert {k: shown[k] for k in HOLD_SALE_KEYS[-4:]} == {
        "holdSeconds": 90, "heldStock": 0, "confirmedStock": 0, "waitlistLength": 0}
    assert (shown["remainingStock"], shown["status"]) == (1, "active")
    assert held.status_code == 201, held.text
    hold = data_of(held, [*PURCHASE_KEYS, "expiresAt"])
    assert (hold["userId"], hold["status"]) == ("alice", "held")
    window = moment(hold["expiresAt"]) - moment(hold["purchasedAt"])
    assert timedelta(seconds=89) < window < timedelta(seconds=91), window
    assert again.status_code == 200 and again.content == held.content
    assert placed.status_code == 202, placed.text
    assert data_of(placed, ["userId", "productName", "status", "position",
                            "waitlistLength"]) == {
        "userId": "bobby", "productName": "Lamp", "status": "waitlisted", "position": 1,
        "waitlistLength": 1}
    counts = data_of(during, HOLD_SALE_KEYS)
    assert [counts[k] for k in ("remainingStock", "heldStock", "confirmedStock",
                                "waitlistLength")] == [0, 1, 0, 1]
    assert confirmed.status_code == 200, confirmed.text
    paid = data_of(confirmed, [*PURCHASE_KEYS, "expiresAt", "confirmedAt"])
    assert paid | {"status": "held", "confirmedAt": None} == hold | {"confirmedAt": None}
    assert paid["status"] == "confirmed"
    assert moment(paid["purchasedAt"]) <= moment(paid["confirmedAt"]) < moment(
        paid["expiresAt"])
    counts = data_of(after, HOLD_SALE_KEYS)
    assert [counts[k] for k in ("remainingStock", "heldStock", "confirmedStock")] == [0, 0, 1]


async def test_a_delete_on_a_sale_without_holds_is_405_as_before(settings):
    """A sale without holds has no hold to cancel: DELETE on its purchase path is 405 in the
    envelope, naming the methods the path took before holds."""
    await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            deleted = await server.client.delete(CURRENT_PURCHASE, params={"userId": "alice"})
            status = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"})
    assert_error(deleted, 405, "METHOD_NOT_ALLOWED")
    assert deleted.headers["allow"] == "GET, HEAD, POST"
    assert status.json()["data"]["purchased"] is True
