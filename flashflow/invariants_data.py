"""What the one invariant check judges: the answers the clients saw (:class:`Record`) and
what PostgreSQL and Redis hold (:class:`LedgerSnapshot`, :class:`GateSnapshot`), and what
it says (:class:`Check`).

Plain data, shared by :mod:`flashflow.invariants` (the entry point, and the rules of a sale
without holds) and :mod:`flashflow.invariants_holds` (the rules of a sale with holds); both
re-export it from :mod:`flashflow.invariants`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: The kinds of :class:`Record`.
PURCHASE = "purchase"
STATUS = "status"
WATCH = "watch"
#: The payment step's confirm of a hold (``POST .../purchases/{id}/confirm``).
CONFIRM = "confirm"
#: One ``standing`` event of a buyer's own stream (``GET .../purchase/events``).
STANDING = "standing"

THROTTLED = 429  # a polite "slow down" to a spamming user: never wrong, so never a break
UNAVAILABLE = 503  # what a server says while a backend is down (with Retry-After)
NO_ANSWER = 0  # the connection failed or the reply was cut
#: The final refusals of a purchase for stock: nothing left, or fewer units than asked.
REFUSALS = frozenset({"SOLD_OUT", "INSUFFICIENT_STOCK"})


@dataclass(frozen=True, slots=True)
class Record:
    """One answer as a client saw it.

    Attributes:
        kind: ``purchase``, ``status`` (the purchase-status read), ``watch`` (GET /current),
            ``confirm`` (the payment step's confirm) or ``standing`` (an event of a buyer's
            own stream, recorded when it arrived, with ``elapsed_ms`` 0).
        user: the user id the request was for ("" for watchers).
        status: the HTTP status, or 0 when the connection failed or the reply was cut.
        started: wall-clock time (epoch seconds) at which the request was sent.
        elapsed_ms: time until the whole response was read.
        purchase_id: the purchaseId in a 201 (or a 200 naming the same hold), in a status
            read or a standing event that names one; for a confirm, the hold it confirms.
        code: the error code of an error envelope, or the transport error for status 0.
        purchased: for status reads, whether the server said the user holds a purchase.
        standing: in a sale with holds, the body's ``status`` (``held``, ``confirmed``,
            ``waitlisted``, ``lapsed``, ``cancelled``, ``closed``).
        expires_at: the ``expiresAt`` of a hold told (epoch seconds).
        position: the place in line a ``202`` (or a standing) told.
        quantity: for a purchase, the units the client asked for (1 when the body named none).
        remaining_stock: the ``remainingStock`` an ``INSUFFICIENT_STOCK`` refusal told.
    """

    kind: str
    user: str
    status: int
    started: float
    elapsed_ms: float
    purchase_id: str | None = None
    code: str | None = None
    purchased: bool | None = None
    standing: str | None = None
    expires_at: float | None = None
    position: int | None = None
    quantity: int = 1
    remaining_stock: int | None = None

    @property
    def finished(self) -> float:
        """Wall-clock time at which the response had been read."""
        return self.started + self.elapsed_ms / 1000


@dataclass(frozen=True, slots=True)
class PurchaseRow:
    """A ``purchases`` row of a sale with holds (times in epoch seconds, by PostgreSQL)."""

    purchase_id: str
    user: str
    expires_at: float | None
    confirmed_at: float | None
    quantity: int = 1

    @property
    def confirmed(self) -> bool:
        """Paid: confirmed, or bought outright (no payment window)."""
        return self.expires_at is None or self.confirmed_at is not None


@dataclass(frozen=True, slots=True)
class EndingRow:
    """A ``hold_endings`` row: a hold that lapsed or was cancelled, and whom its unit went to."""

    purchase_id: str
    user: str
    outcome: str
    expires_at: float
    ended_at: float
    offered_to: str | None
    offered_user: str | None
    gate_done: bool


@dataclass(frozen=True, slots=True)
class WaitlistRow:
    """A ``waitlist`` row: ``offered_at`` None while the place still waits."""

    user: str
    place: int
    joined_at: float
    offered_at: float | None
    purchase_id: str | None

    @property
    def waiting(self) -> bool:
        """The place still waits for a unit."""
        return self.offered_at is None


@dataclass(frozen=True, slots=True)
class HoldsLedger:
    """What PostgreSQL holds of a sale with holds, read in one snapshot.

    Attributes:
        hold_seconds: the payment window.
        end_time: the sale's end (epoch seconds).
        read_at: PostgreSQL's clock when the snapshot was read.
        rows: every purchase row, held or confirmed.
        endings: every hold that ended.
        places: every place in the waitlist, waiting or offered.
    """

    hold_seconds: int
    end_time: float
    read_at: float
    rows: tuple[PurchaseRow, ...]
    endings: tuple[EndingRow, ...]
    places: tuple[WaitlistRow, ...]

    @property
    def ended(self) -> bool:
        """The sale had ended by PostgreSQL's clock when this was read."""
        return self.read_at >= self.end_time

    def state(self) -> tuple[object, ...]:
        """What changes when a hold is made, confirmed, ended or offered (not the clock)."""
        return self.rows, self.endings, self.places


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """What PostgreSQL holds for one sale.

    Attributes:
        total_stock: the sale's stock.
        sold: the ``sold`` counter of the sale row.
        purchases: user id -> purchase id, one entry per committed purchase (held or
            confirmed).
        holds: for a sale with holds, its rows, ended holds and waitlist; None without.
        quantities: user id -> the units of their purchase, for each that takes more than
            one (a purchase not named takes one).
        per_user_limit: the most units the sale lets one user take.
    """

    total_stock: int
    sold: int
    purchases: dict[str, str]
    holds: HoldsLedger | None = None
    quantities: dict[str, int] = field(default_factory=dict)
    per_user_limit: int = 1

    def units_of(self, user: str) -> int:
        """The units of ``user``'s purchase (1 when the snapshot names no other count)."""
        return self.quantities.get(user, 1)

    @property
    def units(self) -> int:
        """The units every purchase takes together: what ``sold`` should count."""
        return sum(map(self.units_of, self.purchases))


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """What Redis holds for one sale: remaining stock (None when absent) and buyers
    (user id -> purchase id), with the units of each holder of more than one in
    ``quantities`` (a holder not named holds one)."""

    stock: int | None
    buyers: dict[str, str]
    quantities: dict[str, int] = field(default_factory=dict)

    def units_of(self, user: str) -> int:
        """The units ``user`` holds in the gate (1 when not named)."""
        return self.quantities.get(user, 1)

    @property
    def units(self) -> int:
        """The units every holder holds together: the conservation law takes them from the
        total."""
        return sum(map(self.units_of, self.buyers))


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant and whether it held; ``detail`` says what was seen."""

    name: str
    held: bool
    detail: str


def throttled(record: Record) -> bool:
    """A 429: never wrong, so never a break."""
    return record.status == THROTTLED


def failed(record: Record) -> bool:
    """A 5xx, or no answer."""
    return record.status == NO_ANSWER or record.status >= 500


def sample(items: Iterable[str], limit: int = 3) -> str:
    """A few of ``items``, sorted, and how many more there are."""
    items = sorted(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


__all__ = ["CONFIRM", "NO_ANSWER", "PURCHASE", "REFUSALS", "STANDING", "STATUS", "THROTTLED",
           "UNAVAILABLE", "WATCH", "Check", "EndingRow", "GateSnapshot", "HoldsLedger",
           "LedgerSnapshot", "PurchaseRow", "Record", "WaitlistRow", "failed", "sample",
           "throttled"]
