"""A waiting room across two workers and a second server: 3,000 tickets before the opening,
1,000 after, a sale of 200, each buyer following their ticket's stream and buying when
admitted. The line's rules and the sale's are judged against PostgreSQL and Redis."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import trio

from actors import WaitingRoom
from flashflow.http.replies import read_reply
from flashflow.http.wire import purchase_path, queue_path, ticket_path
from flashflow.invariants_line import LINE_FINAL, LineTold, line_snapshot, shuffled, verify_line
from loadtests.records import PURCHASE, Record

from ..helpers import client_untraced, judge, make_sale, open_in, spawn_server
from ..http.test_sse import EventReader

EARLY, LATE, STOCK = 3000, 1000, 200
#: Slow enough that the 200 units sell while the later arrivals are still in line (the
#: buyers admitted buy once every later arrival has joined, however slow the machine).
ROOM = WaitingRoom(opens_before_s=3600, admit_per_s=10.0, window_s=600)


async def join_all(clients: list[httpx.AsyncClient], sale_id, users: list[str],
                   concurrency: int = 100) -> dict[str, str]:
    """Each user joins once, through a client picked at random; return user -> ticket."""
    tickets: dict[str, str] = {}
    limiter = trio.CapacityLimiter(concurrency)

    async def join(user: str) -> None:
        async with limiter:
            for _ in range(20):
                response = await random.choice(clients).post(queue_path(sale_id),
                                                             json={"userId": user})
                if response.status_code in (200, 201):
                    tickets[user] = response.json()["data"]["ticket"]
                    return
                assert response.status_code == 503, response.text
                await trio.sleep(float(response.headers.get("Retry-After", "1")))

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(join, user)
    return tickets


async def follow(client: httpx.AsyncClient, sale_id, user: str, ticket: str,
                 records: list[Record], buying: trio.Event, reconnects: list[str]) -> None:
    """Follow the ticket's stream to its final event, reconnecting with ``Last-Event-ID``
    as an ``EventSource`` does when the connection breaks (each kept in ``reconnects``);
    once ``buying`` is set, buy with the admission if admitted."""
    final: dict | None = None
    name = last_id = None
    for _ in range(3):
        headers = {} if last_id is None else {"Last-Event-ID": last_id}
        try:
            async with client.stream("GET", ticket_path(sale_id, ticket) + "/events",
                                     headers=headers) as response:
                assert response.status_code == 200
                reader = EventReader(response)
                while name is None:
                    # No bound of its own: the test's deadline is the stream's.
                    event = await reader.next(timeout_s=math.inf)
                    last_id = event.id or last_id
                    if event.name in ("admitted", "closed", "expired"):
                        name, final = event.name, event.data
            break
        except httpx.TransportError as exc:
            reconnects.append(f"{user}: {exc!r}")
    admitted_at = None
    if final is not None and name == "admitted":
        admitted_at = datetime.fromisoformat(final["admittedAt"]).timestamp()
    records.append(Record(LINE_FINAL, user, 200, time.time(), 0.0, purchase_id=ticket,
                          code=name, expires_at=admitted_at))
    if name == "admitted":
        assert final is not None
        await buying.wait()
        started = time.time()
        response = await client.post(purchase_path(sale_id), json={
            "userId": user, "admissionToken": final["admissionToken"]})
        reply = read_reply(response.status_code, response.json())
        records.append(Record(PURCHASE, user, response.status_code, started,
                              (time.time() - started) * 1000,
                              purchase_id=reply.purchase_id if response.status_code == 201
                              else None, code=reply.error_code))


async def test_a_line_of_4000_across_two_servers_sells_the_200_in_order(settings, tmp_path):
    """3,000 join before the opening and 1,000 after, across a 2-worker server and a second
    one: the early order is the revealed seed's and not the order of arrival, later arrivals
    follow in arrival order, admissions follow the order once each, exactly the 200 units
    sell, each to an admitted buyer, and once sold out every stream got its final event."""
    sale = await make_sale(settings.database_url, stock=STOCK, starts_in=timedelta(minutes=10),
                           waiting_room=ROOM)
    # The streams' periodic line events are not what this test is about: its final events are.
    settings = replace(settings, line_update_s=60.0)
    servers = [await trio.to_thread.run_sync(
        lambda a=args: spawn_server(settings, tmp_path, *a, traced=False))
        for args in (("--workers", "2"), ())]
    records: list[Record] = []
    reconnects: list[str] = []
    try:
        # The crowd of 4,000 in this one process is not traced for coverage (the servers are
        # not either): the tracer would only slow the clients down.
        with trio.fail_after(300), client_untraced():
            async with AsyncExitStack() as stack:
                limits = httpx.Limits(max_connections=5000, max_keepalive_connections=500)
                clients = [await stack.enter_async_context(httpx.AsyncClient(
                    base_url=s.base_url, timeout=httpx.Timeout(60, read=None), limits=limits))
                    for s in servers]
                buying = trio.Event()
                early = await join_all(clients, sale.id, [f"early-{i:04d}" for i in range(EARLY)])
                assert len(early) == EARLY
                async with trio.open_nursery() as nursery:
                    for user, ticket in early.items():
                        nursery.start_soon(follow, random.choice(clients), sale.id, user,
                                           ticket, records, buying, reconnects)
                    await open_in(settings.database_url, sale.id, 2.0)
                    late = await join_all(clients, sale.id,
                                          [f"late-{i:04d}" for i in range(LATE)])
                    assert len(late) == LATE
                    buying.set()
                    for user, ticket in late.items():
                        nursery.start_soon(follow, random.choice(clients), sale.id, user,
                                           ticket, records, buying, reconnects)
    finally:
        codes = [server.stop() for server in servers]
    assert codes == [0, 0], "a server did not shut down cleanly on SIGTERM"

    ledger = await trio.to_thread.run_sync(line_snapshot, settings.database_url, sale.id)
    told = LineTold.of(records)
    assert len(told.finals) == EARLY + LATE and None not in told.finals.values()
    # A broken connection is the client's to mend, not the server's to cause: a few at most.
    assert len(reconnects) <= (EARLY + LATE) // 100, reconnects[:5]
    checks = [*verify_line(ledger, told), shuffled(ledger)]
    broken = [c for c in checks if not c.held]
    assert not broken, "\n".join(f"{c.name}: {c.detail}" for c in broken)
    assert ledger.sold_out and ledger.closed == "sold_out"
    late_positions = sorted(t.position for t in ledger.tickets if not t.early)
    assert late_positions == list(range(EARLY + 1, EARLY + LATE + 1))
    purchases = [r for r in records if r.kind == PURCHASE]
    assert Counter(r.status for r in purchases)[201] == STOCK
    assert {r.status for r in purchases} <= {201, 409}
    await judge(settings, sale, purchases)
