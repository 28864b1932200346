"""The live side of a sale with holds: a buyer's own stream, the sale's stream, and the holds'
counters in /metrics, over a real server, Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from actors.holds import TALLY_TTL_S
from flashflow.http.wire import (
    CURRENT_PURCHASE,
    CURRENT_PURCHASE_EVENTS,
    METRICS,
    confirm_path,
    events_path,
    purchase_events_path,
)

from ..helpers import LiveServer, assert_error, live_server, make_sale
from .test_holds_api import AUTH, admin, standing
from .test_holds_wire import HOLD_SALE_KEYS, SALE_KEYS
from .test_metrics import samples, value
from .test_sse import Event, EventReader

#: A ``stock`` event of the original product, and what a sale with holds adds after it.
STOCK_KEYS = ["saleId", "remainingStock", "serverTime"]
HOLD_STOCK_KEYS = [*STOCK_KEYS, "holdSeconds", "heldStock", "confirmedStock", "waitlistLength"]
STATUS_KEYS = ["saleId", "status", "soldOut", "remainingStock", "serverTime"]


@asynccontextmanager
async def buyer_stream(server: LiveServer, sale_id, user: str) -> AsyncIterator[EventReader]:
    """A buyer's own stream of their standing in a sale (None: the current sale)."""
    path = CURRENT_PURCHASE_EVENTS if sale_id is None else purchase_events_path(sale_id)
    async with server.client.stream("GET", path, params={"userId": user}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventReader(response)


async def standings(reader: EventReader, timeout_s: float = 5.0) -> Event:
    """The next ``standing`` event (heartbeats skipped)."""
    return await reader.next_named("standing", timeout_s)


async def ends(reader: EventReader, within_s: float = 3.0) -> bool:
    """Whether the stream ends within ``within_s``, with nothing but heartbeats first."""
    with trio.move_on_after(within_s):
        try:
            while (await reader.next(timeout_s=within_s + 1)).name == "comment":
                pass
        except EOFError:
            return True
    return False


async def test_a_buyer_s_stream_follows_the_offer_then_the_confirm(settings):
    """Each waiting buyer's stream sends their standing at once; when the holder cancels,
    the first in line hears of the hold offered, the second of their new place; when that
    hold is confirmed (the last unit), the first's stream ends on confirmed and the second's
    on closed."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            await c.post(CURRENT_PURCHASE, json={"userId": "bobby"})
            await c.post(CURRENT_PURCHASE, json={"userId": "carol"})
            async with buyer_stream(server, sale.id, "bobby") as bobby, \
                    buyer_stream(server, sale.id, "carol") as carol:
                with trio.fail_after(3):  # at once
                    bobby_first = await bobby.next()
                    carol_first = await carol.next()
                watching = server.runtime.holds.statistics().watchers
                cancelled = await c.delete(CURRENT_PURCHASE, params={"userId": "alice"})
                offered = await standings(bobby)
                moved = await standings(carol)
                paid = await c.post(confirm_path(sale.id, offered.data["purchaseId"]),
                                    headers=AUTH)
                confirmed = await standings(bobby)
                bobby_ended = await ends(bobby)
                closed = await standings(carol)
                carol_ended = await ends(carol)
                watchers = server.runtime.holds.statistics().watchers
    assert bobby_first.name == "standing" and bobby_first.retry and bobby_first.id == "1"
    assert bobby_first.data == {"purchased": False, "status": "waitlisted", "position": 1,
                                "waitlistLength": 2}
    assert carol_first.data == {"purchased": False, "status": "waitlisted", "position": 2,
                                "waitlistLength": 2}
    assert cancelled.status_code == 200, cancelled.text
    assert offered.data["status"] == "held" and offered.data["purchased"] is True
    assert offered.data["expiresAt"] > offered.data["purchasedAt"]
    assert int(offered.id) > int(bobby_first.id)
    assert moved.data == {"purchased": False, "status": "waitlisted", "position": 1,
                          "waitlistLength": 1}
    assert paid.status_code == 200, paid.text
    assert confirmed.data == {"purchased": True, "purchaseId": offered.data["purchaseId"],
                              "purchasedAt": offered.data["purchasedAt"], "status": "confirmed"}
    assert bobby_ended, "a confirmed buyer's stream ends"
    assert (closed.data["purchased"], closed.data["status"]) == (False, "closed")
    assert carol_ended, "a closed waitlist ends the waiting buyer's stream"
    assert watching == 2
    assert watchers == 0, "an ended stream no longer follows its buyer"


async def test_a_buyer_s_stream_of_nothing_then_a_hold(settings):
    """A buyer with nothing in the sale hears ``purchased: false`` at once, then their hold
    when they press; the stream does not end while they only hold."""
    await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server, \
                buyer_stream(server, None, "alice") as alice:
            with trio.fail_after(3):
                first = await alice.next()
            held = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            then = await standings(alice)
            quiet = await ends(alice)
    assert first.data == {"purchased": False}
    assert held.status_code == 201
    assert then.data["status"] == "held"
    assert then.data["purchaseId"] == held.json()["data"]["purchaseId"]
    assert not quiet


async def test_a_buyer_s_stream_is_refused_without_a_buyer_or_a_sale(settings):
    """No userId is 400 VALIDATION_ERROR; an unknown sale is 404 SALE_NOT_FOUND; neither
    follows anyone."""
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            nobody = await server.client.get(purchase_events_path(sale.id))
            unknown = await server.client.get(purchase_events_path(uuid.uuid4()),
                                              params={"userId": "alice"})
            watchers = server.runtime.holds.statistics().watchers
    assert_error(nobody, 400, "VALIDATION_ERROR")
    assert_error(unknown, 404, "SALE_NOT_FOUND")
    assert watchers == 0


@asynccontextmanager
async def sale_stream(server: LiveServer, sale_id) -> AsyncIterator[EventReader]:
    """The sale's own event stream."""
    async with server.client.stream("GET", events_path(sale_id)) as response:
        yield EventReader(response)


async def stock_until(reader: EventReader, field: str, wanted: int) -> Event:
    """The first ``stock`` event whose ``field`` is ``wanted`` (earlier ones skipped)."""
    with trio.fail_after(5):
        while True:
            event = await reader.next_named("stock")
            if event.data[field] == wanted:
                return event


async def test_the_sale_s_stream_shows_where_the_units_stand(settings):
    """A sale with holds: the snapshot and stock events carry holdSeconds, heldStock,
    confirmedStock and waitlistLength; a confirm, which leaves the free stock as it is, sends
    a stock event of its own."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=2, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server, sale_stream(server, sale.id) as reader:
            snapshot = await reader.next_named("snapshot")
            held = (await server.client.post(CURRENT_PURCHASE,
                                             json={"userId": "alice"})).json()["data"]
            holding = await stock_until(reader, "heldStock", 1)
            paid = await server.client.post(confirm_path(sale.id, held["purchaseId"]),
                                            headers=AUTH)
            confirmed = await reader.next_named("stock", timeout_s=1 + 2 * TALLY_TTL_S + 1)
    assert list(snapshot.data) == HOLD_SALE_KEYS
    assert {k: snapshot.data[k] for k in HOLD_SALE_KEYS[-4:]} == {
        "holdSeconds": 60, "heldStock": 0, "confirmedStock": 0, "waitlistLength": 0}
    assert snapshot.data["remainingStock"] == 2
    assert list(holding.data) == HOLD_STOCK_KEYS
    assert [holding.data[k] for k in HOLD_STOCK_KEYS[1:2] + HOLD_STOCK_KEYS[3:]] == [
        1, 60, 1, 0, 0]
    assert paid.status_code == 200, paid.text
    assert [confirmed.data[k] for k in HOLD_STOCK_KEYS[1:2] + HOLD_STOCK_KEYS[3:]] == [
        1, 60, 0, 1, 0]
    assert int(confirmed.id) > int(holding.id)


async def test_a_plain_sale_s_stream_sends_the_original_events(settings):
    """Without holds: the snapshot, stock and status events carry the original keys only."""
    sale = await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(settings) as server, sale_stream(server, sale.id) as reader:
            snapshot = await reader.next_named("snapshot")
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            stock = await reader.next_named("stock")
            status = await reader.next_named("status")
    assert list(snapshot.data) == SALE_KEYS
    assert list(stock.data) == STOCK_KEYS and stock.data["remainingStock"] == 0
    assert list(status.data) == STATUS_KEYS and status.data["soldOut"] is True


async def test_the_holds_counters_after_a_small_sale(settings):
    """One hold made, three places (one pressed for twice, one taken again after a lapse),
    a cancel and a lapse each offering the unit on, a confirm sent twice and a cancel told
    twice: /metrics counts each once."""
    # Status reads spend the user's tokens; the limit is not what is tested here.
    settings = replace(admin(settings), rate_user_burst=1000, rate_user_per_s=1000.0)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=3)
    with trio.fail_after(60):
        async with live_server(settings) as server:
            c = server.client
            held = (await c.post(CURRENT_PURCHASE, json={"userId": "alice"})).json()["data"]
            again = await c.post(CURRENT_PURCHASE, json={"userId": "alice"})
            placed = [await c.post(CURRENT_PURCHASE, json={"userId": u})
                      for u in ("bobby", "carol")]
            placed.append(await c.post(CURRENT_PURCHASE, json={"userId": "bobby"}))
            cancelled = await c.delete(CURRENT_PURCHASE, params={"userId": "alice"})
            # A second DELETE that read alice's standing before the first one committed.
            await server.runtime.holds.cancel(sale.id, uuid.UUID(held["purchaseId"]), "alice")
            with trio.fail_after(10):  # bobby's offered hold lapses unpaid after 3 s
                while (await standing(c, "carol"))["status"] != "held":
                    await trio.sleep(0.3)
            carol = await standing(c, "carol")
            lapsed = await standing(c, "bobby")
            # Lapsed, bobby may press again like anyone: a new place at the back, kept.
            back = [await c.post(CURRENT_PURCHASE, json={"userId": "bobby"}) for _ in range(2)]
            paid = [await c.post(confirm_path(sale.id, carol["purchaseId"]), headers=AUTH)
                    for _ in range(2)]
            scrape = samples((await c.get(METRICS)).text)
    assert again.status_code == 200
    assert [p.status_code for p in placed] == [202, 202, 202]
    assert cancelled.status_code == 200, cancelled.text
    assert lapsed == {"purchased": False, "status": "lapsed"}
    assert [(b.status_code, b.json()["data"]["position"]) for b in back] == [(202, 1)] * 2
    assert [p.status_code for p in paid] == [200, 200]
    assert {name: value(scrape, name) for name in (
        "flashflow_holds_made_total", "flashflow_holds_confirmed_total",
        "flashflow_holds_lapsed_total", "flashflow_holds_cancelled_total",
        "flashflow_waitlist_joins_total", "flashflow_waitlist_offers_total",
        "flashflow_holds_watchers")} == {
        "flashflow_holds_made_total": 1, "flashflow_holds_confirmed_total": 1,
        "flashflow_holds_lapsed_total": 1, "flashflow_holds_cancelled_total": 1,
        "flashflow_waitlist_joins_total": 3, "flashflow_waitlist_offers_total": 2,
        "flashflow_holds_watchers": 0}
    # The press answers by what they said: a hold (201), the same hold (200), a place (202).
    assert [value(scrape, "flashflow_purchases_total", outcome=outcome)
            for outcome in ("CONFIRMED", "HELD", "WAITLISTED")] == [1, 1, 5]


async def test_a_sale_with_holds_is_sold_out_on_its_stream_only_once_all_is_paid(settings):
    """Every unit held is not sold out (a held unit may come back): the status event says
    soldOut only once every unit is confirmed."""
    settings = admin(settings)
    sale = await make_sale(settings.database_url, stock=1, hold_seconds=60)
    with trio.fail_after(30):
        async with live_server(settings) as server, sale_stream(server, sale.id) as reader:
            await reader.next_named("snapshot")
            held = (await server.client.post(CURRENT_PURCHASE,
                                             json={"userId": "alice"})).json()["data"]
            all_held = await stock_until(reader, "heldStock", 1)
            await trio.sleep(1 + 2 * TALLY_TTL_S)  # a look of the stream, and more
            await server.client.post(confirm_path(sale.id, held["purchaseId"]), headers=AUTH)
            before_status = []
            while (event := await reader.next(timeout_s=5)).name != "status":
                before_status.append(event)
    assert all_held.data["remainingStock"] == 0
    # The first status event is the confirm's, after the stock event that shows it paid.
    assert any(e.name == "stock" and e.data["confirmedStock"] == 1 for e in before_status), \
        "a status event came while every unit was only held"
    assert event.data["soldOut"] is True and event.data["remainingStock"] == 0

