"""Buyers of a sale with holds as the checkout tests run them: each presses, pays (or walks
away), or waits in line on their own stream and pays when offered. Everything they are told
is kept as the load test's records, and the run is judged by the one invariant check
(:func:`flashflow.invariants.verify`) against what PostgreSQL and Redis hold."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import trio
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from actors import Sale
from flashflow.http.replies import Reply, read_reply_bytes, read_standing
from flashflow.http.wire import (
    CURRENT_PURCHASE,
    CURRENT_PURCHASE_EVENTS,
    HOLD_CONFIRM,
    METRICS,
    confirm_path,
)
from flashflow.invariants import LedgerSnapshot, store_snapshots, verify
from flashflow.settings import Settings
from loadtests.records import CONFIRM, PURCHASE, STANDING, Record, record_of

from ..helpers import ServerProcess, client_untraced
from .stores import wait_for_gate_to_agree

#: The payment step's bearer token in the checkout tests.
ADMIN = "checkout-admin-token"
#: Answers asked again, as a client does: a busy server's, or one given while a backend
#: is down.
AGAIN = (429, 503)


class Checkout:
    """What the buyers were told: :attr:`records`, in the order they came."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def _call(self, kind: str, client: httpx.AsyncClient, method: str, url: str,
                    user: str, purchase_id: str | None = None, **kwargs: Any) -> Reply:
        started, t0 = time.time(), time.perf_counter()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            self.records.append(Record(kind, user, 0, started, 0.0, purchase_id,
                                       type(exc).__name__))
            return Reply(0)
        reply = read_reply_bytes(response.status_code, response.content)
        self.records.append(record_of(kind, user, started, (time.perf_counter() - t0) * 1000,
                                      reply, reply.error_code, purchase_id))
        return reply

    async def press(self, client: httpx.AsyncClient, user: str) -> Reply:
        """Press until the answer is decided (a 429, a 503 or no answer is pressed again)."""
        while True:
            reply = await self._call(PURCHASE, client, "POST", CURRENT_PURCHASE, user,
                                     json={"userId": user})
            if reply.status not in (0, *AGAIN):
                return reply
            await trio.sleep(0.2)

    async def pay(self, client: httpx.AsyncClient, sale_id: str, user: str,
                  purchase_id: str) -> Reply:
        """Confirm, as a payment step does: sent again until decided (a confirm is
        idempotent)."""
        while True:
            reply = await self._call(CONFIRM, client, "POST", confirm_path(sale_id, purchase_id),
                                     user, purchase_id,
                                     headers={"Authorization": f"Bearer {ADMIN}"})
            if reply.status not in (0, *AGAIN):
                return reply
            await trio.sleep(0.2)

    async def wait_in_line(self, client: httpx.AsyncClient, user: str) -> str | None:
        """Follow the buyer's own stream until a hold is offered (its id), or the line is
        closed or the offer missed (None); a broken stream is taken up again."""
        while True:
            try:
                async with aconnect_sse(client, "GET", CURRENT_PURCHASE_EVENTS,
                                        params={"userId": user}) as source:
                    async for event in source.aiter_sse():
                        if event.event != "standing":
                            continue  # httpx-sse reads a heartbeat after an id as an event
                        standing = read_standing(event.data)
                        self.records.append(record_of(STANDING, user, time.time(), 0.0,
                                                      standing, None))
                        if standing.standing == "held":
                            return standing.purchase_id
                        if standing.standing in ("closed", "confirmed", "lapsed",
                                                 "cancelled"):
                            return None  # final, or an offer missed: the buyer walks away
            except (httpx.TransportError, httpx.HTTPStatusError):
                pass
            await trio.sleep(0.5)


