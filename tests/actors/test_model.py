"""Domain records: the sale window's exact boundaries and the records' immutability."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors import Purchase, Sale, SaleStatus

START = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
END = datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
SALE = Sale(uuid.uuid4(), "Widget", 3, START, END)


@pytest.mark.parametrize(("now", "expected"), [
    (START - TICK, SaleStatus.UPCOMING),
    (START, SaleStatus.ACTIVE),
    (START + TICK, SaleStatus.ACTIVE),
    (END - TICK, SaleStatus.ACTIVE),
    (END, SaleStatus.ENDED),
    (END + timedelta(days=365), SaleStatus.ENDED),
], ids=["before-start", "at-start", "after-start", "before-end", "at-end", "long-after"])
def test_status_window_is_half_open(now, expected):
    """A sale is active from its start time included to its end time excluded."""
    assert SALE.status(now) is expected


def test_status_compares_instants_not_wall_clocks():
    """The same instant in another time zone gives the same status."""
    plus_two = timezone(timedelta(hours=2))
    assert SALE.status(START.astimezone(plus_two)) is SaleStatus.ACTIVE
    assert SALE.status(END.astimezone(plus_two)) is SaleStatus.ENDED


def test_status_values_are_the_wire_strings():
    """SaleStatus values are the strings the API sends."""
    assert [s.value for s in SaleStatus] == ["upcoming", "active", "ended"]
    assert SaleStatus.ACTIVE == "active"


def test_records_are_frozen():
    """Sales and purchases cannot be changed once built."""
    purchase = Purchase(uuid.uuid4(), SALE.id, "alice", START)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SALE.total_stock = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        purchase.user_id = "bob"  # type: ignore[misc]
