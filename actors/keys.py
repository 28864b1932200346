"""The Redis layout of Flash Flow: every key, channel and stored value format, in one place.

The actors, the load tests and the tests all build keys and read values through this
module; nobody formats a key by hand elsewhere. The calls of the gate's scripts, with a
sale's keys in the order the scripts take them, are :mod:`actors.gate_store`'s.

Per sale (every key of one sale carries the sale id as a hash tag, so a script that touches
them stays within one Redis Cluster slot):

- ``stock``: the units left, an integer.
- ``buyers``: a hash, user id -> holder value, for every user holding units, whether the
  purchase is committed or still in flight; the value names how many (:func:`holder_value`).
- ``pending``: a sorted set of the holders whose commit is not confirmed yet, scored by the
  Redis time (ms) of their reservation. What is in doubt lives here, apart from what is
  settled, so the reconciler touches only it.

The rate limiter's buckets share one tag of their own (:func:`rate_keys`).

The law that every script keeps, and the reconciler repairs: the committed buyers are among
the holders, and ``stock = total - the units of the holders``, never below 0.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

#: The prefix of every key and of the stock channel, unless a deployment names its own so
#: that several can share one Redis.
KEY_PREFIX = "flashflow:"


@dataclass(frozen=True, slots=True)
class SaleKeys:
    """The Redis keys that hold the gate of one sale."""

    stock: str
    buyers: str
    pending: str

    def staging(self, token: str) -> str:
        """A hash a gate rebuild fills in chunks before it is renamed into ``buyers``."""
        return f"{self.buyers}:build:{token}"


def sale_keys(key_prefix: str, sale_id: uuid.UUID | str) -> SaleKeys:
    """The keys of the gate of ``sale_id`` under ``key_prefix``."""
    base = f"{key_prefix}sale:{{{sale_id}}}"
    return SaleKeys(f"{base}:stock", f"{base}:buyers", f"{base}:pending")


def rate_keys(key_prefix: str, user_id: str, address: str) -> tuple[str, str]:
    """The rate limiter's (user, address) token buckets.

    Every bucket shares one hash tag, so a batch of checks, each spending a user's and an
    address's token together or not at all, stays one script call in one Redis Cluster slot
    (the limiter's buckets live on one shard; the sales' gates spread over the others).
    """
    base = f"{key_prefix}{{rl}}"
    return f"{base}:user:{user_id}", f"{base}:addr:{address}"


def stock_channel(key_prefix: str) -> str:
    """The pub/sub channel on which every stock change is published as "<sale id> <stock>".

    A change to a sale's definition (its stock or window, by an operator) is announced on the
    same channel as :func:`change_notice`, so every process that watches stock hears of it.
    """
    return f"{key_prefix}stock"


#: What a change notice carries where a stock message carries the stock.
CHANGED = "changed"


def change_notice(sale_id: uuid.UUID | str) -> str:
    """The message announcing that a sale's definition changed: "<sale id> changed"."""
    return f"{sale_id} {CHANGED}"


def holder_value(purchase_id: uuid.UUID | str, reserved_ms: int = 0, quantity: int = 1) -> str:
    """A ``buyers`` value: ``"<purchase id>:<Redis ms of the reservation>"``, and
    ``":<quantity>"`` after it when the purchase takes more than one unit.

    ``reserved_ms`` is 0 for a value rebuilt from the ledger. The gate's scripts read the
    quantity the same way (``_redis_scripts.QUANTITY``).
    """
    if quantity == 1:
        return f"{purchase_id}:{reserved_ms}"
    return f"{purchase_id}:{reserved_ms}:{quantity}"


def parse_holder(value: str | bytes) -> tuple[str, int]:
    """Split a ``buyers`` value into (purchase id, reservation ms); a bare id reads as ms 0."""
    text = value.decode() if isinstance(value, bytes) else value
    purchase_id, _, rest = text.partition(":")
    stamp, _, _ = rest.partition(":")
    return purchase_id, int(stamp or 0)


def holder_quantity(value: str | bytes) -> int:
    """The units a ``buyers`` value holds: 1 unless it names more."""
    text = value.decode() if isinstance(value, bytes) else value
    parts = text.split(":")
    return int(parts[2]) if len(parts) > 2 else 1


__all__ = [
    "CHANGED",
    "KEY_PREFIX",
    "SaleKeys",
    "change_notice",
    "holder_quantity",
    "holder_value",
    "parse_holder",
    "rate_keys",
    "sale_keys",
    "stock_channel",
]
