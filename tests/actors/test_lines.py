"""The lines actor and the line's SQL on real PostgreSQL: every way a join is decided, joins
racing each other, admissions in order at the rate, each position woken at its turn."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import trio

from actors import WaitingRoom
from actors.places_sql import Entered, close_line, join_line, line_order
from flashflow.runtime import open_runtime

from ..helpers import fetch, make_sale, open_in, pg

ROOM = WaitingRoom(opens_before_s=60, admit_per_s=20.0, window_s=30)


def by_hand(settings):
    """The lines left to the test: moved on only when it asks."""
    return replace(settings, line_tick_s=3600.0, reconcile_interval_s=3600.0)


async def test_every_way_a_join_is_decided(settings):
    """none without a room, not_open before the line opens, joined then kept, closed once
    the line closed, ended after the sale."""
    url = settings.database_url
    plain = await make_sale(url)
    later = await make_sale(url, starts_in=timedelta(minutes=5), waiting_room=ROOM)
    soon = await make_sale(url, starts_in=timedelta(seconds=30), waiting_room=ROOM)
    over = await make_sale(url, starts_in=timedelta(minutes=-2), lasts=timedelta(minutes=1),
                           waiting_room=ROOM)
    assert (await pg(url, join_line, plain.id, "alice"))[0] is Entered.NONE
    assert (await pg(url, join_line, later.id, "alice")) == (Entered.NOT_OPEN, None)
    joined, ticket = await pg(url, join_line, soon.id, "alice")
    kept, again = await pg(url, join_line, soon.id, "alice")
    assert (joined, kept) == (Entered.JOINED, Entered.KEPT)
    assert ticket is not None and again == ticket and ticket.early and ticket.position is None
    await pg(url, close_line, soon.id, "sold_out")
    assert (await pg(url, join_line, soon.id, "bobby")) == (Entered.CLOSED, None)
    assert (await pg(url, join_line, over.id, "alice")) == (Entered.ENDED, None)


async def test_racing_joins_give_one_ticket_each_and_a_gapless_back_of_the_line(settings):
    """Joins racing on many connections, the same users twice over, before and after the
    opening: one ticket per user; the early ones placed in the seed's order at 1..E, the
    later ones at E+1.. in arrival order, with no gap and no position twice."""
    url = settings.database_url
    sale = await make_sale(url, starts_in=timedelta(seconds=50), waiting_room=ROOM)

    async def crowd(users: list[str]) -> None:
        limiter = trio.CapacityLimiter(16)

        async def one(user: str) -> None:
            async with limiter:
                await pg(url, join_line, sale.id, user)

        async with trio.open_nursery() as nursery:
            for user in users * 2:
                nursery.start_soon(one, user)

    with trio.fail_after(60):
        await crowd([f"early-{i:03d}" for i in range(60)])
        await open_in(url, sale.id, 0.5)
        await crowd([f"late-{i:03d}" for i in range(40)])
    rows = await pg(url, fetch, "SELECT ticket, user_id, early, position, arrival FROM tickets "
                                "WHERE sale_id = $1", sale.id)
    [seed] = [r["seed"] for r in await pg(url, fetch, "SELECT seed FROM lines "
                                                      "WHERE sale_id = $1", sale.id)]
    early = sorted((r for r in rows if r["early"]), key=lambda r: r["position"])
    late = sorted((r for r in rows if not r["early"]), key=lambda r: r["arrival"])
    assert len(early) == 60 and len(late) == 40
    assert [r["ticket"] for r in early] == line_order(bytes(seed), [r["ticket"] for r in early])
    assert [r["position"] for r in early + late] == list(range(1, 101))


async def test_admissions_come_in_order_at_the_rate_and_wake_each_turn(settings):
    """Moved on by hand, the line admits about rate x elapsed positions in order; a stream
    waiting on a position wakes when it is admitted, the others when the line closes."""
    sale = await make_sale(settings.database_url, stock=5, starts_in=timedelta(seconds=1),
                           waiting_room=ROOM)
    woken: list[int] = []
    with trio.fail_after(30):
        async with open_runtime(by_hand(settings)) as runtime:
            lines = runtime.lines
            tickets = [(await lines.join(sale, f"user-{i}"))[1] for i in range(30)]
            await trio.sleep(1.2)
            first = await lines.read(sale)
            assert first is not None and first.ordered and first.length == 30

            async def wait(position: int) -> None:
                await lines.turn(sale.id, position)
                woken.append(position)

            async with trio.open_nursery() as nursery:
                for position in (3, 12, 29):
                    nursery.start_soon(wait, position)
                await trio.sleep(0.5)
                moved = await lines.read(sale)
                assert moved is not None and 5 <= moved.admitted <= 25
                await trio.sleep(0.1)
                assert woken == ([3] if moved.admitted < 12 else [3, 12])
                await runtime.ledger.call(close_line, sale.id, "sold_out")
                closed = await lines.read(sale)
            positions = [await lines.position(sale, t) for t in tickets if t is not None]
            statistics = lines.statistics()
    assert closed is not None and closed.closed == "sold_out"
    assert sorted(woken) == [3, 12, 29]
    assert sorted(positions) == list(range(1, 31))
    assert statistics.joined == 30 and statistics.watching == 0


async def test_the_tick_closes_a_sold_out_line(settings):
    """A sale with no stock left: the actor's own pass closes its line."""
    sale = await make_sale(settings.database_url, stock=0, starts_in=timedelta(seconds=-1),
                           waiting_room=ROOM)
    with trio.fail_after(30):
        async with open_runtime(replace(settings, line_tick_s=0.05)) as runtime:
            while (line := runtime.lines.line(sale.id)) is None or line.closed is None:
                await trio.sleep(0.05)
            assert runtime.lines.statistics().ticks > 0
    assert line.closed == "sold_out"
