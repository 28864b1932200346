"""Buyers of a sale with holds as the checkout tests run them: each presses, pays (or walks
away), or waits in line on their own stream and pays when offered; everything they were told
is kept, with the wall-clock time of each answer."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from httpx_sse import aconnect_sse

from actors import Sale
from flashflow.http.wire import CURRENT_PURCHASE, CURRENT_PURCHASE_EVENTS, confirm_path
from flashflow.settings import Settings

from ..helpers import ServerProcess, fetch, pg

ADMIN = "checkout-admin-token"


def json_of(response: httpx.Response) -> dict:
    """The JSON body of an answer; one that is not JSON is kept as its text, to be reported."""
    try:
        return response.json()
    except ValueError:
        return {"notJson": response.text, "headers": dict(response.headers)}


class Checkout:
    """What the buyers were told, in order, with the wall-clock time of each answer."""

    def __init__(self) -> None:
        self.presses: list[tuple[str, int, dict, float]] = []
        self.confirms: list[tuple[str, str, int, dict, float]] = []
        self.offers: dict[str, str] = {}
        self.closed: set[str] = set()
        self.confirm_seconds: list[float] = []

    async def press(self, client: httpx.AsyncClient, user: str) -> tuple[int, dict]:
        """Press until the answer is decided (a 503 or a 429 is pressed again)."""
        while True:
            response = await client.post(CURRENT_PURCHASE, json={"userId": user})
            body = json_of(response)
            self.presses.append((user, response.status_code, body, time.time()))
            if response.status_code not in (429, 503):
                return response.status_code, body
            await trio.sleep(0.2)

    async def pay(self, client: httpx.AsyncClient, sale_id: str, user: str,
                  purchase_id: str) -> None:
        """Confirm, as a payment step does: a 503 is sent again (a confirm is idempotent)."""
        while True:
            sent = time.perf_counter()
            response = await client.post(confirm_path(sale_id, purchase_id),
                                         headers={"Authorization": f"Bearer {ADMIN}"})
            self.confirm_seconds.append(time.perf_counter() - sent)
            self.confirms.append((user, purchase_id, response.status_code, json_of(response),
                                  time.time()))
            if response.status_code != 503:
                return
            await trio.sleep(0.2)

    async def wait_in_line(self, client: httpx.AsyncClient, user: str) -> str | None:
        """Follow the buyer's own stream until a hold is offered (its id) or the line closes."""
        async with aconnect_sse(client, "GET", CURRENT_PURCHASE_EVENTS,
                                params={"userId": user}) as source:
            async for event in source.aiter_sse():
                if event.event != "standing":
                    continue  # httpx-sse reads a heartbeat after an id as an empty event
                standing = json.loads(event.data)
                if standing.get("status") == "held":
                    self.offers[user] = standing["purchaseId"]
                    return standing["purchaseId"]
                if standing.get("status") in ("closed", "confirmed"):
                    self.closed.add(user)
                    return None
                if standing.get("status") in ("lapsed", "cancelled"):
                    return None  # an offer this buyer missed: they walk away
        return None


async def buyer(checkout: Checkout, client: httpx.AsyncClient, sale_id: str, user: str,
                rng: random.Random) -> None:
    """Press once; with a hold, pay after 1-3 s (60% of holders) or walk away; with a place,
    wait for an offer and pay it."""
    pays, delay = rng.random() < 0.6, rng.uniform(1.0, 3.0)
    await trio.sleep(rng.uniform(0, 0.5))
    status, body = await checkout.press(client, user)
    if status in (200, 201):
        if pays:
            await trio.sleep(delay)
            await checkout.pay(client, sale_id, user, body["data"]["purchaseId"])
        return
    if status == 202:
        offered = await checkout.wait_in_line(client, user)
        if offered is not None:
            await trio.sleep(rng.uniform(0.1, 0.5))
            await checkout.pay(client, sale_id, user, offered)


@asynccontextmanager
async def open_buyer_clients(*servers: ServerProcess) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client per server, each with a connection of its own per buyer: the streams of
    the waiting must not hold up the presses and payments of the others in a shared pool."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            httpx.AsyncClient(base_url=s.base_url, timeout=30, limits=limits))
            for s in servers]


async def run_buyers(checkout: Checkout, clients: list[httpx.AsyncClient], sale: Sale,
                     users: list[str], rng: random.Random) -> None:
    """Every user a :func:`buyer`, spread over ``clients``, until each is done."""
    async with trio.open_nursery() as nursery:
        for i, user in enumerate(users):
            nursery.start_soon(buyer, checkout, clients[i % len(clients)], str(sale.id), user,
                               rng)


@dataclass(frozen=True, slots=True)
class HoldStores:
    """What PostgreSQL holds of a sale with holds: its rows, ended holds and places."""

    rows: list[Any]
    endings: list[Any]
    places: list[Any]

    @property
    def confirmed(self) -> dict[str, Any]:
        """The confirmed rows, by purchase id."""
        return {str(r["id"]): r for r in self.rows if r["confirmed_at"] is not None}


