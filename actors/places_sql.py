"""The SQL of a place in a line: the waitlist behind a sale's holds, and the waiting room in
front of a sale.

A place is one idea with one home. In the waitlist it is taken here (:func:`join_waitlist`),
left here (:func:`leave_waitlist`), numbered here (:data:`PLACES`) and served here
(:func:`offer`), whoever asks: a press, or a hold that ended (:mod:`actors.holds_sql`). In
the waiting room it is a ticket: taken here (:func:`join_line`), placed and admitted here
(:func:`advance_line`), closed here (:func:`close_line`) and read here.

The waitlist:

- A place is taken under the sale's row lock, the lock a lapse, a cancel and a commit also
  take, so a place is only ever given while fewer units are free than it asks, and places
  are numbered in the order they commit.
- Units that come back are offered down the line first fit (:func:`fits`), in the
  transaction that freed them: no unit is free while a place it could serve waits.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .ledger_sql import HOLD_END, INSERT_COLUMNS, PURCHASE_COLUMNS, purchase_from_row
from .model import Line, Place, Purchase, Ticket


class Joined(enum.Enum):
    """Why a press got no place (see :class:`JoinOutcome`)."""

    PLACED = "placed"
    #: The user had a place already: the same one, not a new one.
    WAITING = "waiting"
    STANDING = "standing"
    FREE = "free"
    SOLD_OUT = "sold_out"
    #: Fewer units than asked are not yet confirmed: final for that quantity.
    SHORT = "short"
    #: More units asked than the sale's per-user limit, as the ledger holds it.
    OVER_LIMIT = "over_limit"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    """What asking for a place decided: a place (new, ``PLACED``, or the user's own already,
    ``WAITING``), the user's own purchase, or why not.

    ``FREE``: as many units as asked are free in the ledger (a reservation in flight, a
    return not yet in the gate), so the press should try the gate again. ``SOLD_OUT``: every
    unit is confirmed. ``SHORT``: fewer than asked are not confirmed (``remaining``).
    ``OVER_LIMIT``: more asked than the ledger's per-user limit (``limit``).
    """

    joined: Joined
    place: Place | None = None
    purchase: Purchase | None = None
    remaining: int = 0
    limit: int = 0



#: The places of some users ($2) in a sale's line ($1): each one's position, quantity and the
#: line's length, numbered over the whole line in one pass.
PLACES = (
    "SELECT user_id, position, length, quantity FROM ("
    " SELECT user_id, quantity, row_number() OVER (ORDER BY place) AS position,"
    " count(*) OVER () AS length"
    " FROM waitlist WHERE sale_id = $1 AND offered_at IS NULL) line "
    "WHERE user_id = ANY($2::text[])")


async def join_waitlist(conn: Any, sale_id: uuid.UUID, user_id: str,
                        quantity: int = 1) -> JoinOutcome:
    """Give ``user_id`` a place in the sale's waitlist for ``quantity`` units, if fewer than
    that are free and enough are held to serve it once they come back.

    A user keeps one place (and its quantity): asking again answers the same one. A user
    whose earlier place was offered units gets a new place at the back. Decided in one call
    of the ``waitlist_join`` function (migrations 0003, 0004), under the sale's row lock.

    A quantity above the sale's per-user limit, as the ledger holds it (a process's copy of
    the sale may allow more), gets no place: no offer could ever hold it, and the ending
    whose units went to it would fail. The limit is fixed once the sale started.
    """
    if quantity > 1:
        limit = await conn.fetchval("SELECT per_user_limit FROM flash_sales WHERE id = $1",
                                    sale_id)
        if limit is not None and quantity > limit:
            return JoinOutcome(Joined.OVER_LIMIT, limit=limit)
    row = await conn.fetchrow("SELECT * FROM waitlist_join($1, $2, $3)",
                              sale_id, user_id, quantity)
    joined = Joined(row["outcome"])
    if joined is Joined.STANDING:
        found = await conn.fetchrow(
            f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $1", row["purchase_id"])
        if found is None:  # it ended since: ask again, as a press would
            return await join_waitlist(conn, sale_id, user_id, quantity)
        return JoinOutcome(joined, purchase=purchase_from_row(found))
    if joined in (Joined.PLACED, Joined.WAITING):
        kept = await conn.fetchval("SELECT quantity FROM waitlist WHERE sale_id = $1 "
                                   "AND user_id = $2", sale_id, user_id)
        return JoinOutcome(joined, place=Place(sale_id, user_id, row["line_position"],
                                               row["line_length"], quantity=kept))
    return JoinOutcome(joined, remaining=row["remaining"] or 0)


#: Up to $3 places of sale $1 still waiting after place $2, in order, locked.
LINE = ("SELECT user_id, quantity, place FROM waitlist WHERE sale_id = $1 "
        "AND offered_at IS NULL AND place > $2 ORDER BY place LIMIT $3 FOR UPDATE")
#: A new hold of a full window for each user of $2 (in order), of the quantity in $3, who
#: has no purchase yet.
OFFER = (f"INSERT INTO purchases {INSERT_COLUMNS} "
         f"SELECT gen_random_uuid(), $1, l.user_id, clock_timestamp(), {HOLD_END}, l.n "
         "FROM unnest($2::text[], $3::int[]) WITH ORDINALITY AS l(user_id, n, i) ORDER BY l.i "
         f"ON CONFLICT (sale_id, user_id) DO NOTHING RETURNING {PURCHASE_COLUMNS}")
#: Each place of $2 offered: the hold it became ($3), or NULL when it was passed over; the
#: statement's one moment for all of them, so a batch offered together is in place order.
OFFERED = ("UPDATE waitlist w SET offered_at = statement_timestamp(), purchase_id = o.id "
           "FROM unnest($2::text[], $3::uuid[]) AS o(user_id, id) "
           "WHERE w.sale_id = $1 AND w.user_id = o.user_id")


def fits(line: list[tuple[str, int]], units: int) -> list[tuple[str, int]]:
    """The places of ``line`` (user, quantity, in order) that ``units`` serve, first fit: each
    place takes its whole quantity if what is left covers it, else it keeps waiting and the
    places after it are served. So no unit stays free while a place it could serve waits."""
    served = []
    for user, quantity in line:
        if quantity <= units:
            served.append((user, quantity))
            units -= quantity
    return served


async def offer(conn: Any, sale_id: uuid.UUID, units: int) -> list[Purchase]:
    """Give ``units`` free units (the sale locked) to the waiting places, in order, each its
    whole quantity (:func:`fits`); return the holds made.

    A place whose user already has a purchase (they pressed on another server meanwhile) is
    passed over, marked offered: nobody holds twice; its units go on down the line.

    A page of places takes three statements (:data:`LINE`, :data:`OFFER`,
    :data:`OFFERED`), not two per place; each joins through an index, whatever the planner
    guesses of a table freshly filled (a plan joining the statements' own results to each
    other would be a nested loop of a thousand by a thousand on a table never analysed).
    """
    offers: list[Purchase] = []
    after = -1
    while units > 0:
        rows = await conn.fetch(LINE, sale_id, after, units)
        if not rows:
            break
        after = rows[-1]["place"]
        served = fits([(r["user_id"], r["quantity"]) for r in rows], units)
        if not served:
            continue
        users = [u for u, _ in served]
        held = {r["user_id"]: purchase_from_row(r)
                for r in await conn.fetch(OFFER, sale_id, users, [n for _, n in served])}
        await conn.execute(OFFERED, sale_id, users,
                           [held[u].id if u in held else None for u in users])
        made = [held[u] for u in users if u in held]
        offers.extend(made)
        units -= sum(p.quantity for p in made)
        if len(made) < len(served):
            after = -1  # units passed over may serve a place this page skipped
    return offers



async def leave_waitlist(conn: Any, sale_id: uuid.UUID, user_id: str) -> bool:
    """Take the user's waiting place out of the line; return whether there was one.

    No lock is needed: a place leaving frees no unit, and an offer that took the place first
    left it offered, which this does not touch.
    """
    return await conn.fetchval(
        "WITH gone AS (DELETE FROM waitlist WHERE sale_id = $1 AND user_id = $2 "
        "AND offered_at IS NULL RETURNING 1) SELECT count(*) > 0 FROM gone", sale_id, user_id)



# The waiting room (migration 0005): one line per sale, of tickets. The order of the tickets
# that joined before the opening is ascending sha256(seed || ticket id), which anyone can
# recompute once the seed is public (:func:`line_order`).


class Entered(enum.Enum):
    """What asking for a ticket decided (the ``line_join`` function's outcome)."""

    JOINED = "joined"
    #: The user's own ticket, again: one per user.
    KEPT = "kept"
    #: The sale has no waiting room.
    NONE = "none"
    #: The line opened while the join waited (asked again, never returned).
    AGAIN = "again"
    NOT_OPEN = "not_open"
    #: The line closed: every unit is sold for good.
    CLOSED = "closed"
    ENDED = "ended"


TICKET_COLUMNS = "ticket, sale_id, user_id, joined_at, early, position, admitted_at"
LINE_COLUMNS = ("encode(sha256(seed), 'hex') AS commitment, ordered_at IS NOT NULL AS ordered, "
                "length, admitted, closed_why, CASE WHEN ordered_at IS NOT NULL THEN seed END "
                "AS seed")


def ticket_from_row(row: Any) -> Ticket:
    """Build a :class:`Ticket` from a ``tickets`` row (:data:`TICKET_COLUMNS`)."""
    return Ticket(row["ticket"], row["sale_id"], row["user_id"], row["joined_at"],
                  row["early"], row["position"], row["admitted_at"])


def line_from_row(sale_id: uuid.UUID, row: Any) -> Line:
    """Build a :class:`Line` from a ``lines`` row (:data:`LINE_COLUMNS`)."""
    return Line(sale_id, row["commitment"], row["ordered"], row["length"], row["admitted"],
                row["closed_why"], None if row["seed"] is None else bytes(row["seed"]))


def line_order(seed: bytes, tickets: list[uuid.UUID]) -> list[uuid.UUID]:
    """The order the opening gives the tickets that joined before it: what ``line_join``
    computes in SQL, for anyone to check with the revealed seed."""
    return sorted(tickets, key=lambda t: hashlib.sha256(seed + str(t).encode()).digest())


async def join_line(conn: Any, sale_id: uuid.UUID, user_id: str) -> tuple[Entered, Ticket | None]:
    """Give ``user_id`` a ticket in the sale's line (their own again, if they have one)."""
    row = await conn.fetchrow("SELECT * FROM line_join($1, $2)", sale_id, user_id)
    while row["outcome"] == "again":  # the line opened while the join waited: once more
        row = await conn.fetchrow("SELECT * FROM line_join($1, $2)", sale_id, user_id)
    if row["ticket"] is None:
        return Entered(row["outcome"]), None
    return Entered(row["outcome"]), Ticket(row["ticket"], sale_id, user_id, row["joined_at"],
                                           row["early"], row["line_position"],
                                           row["admitted_at"])


async def find_ticket(conn: Any, sale_id: uuid.UUID, ticket: uuid.UUID | None = None,
                      user_id: str | None = None) -> Ticket | None:
    """A ticket of the sale, by its id or by its user; None when there is none."""
    row = await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS} FROM tickets WHERE sale_id = $1 "
        "AND (ticket = $2 OR user_id = $3)", sale_id, ticket, user_id)
    return None if row is None else ticket_from_row(row)


