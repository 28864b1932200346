"""The ledger's SQL, as plain asyncio coroutines over an asyncpg connection or pool.

The ledger actor calls these through trio-asyncio; the CLI calls them under asyncio.
Every value travels as a bind parameter: nothing user-supplied is ever put in SQL text.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from .errors import InvalidInput, SaleNotActive, SaleNotFound, SaleStarted, StockBelowSold
from .model import LedgerState, Purchase, Sale, Tally, WaitingRoom

SALE_COLUMNS = ("id, product_name, total_stock, start_time, end_time, hold_seconds, "
                "per_user_limit, line_opens_s, line_admit_per_s, line_window_s")
#: A purchase row's columns, as :func:`purchase_from_row` reads them.
PURCHASE_COLUMNS = "id, sale_id, user_id, purchased_at, expires_at, confirmed_at, quantity"


def sale_from_row(row: Any) -> Sale:
    """Build a :class:`Sale` from a ``flash_sales`` row."""
    return Sale(
        id=row["id"],
        product_name=row["product_name"],
        total_stock=row["total_stock"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        hold_seconds=row["hold_seconds"],
        per_user_limit=row["per_user_limit"],
        waiting_room=(None if row["line_admit_per_s"] is None else WaitingRoom(
            row["line_opens_s"], row["line_admit_per_s"], row["line_window_s"])),
    )


def room_columns(room: WaitingRoom | None) -> tuple[int | None, float | None, int | None]:
    """A waiting room as its three ``flash_sales`` columns (all None: no waiting room)."""
    if room is None:
        return None, None, None
    return room.opens_before_s, room.admit_per_s, room.window_s


def purchase_from_row(row: Any) -> Purchase:
    """Build a :class:`Purchase` from a ``purchases`` row (:data:`PURCHASE_COLUMNS`)."""
    return Purchase(row["id"], row["sale_id"], row["user_id"], row["purchased_at"],
                    row["expires_at"], row["confirmed_at"], row["quantity"])


def advisory_key(sale_id: uuid.UUID, user_id: str) -> int:
    """A stable signed 64-bit advisory-lock key for one (sale, user) pair."""
    digest = hashlib.blake2b(f"{sale_id}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def fetch_sales(conn: Any) -> list[Sale]:
    """Every sale, oldest first."""
    rows = await conn.fetch(f"SELECT {SALE_COLUMNS} FROM flash_sales ORDER BY start_time, id")
    return [sale_from_row(r) for r in rows]


async def fetch_sale(conn: Any, sale_id: uuid.UUID) -> Sale | None:
    """One sale by id, or None."""
    row = await conn.fetchrow(f"SELECT {SALE_COLUMNS} FROM flash_sales WHERE id = $1", sale_id)
    return sale_from_row(row) if row else None


async def insert_sale(conn: Any, product_name: str, total_stock: int, start_time: datetime,
                      end_time: datetime, hold_seconds: int | None = None,
                      per_user_limit: int = 1, waiting_room: WaitingRoom | None = None) -> Sale:
    """Schedule a new sale and return it (with ``hold_seconds``, a sale of holds; with a
    ``per_user_limit`` above 1, a buyer may take up to that many units; with a
    ``waiting_room``, buyers join its line first)."""
    row = await conn.fetchrow(
        f"INSERT INTO flash_sales (product_name, total_stock, start_time, end_time, "
        f"hold_seconds, per_user_limit, line_opens_s, line_admit_per_s, line_window_s) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SALE_COLUMNS}",
        product_name, total_stock, start_time, end_time, hold_seconds, per_user_limit,
        *room_columns(waiting_room),
    )
    return sale_from_row(row)


async def update_sale(conn: Any, sale_id: uuid.UUID, *, product_name: str | None = None,
                      total_stock: int | None = None, start_time: datetime | None = None,
                      end_time: datetime | None = None,
                      hold_seconds: int | None = None,
                      per_user_limit: int | None = None,
                      waiting_room: WaitingRoom | None = None) -> Sale:
    """Change a sale that has not started yet (by the database clock); None leaves a field.

    The row is locked for the check and the write, so no purchase commits in between.

    Raises:
        SaleNotFound: no sale has this id.
        SaleStarted: its window has opened.
        StockBelowSold: ``total_stock`` is below the units already committed.
        InvalidInput: the resulting window ends at or before its start.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {SALE_COLUMNS}, sold, start_time <= clock_timestamp() AS started "
            "FROM flash_sales WHERE id = $1 FOR UPDATE", sale_id)
        if row is None:
            raise SaleNotFound(f"There is no flash sale {sale_id}.")
        if row["started"]:
            raise SaleStarted()
        if total_stock is not None and total_stock < row["sold"]:
            raise StockBelowSold(row["sold"])
        if (end_time or row["end_time"]) <= (start_time or row["start_time"]):
            raise InvalidInput("endTime must be after startTime.", field="endTime")
        updated = await conn.fetchrow(
            "UPDATE flash_sales SET product_name = coalesce($2, product_name), "
            "total_stock = coalesce($3, total_stock), start_time = coalesce($4, start_time), "
            "end_time = coalesce($5, end_time), hold_seconds = coalesce($6, hold_seconds), "
            "per_user_limit = coalesce($7, per_user_limit), "
            "line_opens_s = coalesce($8, line_opens_s), "
            "line_admit_per_s = coalesce($9, line_admit_per_s), "
            "line_window_s = coalesce($10, line_window_s) "
            f"WHERE id = $1 RETURNING {SALE_COLUMNS}",
            sale_id, product_name, total_stock, start_time, end_time, hold_seconds,
            per_user_limit, *room_columns(waiting_room),
        )
    return sale_from_row(updated)


