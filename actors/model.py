"""Plain, frozen domain records shared by the actors."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime


class SaleStatus(enum.StrEnum):
    """Where a sale stands on the clock; a sold-out sale is still ``ACTIVE``."""

    UPCOMING = "upcoming"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class WaitingRoom:
    """A sale's line: it opens ``opens_before_s`` before the sale, admits ``admit_per_s``
    tickets a second in order from the opening, each for ``window_s`` to buy."""

    opens_before_s: int
    admit_per_s: float
    window_s: int


@dataclass(frozen=True, slots=True)
class Sale:
    """A scheduled flash sale: a stock of one product sold within a time window."""

    id: uuid.UUID
    product_name: str
    total_stock: int
    start_time: datetime
    end_time: datetime
    #: The payment window of a hold, for a sale that sells holds; None: a press buys outright.
    hold_seconds: int | None = None
    #: The most units one user may take in one purchase (and so in the sale).
    per_user_limit: int = 1
    #: The line buyers join before they may buy; None: whoever presses first.
    waiting_room: WaitingRoom | None = None

    @property
    def holds(self) -> bool:
        """Whether a winning press is a hold that payment confirms."""
        return self.hold_seconds is not None

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
    #: When a hold lapses unless confirmed (database clock); None: bought outright.
    expires_at: datetime | None = None
    confirmed_at: datetime | None = None
    #: How many units the purchase takes, all or none.
    quantity: int = 1

    @property
    def held(self) -> bool:
        """Whether this is a hold still waiting for payment."""
        return self.expires_at is not None and self.confirmed_at is None


@dataclass(frozen=True, slots=True)
class Place:
    """A user's place in a sale's waitlist: ``position`` 1 is the next to be offered a unit.

    ``closed`` says the waitlist closed (every unit confirmed, or the sale ended): no unit
    will be offered.
    """

    sale_id: uuid.UUID
    user_id: str
    position: int
    length: int
    closed: bool = False
    #: How many units the place waits for; an offer gives them all at once.
    quantity: int = 1


class Standing(enum.StrEnum):
    """Where a buyer stands in a sale with holds, as the status read reports it."""

    HELD = "held"
    CONFIRMED = "confirmed"
    WAITLISTED = "waitlisted"
    LAPSED = "lapsed"
    CANCELLED = "cancelled"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BuyerStatus:
    """A buyer's standing in a sale: their purchase or hold, their place, or how it ended.

    ``standing`` is None when the buyer has nothing in the sale.
    """

    standing: Standing | None
    purchase: Purchase | None = None
    place: Place | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A buyer's ticket in a sale's waiting room.

    ``position`` (1 is admitted first) is None for a ticket that joined before the opening
    until the opening places those tickets in the seed's order.
    """

    id: uuid.UUID
    sale_id: uuid.UUID
    user_id: str
    joined_at: datetime
    early: bool
    position: int | None = None
    admitted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """Where a sale's waiting room stands: ``admitted`` is the "admitted up to" position.

    ``seed`` is None until the opening placed the early tickets (``ordered``); the
    ``commitment`` (sha256 of the seed, hex) is published from the start.
    """

    sale_id: uuid.UUID
    commitment: str
    ordered: bool
    length: int
    admitted: int
    #: Why the line closed: "sold_out" or "ended"; None while it is open.
    closed: str | None = None
    seed: bytes | None = None

    def ahead(self, position: int) -> int:
        """How many tickets are still to be admitted before the one at ``position``."""
        return max(position - self.admitted - 1, 0)

    def admits(self, position: int | None) -> bool:
        """Whether the ticket at ``position`` has been admitted."""
        return position is not None and position <= self.admitted


@dataclass(frozen=True, slots=True)
class Tally:
    """A sale's stock and the units committed of it, as PostgreSQL holds them in one snapshot.

    Every count is of units: a purchase of three units counts three.

    Every decision that compares what is sold with what there is to sell reads both here,
    never the stock from a process's copy of the sale, which an operator may have changed.
    """

    total_stock: int
    sold: int
    #: Of ``sold``, the holds not yet confirmed (0 in a sale without holds).
    held: int = 0
    #: Buyers waiting in the waitlist for a unit to come back.
    waiting: int = 0
    #: The rows that hold the ``sold`` units: one per buyer.
    buyers: int = 0

    @property
    def confirmed(self) -> int:
        """The units sold for good: committed and, with holds, paid."""
        return self.sold - self.held

    @property
    def sold_out(self) -> bool:
        """Whether every unit is confirmed: final."""
        return self.confirmed >= self.total_stock

    @property
    def full(self) -> bool:
        """Whether every unit is committed, held or confirmed: none is free in the ledger."""
        return self.sold >= self.total_stock

    @property
    def free(self) -> int:
        """The units no row holds: on sale, or reserved by a commit still in flight."""
        return max(self.total_stock - self.sold, 0)

    @property
    def unsold(self) -> int:
        """The units not sold for good: free, or held and not yet paid. Never grows while
        the sale runs (its stock is fixed once it started), so a purchase of more units
        than this is refused for good."""
        return max(self.total_stock - self.confirmed, 0)


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What the ledger holds for a sale: the source the gate is rebuilt from."""

    total_stock: int
    sold: int
    buyers: dict[str, str]
    #: The quantity of each buyer's purchase that takes more than one unit.
    quantities: dict[str, int] = field(default_factory=dict)


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


__all__ = ["BuyerStatus", "LedgerState", "Line", "Place", "Purchase", "Sale", "SaleStatus",
           "Standing", "Tally", "Ticket", "WaitingRoom", "pick_current"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC: the clock of the whole tree by default."""
    return datetime.now(UTC)
