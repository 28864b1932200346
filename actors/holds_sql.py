"""The SQL of holds, as plain asyncio coroutines over an asyncpg connection; the waitlist's
own (a place, and the offers down the line) is :mod:`actors.places_sql`'s.

PostgreSQL decides every step, so every process and host acts on one truth:

- a confirm sets ``confirmed_at`` only if the commit lands before ``expires_at`` by the
  database clock (the ``purchases_confirm_in_time`` trigger), and a lapse deletes only rows
  past it that nobody is confirming (``FOR UPDATE SKIP LOCKED``): confirm xor lapse;
- a lapse or cancel moves the hold to ``hold_endings`` and, in the same transaction, gives
  its units to the waiting places they serve as new holds: a unit is never free while a
  place it could serve waits.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .errors import HoldEnded, PurchaseNotFound
from .ledger_sql import PURCHASE_COLUMNS, purchase_from_row
from .model import BuyerStatus, Place, Purchase, Standing
from .places_sql import PLACES, offer

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


async def _lock_sale(conn: Any, sale_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT total_stock, sold, end_time, clock_timestamp() >= end_time AS ended "
        "FROM flash_sales WHERE id = $1 FOR UPDATE", sale_id)


async def _held_units(conn: Any, sale_id: uuid.UUID) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM purchases WHERE sale_id = $1 "
        "AND expires_at IS NOT NULL AND confirmed_at IS NULL", sale_id)


def _share(rows: list[Any], offers: list[Purchase]) -> list[tuple[Purchase, ...]]:
    """Each ended row's offers: an offer goes with the row its first unit came from (the
    units of the rows, then those already free, in order)."""
    shares: list[list[Purchase]] = [[] for _ in rows]
    bounds, total = [], 0
    for row in rows:
        total += row["quantity"]
        bounds.append(total)
    first = 0
    for made in offers:
        index = next((i for i, bound in enumerate(bounds) if first < bound), len(rows) - 1)
        shares[index].append(made)
        first += made.quantity
    return [tuple(share) for share in shares]


async def _end(conn: Any, sale_id: uuid.UUID, rows: list[Any], outcome: Standing,
               free: int | None) -> list[Ending]:
    """Record ended holds (``rows``, deleted) and pass their units on to the waitlist.

    ``free`` is how many units were free in the ledger before the rows ended; None when the
    line is closed (the sale ended).
    """
    if not rows:
        return []
    offers = (await offer(conn, sale_id, free + sum(r["quantity"] for r in rows))
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

__all__ = ["Ending", "buyer_statuses", "cancel", "confirm", "due_sales", "gate_backlog",
           "lapse_due", "mark_gate_done"]
