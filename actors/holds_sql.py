"""The SQL of holds and the waitlist, as plain asyncio coroutines over an asyncpg connection.

PostgreSQL decides every step, so every process and host acts on one truth:

- a confirm sets ``confirmed_at`` only if the commit lands before ``expires_at`` by the
  database clock (the ``purchases_confirm_in_time`` trigger), and a lapse deletes only rows
  past it that nobody is confirming (``FOR UPDATE SKIP LOCKED``): confirm xor lapse;
- a lapse or cancel moves the hold to ``hold_endings`` and, in the same transaction, gives
  its unit to the first waiting place as a new hold: a unit is never free while someone
  waits;
- a place is taken under the sale's row lock, the lock a lapse, a cancel and a commit also
  take, so a place is only ever given while every unit is held or confirmed, and places
  are numbered in the order they commit.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .errors import HoldEnded, PurchaseNotFound
from .ledger_sql import HOLD_END, INSERT_COLUMNS, PURCHASE_COLUMNS, purchase_from_row
from .model import BuyerStatus, Place, Purchase, Standing

#: The SQLSTATE of a confirm that would commit at or after its hold's end (migration 0003).
HOLD_EXPIRED = "FFH01"

#: "Past its end" for a lapse: the moment the statement began. It never runs ahead of the
#: database clock (a hold ending meanwhile waits for the next sweep) and, unlike
#: ``clock_timestamp()``, it is fixed within the statement, so the index of unpaid holds finds
#: the due ones in order instead of every hold of the sale being read and sorted per batch.
#: It also comes before the statement's snapshot: a confirm that committed before the end
#: committed before the statement and is seen.
PAST_END = "expires_at <= statement_timestamp()"

#: The holds past their end that no confirm has locked: what a lapse may take.
DUE = (f"SELECT id FROM purchases WHERE sale_id = $1 AND {PAST_END} "
       "AND confirmed_at IS NULL ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED")


@dataclass(frozen=True, slots=True)
class Ending:
    """A hold that lapsed or was cancelled, and the holds its units became, if anyone waited.

    The units of the endings of one transaction go to the places they serve together; each
    offer is listed with the ending its first unit came from.
    """

    sale_id: uuid.UUID
    user_id: str
    purchase_id: uuid.UUID
    outcome: Standing
    offers: tuple[Purchase, ...] = ()
    #: Ended long enough ago that any gate built since read the ledger after it.
    past_rebuilds: bool = False
    quantity: int = 1


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


async def _lock_sale(conn: Any, sale_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT total_stock, sold, end_time, clock_timestamp() >= end_time AS ended "
        "FROM flash_sales WHERE id = $1 FOR UPDATE", sale_id)


async def _held_units(conn: Any, sale_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM purchases WHERE sale_id = $1 "
        "AND expires_at IS NOT NULL AND confirmed_at IS NULL", sale_id)


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


async def _offer(conn: Any, sale_id: uuid.UUID, units: int) -> list[Purchase]:
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


def _share(rows: list[Any], offers: list[Purchase]) -> list[tuple[Purchase, ...]]:
    """Each ended row's offers: an offer goes with the row its first unit came from (the
    units of the rows, then those already free, in order)."""
    shares: list[list[Purchase]] = [[] for _ in rows]
    bounds, total = [], 0
    for row in rows:
        total += row["quantity"]
        bounds.append(total)
    first = 0
    for offer in offers:
        index = next((i for i, bound in enumerate(bounds) if first < bound), len(rows) - 1)
        shares[index].append(offer)
        first += offer.quantity
    return [tuple(share) for share in shares]


async def _end(conn: Any, sale_id: uuid.UUID, rows: list[Any], outcome: Standing,
               free: int | None) -> list[Ending]:
    """Record ended holds (``rows``, deleted) and pass their units on to the waitlist.

    ``free`` is how many units were free in the ledger before the rows ended; None when the
    line is closed (the sale ended).
    """
    if not rows:
        return []
    offers = (await _offer(conn, sale_id, free + sum(r["quantity"] for r in rows))
              if free is not None else [])
    endings = [Ending(sale_id, row["user_id"], row["id"], outcome, share,
                      quantity=row["quantity"]) for row, share in zip(rows, _share(rows, offers),
                                                                      strict=True)]
    await conn.execute(
        "INSERT INTO hold_endings (purchase_id, sale_id, user_id, outcome, expires_at, "
        "quantity, offered_to, offered_user) "
        "SELECT e.id, $1, e.user_id, $2, e.expires_at, e.quantity, e.offered_to, e.offered_user "
        "FROM unnest($3::uuid[], $4::text[], $5::timestamptz[], $6::int[], $7::uuid[], "
        "$8::text[]) AS e(id, user_id, expires_at, quantity, offered_to, offered_user)",
        sale_id, outcome.value, [r["id"] for r in rows], [r["user_id"] for r in rows],
        [r["expires_at"] for r in rows], [r["quantity"] for r in rows],
        [e.offers[0].id if e.offers else None for e in endings],
        [e.offers[0].user_id if e.offers else None for e in endings])
    more = [{"id": str(e.purchase_id), "ids": [str(o.id) for o in e.offers[1:]],
             "users": [o.user_id for o in e.offers[1:]]} for e in endings if len(e.offers) > 1]
    if more:
        await conn.execute(
            "UPDATE hold_endings h SET "
            "offered_also = ARRAY(SELECT jsonb_array_elements_text(m.ids))::uuid[], "
            "offered_also_users = ARRAY(SELECT jsonb_array_elements_text(m.users)) "
            "FROM jsonb_to_recordset($1::jsonb) AS m(id uuid, ids jsonb, users jsonb) "
            "WHERE h.purchase_id = m.id", json.dumps(more))
    return endings


def _free(sale: Any) -> int | None:
    """The units free in the ledger of a locked sale (before its rows ending now left), or
    None when its line is closed: the sale ended."""
    if sale is None or sale["ended"]:
        return None
    return max(sale["total_stock"] - sale["sold"], 0)


async def leave_waitlist(conn: Any, sale_id: uuid.UUID, user_id: str) -> bool:
    """Take the user's waiting place out of the line; return whether there was one.

    No lock is needed: a place leaving frees no unit, and an offer that took the place first
    left it offered, which this does not touch.
    """
    return await conn.fetchval(
        "WITH gone AS (DELETE FROM waitlist WHERE sale_id = $1 AND user_id = $2 "
        "AND offered_at IS NULL RETURNING 1) SELECT count(*) > 0 FROM gone", sale_id, user_id)


async def due_sales(conn: Any) -> list[uuid.UUID]:
    """The sales with at least one hold past its end, by the database clock."""
    rows = await conn.fetch(
        f"SELECT DISTINCT sale_id FROM purchases WHERE {PAST_END} AND confirmed_at IS NULL")
    return [r["sale_id"] for r in rows]


async def lapse_due(conn: Any, sale_id: uuid.UUID, limit: int) -> list[Ending]:
    """Lapse up to ``limit`` holds of one sale past their end, in one transaction.

    Each lapses once, whichever process asks: a hold is deleted under its row lock, and one
    that a confirm holds locked is skipped (if the confirm fails, the next pass takes it).
    """
    async with conn.transaction():
        sale = await _lock_sale(conn, sale_id)
        if sale is None:
            return []
        rows = await conn.fetch(
            f"DELETE FROM purchases WHERE id IN ({DUE}) "
            "RETURNING id, user_id, expires_at, quantity", sale_id, limit)
        return await _end(conn, sale_id, list(rows), Standing.LAPSED, _free(sale))


async def confirm(conn: Any, sale_id: uuid.UUID,
                  purchase_id: uuid.UUID) -> tuple[Purchase, bool]:
    """Confirm a hold; a purchase already confirmed answers the same (idempotent).

    Returns:
        The purchase, and whether this call confirmed it (False: it was already).

    Raises:
        HoldEnded: the hold lapsed (or would commit past its end), or was cancelled.
        PurchaseNotFound: the sale holds no such purchase.
    """
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "UPDATE purchases SET confirmed_at = clock_timestamp() WHERE id = $2 "
                "AND sale_id = $1 AND expires_at IS NOT NULL AND confirmed_at IS NULL "
                f"RETURNING {PURCHASE_COLUMNS}", sale_id, purchase_id)
            newly = row is not None
            if row is None:
                row = await conn.fetchrow(
                    f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $2 AND sale_id = $1",
                    sale_id, purchase_id)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == HOLD_EXPIRED:
            raise HoldEnded.of(Standing.LAPSED) from None
        raise
    if row is not None:
        return purchase_from_row(row), newly
    raise await _ended_or_unknown(conn, sale_id, purchase_id)


async def cancel(conn: Any, sale_id: uuid.UUID, purchase_id: uuid.UUID,
                 user_id: str | None = None) -> Ending:
    """Cancel a hold (of ``user_id``, when given): its unit returns at once, to the waitlist
    first. Cancelling a cancelled hold answers the same, an ending with no ``user_id``: this
    call ended nothing.

    Raises:
        HoldEnded: the hold lapsed, or was confirmed (``Standing.CONFIRMED``).
        PurchaseNotFound: the sale holds no such purchase (of that user).
    """
    async with conn.transaction():
        sale = await _lock_sale(conn, sale_id)
        rows = await conn.fetch(
            "DELETE FROM purchases WHERE id = $2 AND sale_id = $1 AND expires_at IS NOT NULL "
            "AND confirmed_at IS NULL AND ($3::text IS NULL OR user_id = $3) "
            "RETURNING id, user_id, expires_at, quantity", sale_id, purchase_id, user_id)
        if rows:
            return (await _end(conn, sale_id, list(rows), Standing.CANCELLED, _free(sale)))[0]
        row = await conn.fetchrow(
            "SELECT user_id, confirmed_at IS NOT NULL OR expires_at IS NULL AS confirmed "
            "FROM purchases WHERE id = $2 AND sale_id = $1", sale_id, purchase_id)
    if row is not None and (user_id is None or row["user_id"] == user_id):
        raise HoldEnded.of(Standing.CONFIRMED)
    error = await _ended_or_unknown(conn, sale_id, purchase_id, user_id)
    if isinstance(error, HoldEnded) and error.standing == Standing.CANCELLED:
        return Ending(sale_id, "", purchase_id, Standing.CANCELLED)
    raise error


async def _ended_or_unknown(conn: Any, sale_id: uuid.UUID, purchase_id: uuid.UUID,
                            user_id: str | None = None) -> Exception:
    ended = await conn.fetchrow(
        "SELECT outcome, user_id FROM hold_endings WHERE purchase_id = $2 AND sale_id = $1",
        sale_id, purchase_id)
    if ended is None or (user_id is not None and ended["user_id"] != user_id):
        return PurchaseNotFound()
    return HoldEnded.of(ended["outcome"])


async def buyer_statuses(conn: Any, sale_id: uuid.UUID,
                         users: list[str]) -> dict[str, BuyerStatus]:
    """Where each of ``users`` stands in a sale, read in one snapshot.

    A purchase or hold comes first, then a waiting place (closed once the sale ended or
    fewer units than it asks are left unconfirmed), then how the user's last hold ended;
    else nothing.
    """
    found: dict[str, BuyerStatus] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sale = await conn.fetchrow(
            "SELECT total_stock, sold, clock_timestamp() >= end_time AS ended "
            "FROM flash_sales WHERE id = $1", sale_id)
        if sale is None:
            return {u: BuyerStatus(None) for u in users}
        for row in await conn.fetch(
                f"SELECT {PURCHASE_COLUMNS} FROM purchases "
                "WHERE sale_id = $1 AND user_id = ANY($2::text[])", sale_id, users):
            purchase = purchase_from_row(row)
            found[purchase.user_id] = BuyerStatus(
                Standing.HELD if purchase.held else Standing.CONFIRMED, purchase)
        rest = [u for u in users if u not in found]
        if rest:
            unsold = sale["total_stock"] - (sale["sold"] - await _held_units(conn, sale_id))
            for row in await conn.fetch(PLACES, sale_id, rest):
                closed = sale["ended"] or row["quantity"] > unsold
                place = Place(sale_id, row["user_id"], row["position"], row["length"], closed,
                              row["quantity"])
                found[row["user_id"]] = BuyerStatus(
                    Standing.CLOSED if closed else Standing.WAITLISTED, place=place)
        rest = [u for u in users if u not in found]
        if rest:
            for row in await conn.fetch(
                    "SELECT DISTINCT ON (user_id) user_id, outcome, ended_at FROM hold_endings "
                    "WHERE sale_id = $1 AND user_id = ANY($2::text[]) "
                    "ORDER BY user_id, ended_at DESC", sale_id, rest):
                found[row["user_id"]] = BuyerStatus(Standing(row["outcome"]),
                                                    ended_at=row["ended_at"])
    return {u: found.get(u, BuyerStatus(None)) for u in users}


async def gate_backlog(conn: Any, older_than_s: float, limit: int,
                       rebuild_bound_s: float) -> list[Ending]:
    """Endings whose gate step was not recorded done ``older_than_s`` after they ended;
    those older than ``rebuild_bound_s`` are marked ``past_rebuilds``."""
    rows = await conn.fetch(
        "SELECT e.sale_id, e.user_id, e.purchase_id, e.outcome, e.quantity, "
        "array_remove(e.offered_to || coalesce(e.offered_also, '{}'), NULL) AS offers, "
        "array_remove(e.offered_user || coalesce(e.offered_also_users, '{}'), NULL) "
        "AS offer_users, "
        "ended_at < clock_timestamp() - make_interval(secs => $3) AS past_rebuilds "
        "FROM hold_endings e WHERE NOT gate_done "
        "AND ended_at < clock_timestamp() - make_interval(secs => $1) "
        "ORDER BY ended_at LIMIT $2", older_than_s, limit, rebuild_bound_s)
    # An offer's units: its hold's, or, if that ended since, as many as its ending says.
    units = {r["id"]: r["quantity"] for r in await conn.fetch(
        "SELECT purchase_id AS id, quantity FROM hold_endings WHERE purchase_id = ANY($1) "
        "UNION ALL SELECT id, quantity FROM purchases WHERE id = ANY($1)",
        [o for r in rows for o in r["offers"]])}
    return [Ending(r["sale_id"], r["user_id"], r["purchase_id"], Standing(r["outcome"]),
                   tuple(Purchase(o, r["sale_id"], user, _EPOCH, quantity=units.get(o, 1))
                         for o, user in zip(r["offers"], r["offer_users"], strict=True)),
                   r["past_rebuilds"], r["quantity"]) for r in rows]


async def mark_gate_done(conn: Any, purchase_ids: list[uuid.UUID]) -> None:
    """Record that the gate was told of these endings."""
    await conn.execute("UPDATE hold_endings SET gate_done = true "
                       "WHERE purchase_id = ANY($1::uuid[])", purchase_ids)


_EPOCH = datetime.fromtimestamp(0).astimezone()

__all__ = ["Ending", "JoinOutcome", "Joined", "buyer_statuses", "cancel", "confirm",
           "due_sales", "gate_backlog", "join_waitlist", "lapse_due", "leave_waitlist",
           "mark_gate_done"]