async def end_sale(conn: Any, sale_id: uuid.UUID) -> Sale:
    """End a running sale now, by the database clock; a sale already over is left as it is.

    The commit-time window check reads the new end, so no purchase commits after it.

    Raises:
        SaleNotFound: no sale has this id.
        SaleNotActive: the sale has not started (change its window instead).
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {SALE_COLUMNS}, start_time > clock_timestamp() AS upcoming, "
            "end_time <= clock_timestamp() AS ended FROM flash_sales WHERE id = $1 FOR UPDATE",
            sale_id)
        if row is None:
            raise SaleNotFound(f"There is no flash sale {sale_id}.")
        if row["upcoming"]:
            raise SaleNotActive(started=False)
        if row["ended"]:
            return sale_from_row(row)
        ended = await conn.fetchrow(
            f"UPDATE flash_sales SET end_time = clock_timestamp() WHERE id = $1 "
            f"RETURNING {SALE_COLUMNS}", sale_id)
    return sale_from_row(ended)


async def database_time(conn: Any) -> datetime:
    """PostgreSQL's clock now (``clock_timestamp()``, which the commit-time window check reads)."""
    return await conn.fetchval("SELECT clock_timestamp()")


async def sold_count(conn: Any, sale_id: uuid.UUID) -> int:
    """How many units of a sale are committed."""
    return (await tally(conn, sale_id)).sold


#: A sale's tally in one statement, in units: the held units and the line's length come from indexes
#: that hold only unpaid holds and waiting places, empty in a sale without holds.
TALLY = (
    "SELECT total_stock, sold, buyers, "
    "(SELECT coalesce(sum(p.quantity), 0) FROM purchases p WHERE p.sale_id = f.id "
    " AND p.expires_at IS NOT NULL AND p.confirmed_at IS NULL) AS held, "
    "(SELECT count(*) FROM waitlist w WHERE w.sale_id = f.id AND w.offered_at IS NULL) "
    " AS waiting "
    "FROM flash_sales f WHERE id = $1")


async def tally(conn: Any, sale_id: uuid.UUID) -> Tally:
    """A sale's stock and its committed units, read together (0 of 0 for an unknown sale)."""
    row = await conn.fetchrow(TALLY, sale_id)
    return (Tally(row["total_stock"], row["sold"], row["held"], row["waiting"], row["buyers"])
            if row else Tally(0, 0))


async def find_purchases(conn: Any, sale_id: uuid.UUID, users: list[str]) -> dict[str, Purchase]:
    """The committed purchases of ``users`` in a sale, by user id (absent: none)."""
    rows = await conn.fetch(
        f"SELECT {PURCHASE_COLUMNS} FROM purchases "
        "WHERE sale_id = $1 AND user_id = ANY($2::text[])",
        sale_id, users,
    )
    return {r["user_id"]: purchase_from_row(r) for r in rows}


