"""Plain, frozen domain records shared by the actors."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


class SaleStatus(enum.StrEnum):
    """Where a sale stands on the clock; a sold-out sale is still ``ACTIVE``."""

    UPCOMING = "upcoming"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Sale:
    """A scheduled flash sale: a stock of one product sold within a time window."""

    id: uuid.UUID
    product_name: str
    total_stock: int
    start_time: datetime
    end_time: datetime

    def status(self, now: datetime) -> SaleStatus:
        """Return the sale's status at ``now`` (the window is half-open: [start, end))."""
        if now < self.start_time:
            return SaleStatus.UPCOMING
        if now < self.end_time:
            return SaleStatus.ACTIVE
        return SaleStatus.ENDED


@dataclass(frozen=True, slots=True)
class Purchase:
    """One user's purchase in one sale."""

    id: uuid.UUID
    sale_id: uuid.UUID
    user_id: str
    purchased_at: datetime


@dataclass(frozen=True, slots=True)
class Tally:
    """A sale's stock and the units committed of it, as PostgreSQL holds them in one snapshot.

    Every decision that compares what is sold with what there is to sell reads both here,
    never the stock from a process's copy of the sale, which an operator may have changed.
    """

    total_stock: int
    sold: int

    @property
    def sold_out(self) -> bool:
        """Whether every unit is committed: final."""
        return self.sold >= self.total_stock


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What the ledger holds for a sale: the source the gate is rebuilt from."""

    total_stock: int
    sold: int
    buyers: dict[str, str]


def pick_current(sales: list[Sale], now: datetime) -> Sale | None:
    """Return the sale whose window holds ``now``, else the next upcoming, else the last ended."""
    active = [s for s in sales if s.status(now) is SaleStatus.ACTIVE]
    if active:
        return min(active, key=lambda s: (s.end_time, s.start_time))
    upcoming = [s for s in sales if s.status(now) is SaleStatus.UPCOMING]
    if upcoming:
        return min(upcoming, key=lambda s: s.start_time)
    if sales:
        return max(sales, key=lambda s: s.end_time)
    return None


__all__ = ["LedgerState", "Purchase", "Sale", "SaleStatus", "Tally", "pick_current"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC: the clock of the whole tree by default."""
    return datetime.now(UTC)
