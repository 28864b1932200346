"""The sale catalog: which sale is current, refreshing, and surviving a failed refresh."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from actors import BackendUnavailable, Sale
from actors.catalog import CatalogStatistics, open_catalog
from actors.model import pick_current

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def sale(name: str, starts: float, ends: float) -> Sale:
    """A sale whose window is given in hours relative to NOW."""
    return Sale(uuid.uuid4(), name, 10, NOW + timedelta(hours=starts), NOW + timedelta(hours=ends))


def test_active_beats_upcoming_beats_ended():
    """An active sale is current over upcoming and ended ones; upcoming wins over ended."""
    ended, active, upcoming = sale("ended", -3, -2), sale("active", -1, 1), sale("soon", 1, 2)
    assert pick_current([ended, upcoming, active], NOW) is active
    assert pick_current([ended, upcoming], NOW) is upcoming
    assert pick_current([ended], NOW) is ended
    assert pick_current([], NOW) is None


def test_among_active_sales_the_one_ending_first_wins():
    """Of overlapping active sales, the one ending first is current; on a tie, the earlier start."""
    long, short = sale("long", -1, 5), sale("short", -2, 1)
    assert pick_current([long, short], NOW) is short
    early, late = sale("early", -2, 1), sale("late", -1, 1)
    assert pick_current([late, early], NOW) is early


def test_among_upcoming_the_next_to_start_and_among_ended_the_last_to_end():
    """The next upcoming sale is the earliest start; of ended ones, the latest end."""
    later, sooner = sale("later", 5, 6), sale("sooner", 1, 9)
    assert pick_current([later, sooner], NOW) is sooner
    old, recent = sale("old", -9, -8), sale("recent", -10, -1)
    assert pick_current([old, recent], NOW) is recent


def test_sale_that_ended_exactly_now_is_not_current_over_an_upcoming_one():
    """At its end time a sale is ended, so an upcoming sale is preferred to it."""
    ending, upcoming = sale("ending", -1, 0), sale("soon", 1, 2)
    assert pick_current([ending, upcoming], NOW) is upcoming


async def test_catalog_serves_current_and_get_from_the_first_load(autojump_clock):
    """Once open, the catalog answers current() and get() from the list it loaded."""
    ended, active = sale("ended", -3, -2), sale("active", -1, 1)

    async def fetch() -> list[Sale]:
        return [ended, active]

    with trio.fail_after(5):
        async with open_catalog(fetch, refresh_s=1.0) as catalog:
            assert catalog.current(NOW) is active
            assert catalog.current(NOW - timedelta(hours=2.5)) is ended
            assert catalog.current(NOW + timedelta(hours=2)) is active
            assert catalog.get(ended.id) is ended
            assert catalog.get(uuid.uuid4()) is None
            assert catalog.statistics() == CatalogStatistics(sales=2, refreshes=1,
                                                             failed_refreshes=0)


async def test_refresh_picks_up_new_sales_and_keeps_the_list_on_failure(autojump_clock):
    """A failed refresh keeps the last list and is counted; a later one loads the new list."""
    first, second = sale("first", -1, 1), sale("second", -2, 2)
    answers: list[list[Sale] | BaseException] = [
        [first], BackendUnavailable("postgres"), BackendUnavailable("postgres"), [first, second],
    ]

    async def fetch() -> list[Sale]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    with trio.fail_after(60):
        async with open_catalog(fetch, refresh_s=1.0) as catalog:
            await trio.sleep(1.5)
            assert catalog.statistics() == CatalogStatistics(1, 1, 1)
            assert catalog.get(first.id) is first
            await trio.sleep(1.0)
            assert catalog.statistics() == CatalogStatistics(1, 1, 2)
            await trio.sleep(1.0)
            assert catalog.statistics() == CatalogStatistics(2, 2, 2)
            assert catalog.get(second.id) is second


async def test_refresh_now_replaces_the_list(autojump_clock):
    """refresh() reloads the list at once, between periodic refreshes."""
    sales: list[Sale] = []

    async def fetch() -> list[Sale]:
        return list(sales)

    with trio.fail_after(5):
        async with open_catalog(fetch, refresh_s=3600) as catalog:
            assert catalog.current(NOW) is None
            sales.append(sale("new", -1, 1))
            await catalog.refresh()
            assert catalog.current(NOW) is sales[0]


async def test_first_load_failure_is_raised_from_open(autojump_clock):
    """If the very first load fails, opening the catalog raises that error unwrapped."""
    async def fetch() -> list[Sale]:
        raise BackendUnavailable("postgres")

    with trio.fail_after(5):
        with pytest.raises(BackendUnavailable):
            async with open_catalog(fetch):
                pytest.fail("the catalog opened without a list")  # pragma: no cover


async def test_the_kept_current_sale_is_the_pick_at_every_instant(autojump_clock):
    """Asked at instants in any order, at and around every start and end, current() answers
    what pick_current does, also after a refresh brings other sales."""
    lists = [[sale("a", -3, -1), sale("b", -1, 1), sale("c", -2, 2), sale("d", 1, 3)],
             [sale("e", -1, 0.5), sale("f", 0.5, 4)]]
    loads = iter(lists)

    async def fetch() -> list[Sale]:
        return next(loads)

    async with open_catalog(fetch, refresh_s=3600) as catalog:
        for sales in lists:
            if sales is not lists[0]:
                await catalog.refresh()
            edges = sorted({t for s in sales for t in (s.start_time, s.end_time)})
            moments = [t + timedelta(seconds=d) for t in edges for d in (-1, 0, 1)]
            for now in [*moments, *reversed(moments), NOW, *moments[::3]]:
                assert catalog.current(now) is pick_current(sales, now), now
