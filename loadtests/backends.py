"""Read a sale's state straight from PostgreSQL and Redis, and schedule a fresh sale.

The load test uses these to verify a run independently of the server it loaded.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis

from actors.keys import sale_keys
from flashflow.database import run_on_connection
from flashflow.invariants import GateSnapshot, ledger_snapshot, read_gate

T = TypeVar("T")


def gate_keys(key_prefix: str, sale_id: uuid.UUID) -> tuple[str, str]:
    """The gate's Redis keys (stock, buyers) for a sale."""
    keys = sale_keys(key_prefix, sale_id)
    return keys.stock, keys.buyers


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
    return run_on_connection(database_url, _insert_sale, product, stock, lasts_s)


__all__ = ["create_sale", "gate_keys", "gate_snapshot", "ledger_snapshot", "read_gate"]