async def advance_line(conn: Any, sale_id: uuid.UUID) -> Line | None:
    """Move the line on (place the early tickets at the opening, admit the next ones at
    the sale's rate) and return it; None when the sale has no line. Any process may call it
    at any time: it is decided under the line's row lock, by PostgreSQL's clock."""
    async with conn.transaction():
        moved = await conn.fetchrow("SELECT * FROM line_advance($1)", sale_id)
        if moved is None or moved["ordered"] is None:
            return None
        row = await conn.fetchrow(f"SELECT {LINE_COLUMNS} FROM lines WHERE sale_id = $1",
                                  sale_id)
    return line_from_row(sale_id, row)


async def close_line(conn: Any, sale_id: uuid.UUID, why: str) -> None:
    """Close the sale's line for ``why`` ("sold_out"): no more joins, no more admissions."""
    await conn.execute("UPDATE lines SET closed_at = clock_timestamp(), closed_why = $2 "
                       "WHERE sale_id = $1 AND closed_at IS NULL", sale_id, why)


async def line_positions(conn: Any, sale_id: uuid.UUID, after: int = 0) -> dict[uuid.UUID, int]:
    """The position of every placed ticket of the sale past ``after``, by ticket id."""
    rows = await conn.fetch("SELECT ticket, position FROM tickets WHERE sale_id = $1 "
                            "AND position > $2", sale_id, after)
    return {r["ticket"]: r["position"] for r in rows}