async def ledger_state(conn: Any, sale: Sale, page: int,
                       page_timeout_s: float | None) -> LedgerState:
    """What is committed for a sale, read in one snapshot: the state the gate is rebuilt from.

    The stock comes from the same snapshot as the count, never from ``sale``, a copy that
    an operator's change may have made stale.

    The purchases are read ``page`` at a time inside the snapshot, each page within
    ``page_timeout_s``, so a sale of a million buyers is no single query against the timeout.
    """
    buyers: dict[str, str] = {}
    quantities: dict[str, int] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counted = await tally(conn, sale.id)
        after = ""
        while True:
            rows = await conn.fetch(
                "SELECT user_id, id, quantity FROM purchases WHERE sale_id = $1 "
                "AND user_id > $2 ORDER BY user_id LIMIT $3", sale.id, after, page,
                timeout=page_timeout_s)
            buyers.update((r["user_id"], str(r["id"])) for r in rows)
            quantities.update((r["user_id"], r["quantity"]) for r in rows if r["quantity"] > 1)
            if len(rows) < page:
                break
            after = rows[-1]["user_id"]
    return LedgerState(counted.total_stock, counted.sold, buyers, quantities)


async def on_connection(pool: Any, fn: Any, *args: Any) -> Any:
    """Run ``fn(conn, *args)`` on a connection taken from ``pool``."""
    async with pool.acquire() as conn:
        return await fn(conn, *args)


#: The constraint that means "no stock left"; any other violation is an error.
STOCK_CONSTRAINT = "sold_within_stock"
#: SQLSTATEs the commit-time window trigger raises (migration 0002).
NOT_STARTED, ENDED = "FFW01", "FFW02"
#: The SQLSTATE of a row over its sale's per-user limit (migration 0004); the message ends
#: with the limit.
OVER_LIMIT = "FFQ01"


class WindowClosed(Exception):
    """The sale's window, by PostgreSQL's clock, did not hold at commit."""

    def __init__(self, *, started: bool) -> None:
        super().__init__("sale ended" if started else "sale not started")
        self.started = started


@dataclass(frozen=True, slots=True)
class BatchResult:
    """How one batch was decided.

    Attributes:
        committed: ids of the purchases committed.
        expires: when each committed hold lapses unless confirmed (absent: no hold).
        existing: the standing purchase of each other user that already had one.
        no_stock: ids refused because too few units were left uncommitted.
        over_limit: ids refused for taking more units than the sale's per-user limit, which
            the ledger holds (the limit it named).
        closed: the sale's window was closed at commit (None: it was open); nothing committed.
    """

    committed: set[uuid.UUID] = field(default_factory=set)
    existing: dict[str, Purchase] = field(default_factory=dict)
    no_stock: set[uuid.UUID] = field(default_factory=set)
    closed: WindowClosed | None = None
    expires: dict[uuid.UUID, datetime] = field(default_factory=dict)
    over_limit: dict[uuid.UUID, int] = field(default_factory=dict)


class NotSent(Exception):
    """No connection could be had: nothing of the batch reached PostgreSQL."""


async def _acquire(pool: Any) -> Any:
    try:
        return await pool.acquire()
    except Exception as exc:
        raise NotSent() from exc


def _window_error(exc: asyncpg.PostgresError) -> WindowClosed | None:
    state = getattr(exc, "sqlstate", None)
    if state in (NOT_STARTED, ENDED):
        return WindowClosed(started=state == ENDED)
    return None


async def _lock(conn: Any, keys: list[int]) -> None:
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k", keys)


INSERT_COLUMNS = "(id, sale_id, user_id, purchased_at, expires_at, quantity)"
#: A new row's end of hold ($1 is the sale): the database clock plus the sale's window, or
#: NULL in a sale without holds.
HOLD_END = ("(SELECT clock_timestamp() + make_interval(secs => s.hold_seconds) "
            "FROM flash_sales s WHERE s.id = $1)")