async def read_hold_stores(settings: Settings, sale: Sale) -> HoldStores:
    """The rows, the ended holds and the places of ``sale`` (places in line order)."""
    url = settings.database_url
    return HoldStores(
        await pg(url, fetch, "SELECT id, user_id, expires_at, confirmed_at FROM purchases "
                             "WHERE sale_id = $1", sale.id),
        await pg(url, fetch, "SELECT purchase_id, user_id, outcome, expires_at, ended_at, "
                             "offered_to FROM hold_endings WHERE sale_id = $1", sale.id),
        await pg(url, fetch, "SELECT user_id, place, offered_at, purchase_id FROM waitlist "
                             "WHERE sale_id = $1 ORDER BY place", sale.id))


def hold_figures(checkout: Checkout, stores: HoldStores) -> dict[str, Any]:
    """What the buyers were told and what the stores hold, counted."""
    lateness = [(e["ended_at"] - e["expires_at"]).total_seconds() for e in stores.endings
                if e["outcome"] == "lapsed"]
    return {
        "presses": dict(Counter(status for _, status, _, _ in checkout.presses)),
        "confirms": dict(Counter(c[2] for c in checkout.confirms)),
        "confirmed_rows": len(stores.confirmed), "held_rows": len(stores.rows)
        - len(stores.confirmed), "endings": len(stores.endings),
        "places": len(stores.places), "offers_seen": len(checkout.offers),
        "lapse_late_s_max": round(max(lateness), 3) if lateness else None,
        "confirm_s_max": round(max(checkout.confirm_seconds, default=0), 3),
    }


def hold_rule_breaks(checkout: Checkout, stores: HoldStores, total: int) -> list[str]:
    """Which rules of holds and the waitlist the answers and the stores break (none: []).

    The rules: one 201 per user; every hold told (201 or 200) is a row, or a hold that ended
    since; every place told (202) is a place; every confirm 200 is a confirmed row, committed
    before its end; every HOLD_EXPIRED is a lapsed hold; held + confirmed <= total; while
    anyone waits, no unit is free; offers follow the order of places; SOLD_OUT only once
    every unit was confirmed (by the database's confirm times, before the answer was read).
    """
    breaks: list[str] = []
    garbled = [e for e in [*checkout.presses, *checkout.confirms] if "notJson" in e[-2]]
    if garbled:
        breaks.append(f"answers that are not JSON: {garbled[:2]}")
    wins = Counter(user for user, status, _, _ in checkout.presses if status == 201)
    if wins and max(wins.values()) > 1:
        breaks.append(f"two 201s for a user: {wins.most_common(1)}")
    kept = {str(r["id"]) for r in stores.rows} | {str(e["purchase_id"]) for e in stores.endings}
    told = {body["data"]["purchaseId"] for _, status, body, _ in checkout.presses
            if status in (200, 201)}
    if told - kept:
        breaks.append(f"holds told but never rows: {sorted(told - kept)[:3]}")
    placed = {user for user, status, _, _ in checkout.presses if status == 202}
    if placed - {p["user_id"] for p in stores.places}:
        breaks.append("places told but never rows")
    unpaid = {c[1] for c in checkout.confirms if c[2] == 200} - set(stores.confirmed)
    if unpaid:
        breaks.append(f"confirms told but not confirmed rows: {sorted(unpaid)[:3]}")
    late = [r for r in stores.confirmed.values() if r["confirmed_at"] >= r["expires_at"]]
    if late:
        breaks.append(f"{len(late)} confirmed at or after their end")
    lapsed = {str(e["purchase_id"]) for e in stores.endings if e["outcome"] == "lapsed"}
    expired = {c[1] for c in checkout.confirms
               if c[2] == 409 and c[3]["error"]["code"] == "HOLD_EXPIRED"}
    if expired - lapsed:
        breaks.append(f"HOLD_EXPIRED for holds that did not lapse: {sorted(expired - lapsed)[:3]}")
    if len(stores.rows) > total:
        breaks.append(f"{len(stores.rows)} held or confirmed of {total}")
    waiting = [p for p in stores.places if p["offered_at"] is None]
    if waiting and len(stores.rows) < total:
        breaks.append(f"{len(waiting)} waiting while {total - len(stores.rows)} units are free")
    offered = [p for p in stores.places if p["offered_at"] is not None]
    if [p["offered_at"] for p in offered] != sorted(p["offered_at"] for p in offered):
        breaks.append("offers out of the order of places")
    if any(p["offered_at"] is None for p in stores.places[:len(offered)]):
        breaks.append("a place passed over by an offer to a later one")
    times = sorted(r["confirmed_at"].timestamp() for r in stores.confirmed.values())
    for _, status, body, at in checkout.presses:
        if status == 409 and body["error"]["code"] == "SOLD_OUT":
            confirmed_by_then = sum(1 for t in times if t <= at)
            if confirmed_by_then < total:
                breaks.append(f"SOLD_OUT with {confirmed_by_then} of {total} confirmed")
                break
    return breaks
