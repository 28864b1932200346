"""The wire module: the API's paths are the public ones, and answers read back as sent."""

from __future__ import annotations

import json
import uuid

import pytest

from actors import SaleStatus, Standing
from flashflow.http import replies, wire

#: The public API's paths, as clients have always called them: the one place they are
#: written out, so a change to :mod:`flashflow.http.wire` that moves one fails here.
PUBLIC_PATHS = {
    "SALES": "/api/v1/flash-sales",
    "CURRENT": "/api/v1/flash-sales/current",
    "SALE": "/api/v1/flash-sales/<sale_id>",
    "CURRENT_PURCHASE": "/api/v1/flash-sales/current/purchase",
    "SALE_PURCHASE": "/api/v1/flash-sales/<sale_id>/purchase",
    "CURRENT_EVENTS": "/api/v1/flash-sales/current/events",
    "SALE_EVENTS": "/api/v1/flash-sales/<sale_id>/events",
    "ADMIN_SALES": "/api/v1/admin/flash-sales",
    "ADMIN_SALE": "/api/v1/admin/flash-sales/<sale_id>",
    "ADMIN_SALE_END": "/api/v1/admin/flash-sales/<sale_id>/end",
    "HEALTHZ": "/healthz",
    "READYZ": "/readyz",
    "METRICS": "/metrics",
    "OPENAPI": "/openapi.json",
}


def test_the_paths_are_the_public_api_s():
    """Every route pattern is the literal path the public API has always served."""
    assert {name: getattr(wire, name) for name in PUBLIC_PATHS} == PUBLIC_PATHS


def test_the_builders_fill_in_the_sale_id():
    """Each builder gives its pattern's path for one sale."""
    sale_id = uuid.uuid4()
    assert wire.sale_path(sale_id) == f"/api/v1/flash-sales/{sale_id}"
    assert wire.purchase_path(sale_id) == f"/api/v1/flash-sales/{sale_id}/purchase"
    assert wire.events_path(sale_id) == f"/api/v1/flash-sales/{sale_id}/events"
    assert wire.admin_sale_path(sale_id) == f"/api/v1/admin/flash-sales/{sale_id}"
    assert wire.admin_end_path(sale_id) == f"/api/v1/admin/flash-sales/{sale_id}/end"


def test_a_sale_id_is_read_from_one_non_empty_segment():
    """sale_id_in finds the id where werkzeug would, and nothing across a slash or in none."""
    assert wire.sale_id_in(wire.SALE, wire.sale_path("abc")) == "abc"
    assert wire.sale_id_in(wire.SALE_PURCHASE, wire.purchase_path("abc")) == "abc"
    for path in (wire.SALES, f"{wire.SALES}/", wire.purchase_path(""), wire.CURRENT_PURCHASE):
        assert wire.sale_id_in(wire.SALE, path) is None, path
    assert wire.sale_id_in(wire.SALE_PURCHASE, f"{wire.SALES}/purchase") is None


def test_answers_read_back_as_replies():
    """A purchase, a refusal, a status read and a sale read back as what they say."""
    purchase = {"data": {"purchaseId": "p-1", "userId": "alice", "status": "confirmed"}}
    refusal = json.loads(wire.error_body(409, "SOLD_OUT", "Sold out.", "c-1"))
    assert replies.read_reply(201, purchase) == replies.Reply(201, purchase_id="p-1",
                                                              standing="confirmed")
    assert replies.read_reply(409, refusal) == replies.Reply(409, error_code="SOLD_OUT")
    assert replies.read_reply(200, {"data": {"purchased": False}}) == replies.Reply(
        200, purchased=False)
    assert replies.read_reply(200, {"data": {"remainingStock": 3}}).remaining_stock == 3
    assert replies.read_reply(200, {"data": []}) == replies.Reply(200)


def test_a_body_that_is_not_json_reads_as_an_empty_one():
    """Bytes that are not a JSON object (or none) give a reply with the status alone."""
    assert replies.read_reply_bytes(502, b"<html>bad gateway</html>") == replies.Reply(502)
    assert replies.read_reply_bytes(0, None) == replies.Reply(0)
    assert replies.read_reply_bytes(201, b'{"data": {"purchaseId": "p-2"}}').purchase_id == "p-2"


def test_a_buyer_s_standings_are_the_actors_own():
    """The standings a status read may report are Standing's values, in order."""
    assert wire.STANDINGS == [standing.value for standing in Standing]


def test_a_sale_s_statuses_are_the_actors_own():
    """The status enum the sale body declares is SaleStatus's values, in order."""
    assert wire.SALE_BODY.fields["status"]["enum"] == [status.value for status in SaleStatus]


def test_a_body_is_built_in_its_declared_order_and_only_of_its_fields():
    """build() sends the declared order whatever the call's, and refuses a stray field."""
    built = wire.PURCHASE_STATUS_BODY.build(purchasedAt="t", purchased=True, purchaseId="p")
    assert list(built) == ["purchased", "purchaseId", "purchasedAt"]
    with pytest.raises(TypeError):
        wire.PURCHASE_STATUS_BODY.build(purchased=False, stray=1)
