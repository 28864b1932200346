"""Read a sale's state straight from PostgreSQL and Redis.

The load test uses these to verify a run independently of the server it loaded; the reads
themselves are :mod:`flashflow.invariants`'s, and a fresh sale is scheduled by the load
harness (:func:`flashflow.capacity.harness.create_sale`).
"""

from __future__ import annotations

import uuid

from actors.keys import sale_keys
from flashflow.invariants import gate_snapshot, ledger_snapshot


def gate_keys(key_prefix: str, sale_id: uuid.UUID) -> tuple[str, str]:
    """The gate's Redis keys (stock, buyers) for a sale."""
    keys = sale_keys(key_prefix, sale_id)
    return keys.stock, keys.buyers


__all__ = ["gate_keys", "gate_snapshot", "ledger_snapshot"]
