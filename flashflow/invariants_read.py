"""Reading what the one invariant check judges from the stores: a sale's ledger from
PostgreSQL (:func:`ledger_snapshot`, with holds its rows, ended holds and waitlist too) and
its gate from Redis (:func:`read_gate`, :func:`gate_snapshot`), or both at rest
(:func:`store_snapshots`). :mod:`flashflow.invariants` re-exports them.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from actors.keys import holder_quantity, parse_holder, sale_keys
from actors.redis_url import sync_client

from .database import run_on_connection
from .invariants_data import (
    EndingRow,
    GateSnapshot,
    HoldsLedger,
    LedgerSnapshot,
    PurchaseRow,
    WaitlistRow,
)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


async def read_holds(conn: Any, sale_id: uuid.UUID, sale: Any) -> HoldsLedger:
    """The rows, ended holds and waitlist of a sale with holds, inside the caller's
    snapshot; ``sale`` is its row with ``hold_seconds``, ``end_time`` and ``now``."""
    rows = await conn.fetch(
        "SELECT id::text AS id, user_id, expires_at, confirmed_at, quantity FROM purchases "
        "WHERE sale_id = $1 ORDER BY id", sale_id)
    endings = await conn.fetch(
        "SELECT purchase_id::text AS id, user_id, outcome, expires_at, ended_at, "
        "offered_to::text AS offered_to, offered_user, gate_done FROM hold_endings "
        "WHERE sale_id = $1 ORDER BY purchase_id", sale_id)
    places = await conn.fetch(
        "SELECT user_id, place, joined_at, offered_at, purchase_id::text AS purchase_id "
        "FROM waitlist WHERE sale_id = $1 ORDER BY place", sale_id)
    return HoldsLedger(
        sale["hold_seconds"], sale["end_time"].timestamp(), sale["now"].timestamp(),
        tuple(PurchaseRow(r["id"], r["user_id"], _epoch(r["expires_at"]),
                          _epoch(r["confirmed_at"]), r["quantity"]) for r in rows),
        tuple(EndingRow(r["id"], r["user_id"], r["outcome"], r["expires_at"].timestamp(),
                        r["ended_at"].timestamp(), r["offered_to"], r["offered_user"],
                        r["gate_done"]) for r in endings),
        tuple(WaitlistRow(r["user_id"], r["place"], r["joined_at"].timestamp(),
                          _epoch(r["offered_at"]), r["purchase_id"]) for r in places))


async def _ledger(conn: Any, sale_id: uuid.UUID) -> LedgerSnapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sale = await conn.fetchrow(
            "SELECT total_stock, sold, hold_seconds, end_time, per_user_limit, "
            "clock_timestamp() AS now FROM flash_sales WHERE id = $1", sale_id)
        if sale is None:
            raise LookupError(f"no sale {sale_id} in PostgreSQL")
        rows = await conn.fetch(
            "SELECT user_id, id::text AS id, quantity FROM purchases WHERE sale_id = $1",
            sale_id)
        holds = None if sale["hold_seconds"] is None else await read_holds(conn, sale_id, sale)
    return LedgerSnapshot(sale["total_stock"], sale["sold"],
                          {r["user_id"]: r["id"] for r in rows}, holds,
                          {r["user_id"]: r["quantity"] for r in rows if r["quantity"] != 1},
                          sale["per_user_limit"])


def ledger_snapshot(database_url: str, sale_id: uuid.UUID) -> LedgerSnapshot:
    """The sale row and its purchases with their quantities, as committed (with holds: its
    rows, ended holds and waitlist too), read in one snapshot."""
    return run_on_connection(database_url, _ledger, sale_id)


def read_gate(client: Any, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """The remaining stock and the buyers (user -> purchase id, and the units of each that
    holds more than one) the gate keeps in Redis, read through a synchronous client of any
    shape (single, Sentinel, cluster) opened with ``decode_responses=True``; the client stays
    open."""
    keys = sale_keys(key_prefix, sale_id)
    stock = client.get(keys.stock)
    held = client.hgetall(keys.buyers)
    return GateSnapshot(None if stock is None else int(stock),
                        {user: parse_holder(value)[0] for user, value in held.items()},
                        holder_units(held))


def holder_units(held: dict[str, str]) -> dict[str, int]:
    """The units of each holder of more than one, from the gate's ``buyers`` hash."""
    return {user: n for user, value in held.items() if (n := holder_quantity(value)) != 1}


def gate_snapshot(redis_url: str, key_prefix: str, sale_id: uuid.UUID) -> GateSnapshot:
    """:func:`read_gate` on a client of its own (generous timeout: a big sale's buyers hash
    holds millions of entries)."""
    client = sync_client(redis_url, decode_responses=True, socket_timeout=120)
    try:
        return read_gate(client, key_prefix, sale_id)
    finally:
        client.close()


def _settled(first: LedgerSnapshot, then: LedgerSnapshot) -> bool:
    """Nothing moved between two reads of a sale with holds, and every ended hold had
    reached the gate by the first."""
    if first.holds is None or then.holds is None:
        return first == then
    return ((first.total_stock, first.sold, first.holds.state())
            == (then.total_stock, then.sold, then.holds.state())
            and all(e.gate_done for e in first.holds.endings))


def store_snapshots(database_url: str, redis_url: str, key_prefix: str, sale_id: uuid.UUID,
                    *, settle_s: float = 10.0) -> tuple[LedgerSnapshot, GateSnapshot]:
    """The ledger and the gate of a sale at rest, for :func:`flashflow.invariants.verify`.

    Without holds: the ledger, then the gate. With holds, holds go on lapsing after the
    clients stop, and the gate hears of each just after PostgreSQL: this reads the ledger,
    the gate, and the ledger again until nothing moved in between and every ending had
    reached the gate before the gate was read (so the gate read shows the ledger's state),
    for at most ``settle_s``; past it, the last reads are judged as they are.
    """
    ledger = ledger_snapshot(database_url, sale_id)
    gate = gate_snapshot(redis_url, key_prefix, sale_id)
    deadline = time.monotonic() + settle_s
    while ledger.holds is not None:
        again = ledger_snapshot(database_url, sale_id)
        if _settled(ledger, again) or time.monotonic() >= deadline:
            return again, gate
        time.sleep(0.05)
        ledger, gate = again, gate_snapshot(redis_url, key_prefix, sale_id)
    return ledger, gate


__all__ = ["gate_snapshot", "holder_units", "ledger_snapshot", "read_gate", "read_holds",
           "store_snapshots"]