async def buyer(checkout: Checkout, client: httpx.AsyncClient, sale_id: str, user: str,
                rng: random.Random) -> None:
    """Press once; with a hold, pay after 1-3 s (60% of holders) or walk away; with a place,
    wait for an offer and pay it."""
    pays, delay = rng.random() < 0.6, rng.uniform(1.0, 3.0)
    await trio.sleep(rng.uniform(0, 0.5))
    reply = await checkout.press(client, user)
    if reply.status in (200, 201) and reply.purchase_id is not None:
        if pays:
            await trio.sleep(delay)
            await checkout.pay(client, sale_id, user, reply.purchase_id)
        return
    if reply.status == 202:
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
    """Every user a :func:`buyer`, spread over ``clients``, until each is done.

    The test process is not traced for coverage meanwhile: hundreds of buyers and their
    streams in one traced trio loop read their offers and send their payments seconds late,
    and their holds would lapse for the tracer's sake (:func:`client_untraced`).
    """
    with client_untraced():
        async with trio.open_nursery() as nursery:
            for i, user in enumerate(users):
                nursery.start_soon(buyer, checkout, clients[i % len(clients)], str(sale.id),
                                   user, rng)


async def judge_checkout(settings: Settings, sale: Sale, checkout: Checkout,
                         figures: dict[str, Any], *, before: LedgerSnapshot | None = None,
                         fault_window: tuple[float, ...] = ()) -> LedgerSnapshot:
    """Judge the run by the one invariant check and put its figures in ``figures``.

    ``fault_window`` is (start, end) in wall-clock seconds: the records in flight at any
    moment of it are the faulted ones (a 503 or no answer is no break there). Returns the
    ledger judged.

    Raises:
        AssertionError: a rule broke; says which and what was seen.
    """
    if before is None:
        before = LedgerSnapshot(sale.total_stock, 0, {})
    # A fault may end moments before the last buyer does: the gate is given the
    # reconciler's bound to agree with the ledger (it raises, showing both, if it does not).
    await wait_for_gate_to_agree(
        settings, sale, settings.reservation_grace_s + settings.reconcile_interval_s + 3)
    after, gate = await trio.to_thread.run_sync(
        lambda: store_snapshots(settings.database_url, settings.redis_url, settings.key_prefix,
                                sale.id))
    faulted = ([r for r in checkout.records
                if r.started <= fault_window[1] and r.finished >= fault_window[0]]
               if fault_window else [])
    checks = verify(checkout.records, before, after, gate, faulted=faulted)
    figures.update(checkout_figures(checkout, after))
    broken = [c for c in checks if not c.held]
    assert not broken, "\n".join(f"{c.name}: {c.detail}" for c in broken)
    return after


def checkout_figures(checkout: Checkout, after: LedgerSnapshot) -> dict[str, Any]:
    """What the buyers were told and what the ledger holds, counted."""
    by_kind = Counter((r.kind, r.status) for r in checkout.records)
    holds = after.holds
    lapses = [] if holds is None else [e.ended_at - e.expires_at for e in holds.endings
                                       if e.outcome == "lapsed"]
    confirm_s = [r.elapsed_ms / 1000 for r in checkout.records if r.kind == CONFIRM]
    return {
        "answers": {f"{kind} {status}": n for (kind, status), n in sorted(by_kind.items())},
        "sold": after.sold,
        "confirmed": None if holds is None else sum(r.confirmed for r in holds.rows),
        "endings": None if holds is None else len(holds.endings),
        "places": None if holds is None else len(holds.places),
        "lapse_late_s_max": round(max(lapses), 3) if lapses else None,
        "confirm_s_max": round(max(confirm_s), 3) if confirm_s else None,
    }


async def confirm_latency_at_servers(*servers: ServerProcess) -> dict[str, float]:
    """The confirms as the servers timed them (``/metrics``, summed over the servers): how
    many, their mean, and how many took over a second. The client's own figure also holds
    the test process's time with hundreds of streams open."""
    count = total = over_1s = 0.0
    async with httpx.AsyncClient(timeout=10) as client:
        for server in servers:
            text = (await client.get(f"{server.base_url}{METRICS}")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.labels.get("route") != HOLD_CONFIRM:
                        continue
                    if sample.name.endswith("_count"):
                        count += sample.value
                    elif sample.name.endswith("_sum"):
                        total += sample.value
                    elif sample.name.endswith("_bucket") and sample.labels["le"] == "1.0":
                        over_1s -= sample.value
    return {"confirms": count, "mean_s": round(total / count, 4) if count else 0.0,
            "over_1s": count + over_1s}