async def write_batch(pool: Any, sale_id: uuid.UUID, purchases: list[Purchase]) -> BatchResult:
    """Commit a batch of purchases of one sale in one transaction (group commit).

    Takes ``pg_advisory_xact_lock`` per (sale, user) in ascending key order, so concurrent
    batches from other processes cannot deadlock. If the batch would pass the stock, the
    CHECK on ``flash_sales.sold`` aborts it and the rows are retried one by one; a violation
    of any other constraint is an error. A commit outside the sale's window (by the database
    clock, at commit time) commits nothing.
    """
    keys = sorted({advisory_key(sale_id, p.user_id) for p in purchases})
    conn = await _acquire(pool)
    try:
        try:
            try:
                async with conn.transaction():
                    await _lock(conn, keys)
                    rows = await conn.fetch(
                        f"INSERT INTO purchases {INSERT_COLUMNS} "
                        f"SELECT p.id, $1, p.user_id, p.at, {HOLD_END}, p.n "
                        "FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::int[]) "
                        "AS p(id, user_id, at, n) "
                        "ON CONFLICT (sale_id, user_id) DO NOTHING RETURNING id, expires_at",
                        sale_id,
                        [p.id for p in purchases],
                        [p.user_id for p in purchases],
                        [p.purchased_at for p in purchases],
                        [p.quantity for p in purchases],
                    )
                    committed = {r["id"] for r in rows}
                    existing = await _existing(conn, sale_id, purchases, committed)
                return BatchResult(committed, existing,
                                   expires=_expiries(rows))
            except asyncpg.CheckViolationError as exc:
                if exc.constraint_name != STOCK_CONSTRAINT:
                    raise
                return await _write_one_by_one(conn, sale_id, purchases, keys)
            except asyncpg.PostgresError as exc:
                if _limit_named(exc) is None:
                    raise
                return await _write_one_by_one(conn, sale_id, purchases, keys)
        except asyncpg.PostgresError as exc:
            closed = _window_error(exc)
            if closed is None:
                raise
            return BatchResult(closed=closed)
    finally:
        await pool.release(conn)


async def resolve(pool: Any, sale_id: uuid.UUID, users: list[str]) -> dict[str, Purchase]:
    """The committed purchases of ``users``, read once no commit of theirs is in flight.

    Takes the same advisory locks a commit holds until it ends, so a transaction still
    running (a commit whose reply was lost) is waited for, never guessed about.
    """
    keys = sorted({advisory_key(sale_id, u) for u in users})
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, keys)
        return await find_purchases(conn, sale_id, users)


async def _existing(conn: Any, sale_id: uuid.UUID, purchases: list[Purchase],
                    settled: set[uuid.UUID]) -> dict[str, Purchase]:
    others = [p.user_id for p in purchases if p.id not in settled]
    if not others:
        return {}
    return await find_purchases(conn, sale_id, others)


async def _write_one_by_one(conn: Any, sale_id: uuid.UUID, purchases: list[Purchase],
                            keys: list[int]) -> BatchResult:
    committed: set[uuid.UUID] = set()
    no_stock: set[uuid.UUID] = set()
    over_limit: dict[uuid.UUID, int] = {}
    expires: dict[uuid.UUID, datetime] = {}
    async with conn.transaction():
        await _lock(conn, keys)
        for p in purchases:
            try:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        f"INSERT INTO purchases {INSERT_COLUMNS} "
                        f"VALUES ($3, $1, $2, $4, {HOLD_END}, $5) "
                        "ON CONFLICT (sale_id, user_id) DO NOTHING RETURNING id, expires_at",
                        sale_id, p.user_id, p.id, p.purchased_at, p.quantity,
                    )
                if row is not None:
                    committed.add(p.id)
                    expires.update(_expiries([row]))
            except asyncpg.CheckViolationError as exc:
                if exc.constraint_name != STOCK_CONSTRAINT:
                    raise
                no_stock.add(p.id)
            except asyncpg.PostgresError as exc:
                limit = _limit_named(exc)
                if limit is None:
                    raise
                over_limit[p.id] = limit
        existing = await _existing(conn, sale_id, purchases,
                                   committed | no_stock | set(over_limit))
    return BatchResult(committed, existing, no_stock, expires=expires, over_limit=over_limit)


def _limit_named(exc: asyncpg.PostgresError) -> int | None:
    """The per-user limit an over-limit refusal names, None for any other error."""
    if getattr(exc, "sqlstate", None) != OVER_LIMIT:
        return None
    return int(str(exc).rsplit(" ", 1)[-1])


def _expiries(rows: list[Any]) -> dict[uuid.UUID, datetime]:
    return {r["id"]: r["expires_at"] for r in rows if r["expires_at"] is not None}