async def admission_moments(conn: Any, sale_id: uuid.UUID, after: int,
                            upto: int) -> dict[int, datetime]:
    """When each position in (``after``, ``upto``] was admitted."""
    rows = await conn.fetch("SELECT position, admitted_at FROM tickets WHERE sale_id = $1 "
                            "AND position > $2 AND position <= $3", sale_id, after, upto)
    return {r["position"]: r["admitted_at"] for r in rows}


async def line_audit(conn: Any, sale_id: uuid.UUID) -> tuple[Line | None, list[Ticket]]:
    """The line and every ticket in it, in arrival order, read in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(f"SELECT {LINE_COLUMNS} FROM lines WHERE sale_id = $1",
                                  sale_id)
        rows = await conn.fetch(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE sale_id = $1 "
                                "ORDER BY arrival", sale_id)
    line = None if row is None else line_from_row(sale_id, row)
    return line, [ticket_from_row(r) for r in rows]


async def signing_key(conn: Any, name: str, drawn: bytes) -> bytes:
    """The key kept under ``name``: ``drawn`` if this call is the first to ask."""
    await conn.execute("INSERT INTO signing_keys (name, secret) VALUES ($1, $2) "
                       "ON CONFLICT (name) DO NOTHING", name, drawn)
    return bytes(await conn.fetchval("SELECT secret FROM signing_keys WHERE name = $1", name))


__all__ = ["LINE_COLUMNS", "PLACES", "TICKET_COLUMNS", "Entered", "JoinOutcome", "Joined",
           "admission_moments", "advance_line", "close_line", "find_ticket", "fits",
           "join_line", "join_waitlist", "leave_waitlist", "line_audit", "line_order",
           "line_positions", "offer", "signing_key"]
