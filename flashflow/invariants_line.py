"""The rules of a waiting room's line, checked from what PostgreSQL holds and what the
clients were told: the one check the line's tests, its fault tests, the locust run and the
benchmark call.

- The seed is the one committed to: its sha256 is the commitment published before the
  opening.
- The tickets taken before the opening hold positions 1..E in the order the revealed seed
  gives (:func:`actors.places_sql.line_order`); the later ones follow in arrival order.
- Admissions follow the published order exactly: the admitted tickets are positions
  1..admitted, admitted no earlier than the ones before them, each once (a ticket told its
  admission twice was told the same moment).
- Nobody bought without an admitted ticket: every purchase's buyer was admitted at or before
  it, and bought within their admission window (the commit may follow the token's check by
  the purchase's wait).
- When ``SOLD_OUT`` is final the line is closed: nobody is admitted after that, and no ticket
  whose stream a client followed was left without a final event.

:func:`verify_line` is a pure function of a :class:`LineLedger` (:func:`line_snapshot` reads
one) and of :class:`LineTold`; :func:`shuffled` is the statistical check that the pre-opening
order is not the order of arrival.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any

from actors.places_sql import line_order

from .database import run_on_connection
from .invariants_data import Check, Record
from .invariants_data import sample as _sample

#: Records of what a line's clients were told: a join's answer (``purchase_id`` names its
#: ticket), and the end of a ticket's stream (``code``: its final event, ``admitted`` or
#: ``closed``; any other code, or none, says the stream ended without one).
JOIN = "join"
LINE_FINAL = "line_final"
#: The events that end a ticket's stream.
FINAL_EVENTS = frozenset({"admitted", "closed", "expired"})
#: Clock slack between a client's wall clock and PostgreSQL's, in seconds.
CLOCK_SLACK_S = 2.0
#: How long after its admission window a purchase may still commit: its token is checked
#: when it arrives, and its commit follows within the purchase's wait (6 s by default).
COMMIT_SLACK_S = 10.0


@dataclass(frozen=True, slots=True)
class TicketRow:
    """A ``tickets`` row (times in epoch seconds, by PostgreSQL's clock)."""

    ticket: str
    user: str
    arrival: int
    early: bool
    position: int | None
    admitted_at: float | None


@dataclass(frozen=True, slots=True)
class LineLedger:
    """What PostgreSQL holds of a sale's line, its tickets and its purchases, in one snapshot."""

    commitment: str
    seed: bytes | None
    length: int
    admitted: int
    closed: str | None
    closed_at: float | None
    window_s: int
    tickets: list[TicketRow]
    #: Each buyer's purchase time (epoch seconds).
    bought: dict[str, float]
    sold_out: bool


@dataclass(frozen=True, slots=True)
class LineTold:
    """What the line's clients were told: each followed ticket's final event (None: none
    arrived before the client stopped following), and each admission told, by ticket."""

    finals: dict[str, str | None] = field(default_factory=dict)
    admissions: dict[str, set[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[Record]) -> LineTold:
        """Gather the final events of the records (``purchase_id`` names the ticket;
        ``expires_at`` holds the admission's ``admittedAt``)."""
        finals: dict[str, str | None] = {}
        admissions: dict[str, set[float]] = {}
        for record in records:
            if record.kind != LINE_FINAL or record.purchase_id is None:
                continue
            final = record.code if record.code in FINAL_EVENTS else None
            finals[record.purchase_id] = final or finals.get(record.purchase_id)
            if record.code == "admitted" and record.expires_at is not None:
                admissions.setdefault(record.purchase_id, set()).add(record.expires_at)
        return cls(finals, admissions)


def verify_line(ledger: LineLedger, told: LineTold | None = None) -> list[Check]:
    """Every rule of the line (see the module's docstring), each as a :class:`Check`."""
    told = told or LineTold()
    return [_committed(ledger), _seed_order(ledger), _late_order(ledger),
            _admitted_in_order(ledger), _told_once(ledger, told), _bought_admitted(ledger),
            _closed_when_final(ledger, told)]


def _committed(ledger: LineLedger) -> Check:
    if ledger.seed is None:
        held = not any(t.position is not None for t in ledger.tickets if t.early)
        return Check("the seed is the committed one", held,
                     "not revealed yet" if held else "tickets placed before the seed's reveal")
    digest = hashlib.sha256(ledger.seed).hexdigest()
    return Check("the seed is the committed one", digest == ledger.commitment,
                 f"sha256(seed) {digest[:12]}... vs commitment {ledger.commitment[:12]}...")


def _seed_order(ledger: LineLedger) -> Check:
    early = [t for t in ledger.tickets if t.early]
    if ledger.seed is None:
        return Check("the early tickets are in the seed's order", True, "not placed yet")
    placed = sorted(early, key=lambda t: (t.position is None, t.position or 0))
    expected = [str(t) for t in line_order(ledger.seed, [uuid.UUID(t.ticket) for t in early])]
    positions = [t.position for t in placed]
    held = [t.ticket for t in placed] == expected and positions == list(range(1, len(early) + 1))
    return Check("the early tickets are in the seed's order", held,
                 f"{len(early)} early tickets at positions 1..{len(early)}" if held else
                 f"order differs from the seed's at {_first_difference(placed, expected)}")


def _first_difference(placed: list[TicketRow], expected: list[str]) -> str:
    for i, (ticket, wanted) in enumerate(zip(placed, expected, strict=False), start=1):
        if ticket.ticket != wanted or ticket.position != i:
            return f"position {i} ({ticket.ticket} at {ticket.position}, seed says {wanted})"
    return "the count"


def _late_order(ledger: LineLedger) -> Check:
    early = sum(1 for t in ledger.tickets if t.early)
    late = sorted((t for t in ledger.tickets if not t.early), key=lambda t: t.arrival)
    positions = [t.position for t in late]
    held = positions == list(range(early + 1, early + 1 + len(late)))
    return Check("later arrivals follow in arrival order", held,
                 f"{len(late)} later tickets" if held else
                 f"positions by arrival: {positions[:8]}...")


def _admitted_in_order(ledger: LineLedger) -> Check:
    admitted = sorted((t for t in ledger.tickets if t.admitted_at is not None),
                      key=lambda t: t.position or 0)
    positions = [t.position for t in admitted]
    moments = [t.admitted_at or 0.0 for t in admitted]
    in_order = positions == list(range(1, ledger.admitted + 1))
    monotone = all(a <= b for a, b in pairwise(moments))
    return Check("admissions follow the published order", in_order and monotone,
                 f"{len(admitted)} admitted, positions 1..{ledger.admitted}"
                 if in_order and monotone else
                 f"admitted positions {positions[:8]}..., in time order: {monotone}")


def _told_once(ledger: LineLedger, told: LineTold) -> Check:
    by_ticket = {t.ticket: t for t in ledger.tickets}
    wrong = []
    for ticket, moments in told.admissions.items():
        row = by_ticket.get(ticket)
        if (row is None or row.admitted_at is None or len(moments) > 1
                or any(abs(m - row.admitted_at) > 0.001 for m in moments)):
            wrong.append(ticket)
    return Check("each ticket is admitted once", not wrong,
                 f"{len(told.admissions)} admissions told" if not wrong else
                 f"told other or several admissions: {_sample(wrong)}")


def _bought_admitted(ledger: LineLedger) -> Check:
    admitted = {t.user: t.admitted_at for t in ledger.tickets if t.admitted_at is not None}
    unadmitted = []
    for user, at in ledger.bought.items():
        since = admitted.get(user)
        if (since is None or at < since - CLOCK_SLACK_S
                or at > since + ledger.window_s + COMMIT_SLACK_S):
            unadmitted.append(user)
    return Check("nobody bought without an admitted ticket", not unadmitted,
                 f"{len(ledger.bought)} buyers, each admitted" if not unadmitted else
                 f"bought without an admission in time: {_sample(unadmitted)}")


def _closed_when_final(ledger: LineLedger, told: LineTold) -> Check:
    if not ledger.sold_out:
        return Check("a sold-out line leaves nobody waiting", True, "not sold out")
    problems = []
    if ledger.closed is None:
        problems.append("the line is still open")
    late = [t.ticket for t in ledger.tickets if t.admitted_at is not None
            and ledger.closed_at is not None and t.admitted_at > ledger.closed_at]
    if late:
        problems.append(f"admitted after the close: {_sample(late)}")
    waiting = [ticket for ticket, final in told.finals.items() if final is None]
    if waiting:
        problems.append(f"streams left without a final event: {_sample(waiting)}")
    return Check("a sold-out line leaves nobody waiting", not problems,
                 "; ".join(problems) or f"closed; {len(told.finals)} followed streams ended")


def shuffled(ledger: LineLedger) -> Check:
    """Whether the early tickets' positions are unrelated to their arrival: Spearman's rank
    correlation within four standard errors of 0 (a chance of about 1 in 16,000 to fail for
    a fair shuffle). Needs 100 early tickets or more."""
    early = sorted((t for t in ledger.tickets if t.early and t.position is not None),
                   key=lambda t: t.arrival)
    n = len(early)
    if n < 100:
        return Check("the early order is not the order of arrival", False,
                     f"only {n} early tickets placed")
    d2 = sum((rank - t.position) ** 2 for rank, t in enumerate(early, start=1)
             if t.position is not None)
    rho = 1 - 6 * d2 / (n * (n * n - 1))
    bound = 4 / math.sqrt(n - 1)
    return Check("the early order is not the order of arrival", abs(rho) < bound,
                 f"Spearman rho {rho:+.4f} over {n} tickets (bound {bound:.4f})")


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


async def _read(conn: Any, sale_id: uuid.UUID) -> LineLedger:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        line = await conn.fetchrow(
            "SELECT encode(sha256(l.seed), 'hex') AS commitment, l.seed, l.ordered_at, "
            "l.length, l.admitted, l.closed_why, l.closed_at, f.line_window_s, f.total_stock, "
            "f.sold, (SELECT count(*) FROM purchases p WHERE p.sale_id = f.id "
            " AND p.expires_at IS NOT NULL AND p.confirmed_at IS NULL) AS held "
            "FROM lines l JOIN flash_sales f ON f.id = l.sale_id WHERE l.sale_id = $1",
            sale_id)
        if line is None:
            raise LookupError(f"no line for sale {sale_id} in PostgreSQL")
        tickets = await conn.fetch(
            "SELECT ticket::text AS ticket, user_id, arrival, early, position, admitted_at "
            "FROM tickets WHERE sale_id = $1", sale_id)
        bought = await conn.fetch(
            "SELECT user_id, purchased_at FROM purchases WHERE sale_id = $1", sale_id)
    return LineLedger(
        line["commitment"], bytes(line["seed"]) if line["ordered_at"] is not None else None,
        line["length"], line["admitted"], line["closed_why"], _epoch(line["closed_at"]),
        line["line_window_s"],
        [TicketRow(r["ticket"], r["user_id"], r["arrival"], r["early"], r["position"],
                   _epoch(r["admitted_at"])) for r in tickets],
        {r["user_id"]: r["purchased_at"].timestamp() for r in bought},
        line["sold"] - line["held"] >= line["total_stock"])


def line_snapshot(database_url: str, sale_id: uuid.UUID) -> LineLedger:
    """The sale's line, its tickets and its purchases, read in one snapshot."""
    return run_on_connection(database_url, _read, sale_id)


__all__ = ["FINAL_EVENTS", "JOIN", "LINE_FINAL", "LineLedger", "LineTold", "TicketRow",
           "line_snapshot", "shuffled", "verify_line"]
