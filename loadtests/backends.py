"""Read a sale's state straight from PostgreSQL and Redis, and schedule a fresh sale.

The load test uses these to verify a run independently of the server it loaded.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis

from actors.keys import parse_holder, sale_keys
from flashflow.database import run_on_connection

from .verify import GateSnapshot, LedgerSnapshot

T = TypeVar("T")


run_pg = run_on_connection


async def _ledger(conn: Any, sale_id: uuid.UUID) -> LedgerSnapshot:
    sale = await conn.fetchrow("SELECT total_stock, sold FROM flash_sales WHERE id = $1", sale_id)
    if sale is None:
        raise LookupError(f"no sale {sale_id} in PostgreSQL")
    rows = await conn.fetch("SELECT user_id, id::text AS id FROM purchases WHERE sale_id = $1",
                            sale_id)
    return LedgerSnapshot(sale["total_stock"], sale["sold"], {r["user_id"]: r["id"] for r in rows})


def ledger_snapshot(database_url: str, sale_id: uuid.UUID) -> LedgerSnapshot:
    """The sale row and its purchases, as committed."""
    return run_pg(database_url, _ledger, sale_id)


def gate_keys(key_prefix: str, sale_id: uuid.UUID) -> tuple[str, str]:
    """The gate's Redis keys (stock, buyers) for a sale."""
    keys = sale_keys(key_prefix, sale_id)
    return keys.stock, keys.buyers


def read_gate(client: Any, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """:func:`gate_snapshot` through a synchronous client of any shape (single, Sentinel,
    cluster) opened with ``decode_responses=True``; the client stays open."""
    stock_key, buyers_key = gate_keys(key_prefix, sale_id)
    stock = client.get(stock_key)
    buyers = {user: parse_holder(value)[0] for user, value in client.hgetall(buyers_key).items()}
    return GateSnapshot(None if stock is None else int(stock), buyers)


def gate_snapshot(redis_url: str, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """The remaining stock and the buyers (user -> purchase id) the gate keeps in Redis."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return read_gate(client, key_prefix, sale_id)
    finally:
        client.close()


async def _insert_sale(conn: Any, product: str, stock: int, lasts_s: float) -> uuid.UUID:
    start = datetime.now(UTC) - timedelta(seconds=1)
    end = start + timedelta(seconds=lasts_s)
    # The server's current sale is the active one that ends first: ours must end first.
    sooner = await conn.fetchval(
        "SELECT id FROM flash_sales WHERE start_time <= $1 AND end_time > $1 "
        "AND end_time <= $2 ORDER BY end_time LIMIT 1", start, end)
    if sooner is not None:
        raise LookupError(f"active sale {sooner} ends before a new one would, so it stays "
                          "current: load it without --stock, or wait until it ends")
    return await conn.fetchval(
        "INSERT INTO flash_sales (product_name, total_stock, start_time, end_time) "
        "VALUES ($1, $2, $3, $4) RETURNING id", product, stock, start, end)


def create_sale(database_url: str, stock: int, lasts_s: float,
                product: str = "Load Test Sneakers") -> uuid.UUID:
    """Schedule a sale running from now for ``lasts_s`` and return its id.

    The server makes it current at its next catalog refresh, the current sale being the
    active one that ends first.

    Raises:
        LookupError: an active sale ends sooner, so the new one would not be current.
    """
    return run_pg(database_url, _insert_sale, product, stock, lasts_s)
