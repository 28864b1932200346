"""What travels between the stock gate, its waiting queues and its callers.

A reserve request is answered once, through its slot, by whichever part of the gate decides
it: the batching actor when Redis has stock (or the user already holds a unit), the sale's
waiting queue when a unit comes back or the sale is sold out for good. Both import these
types from here, so neither needs the other's module.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from ._slot import Slot
from .model import Sale


class Seat(enum.Enum):
    """What the gate did for one request."""

    RESERVED = "reserved"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The gate's answer: a unit reserved (with the stock left), or the user's standing hold."""

    seat: Seat
    stock: int = 0
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class Reserve:
    """Ask the gate to reserve ``quantity`` units of ``sale`` for ``user_id``, all or none,
    waiting until ``deadline``."""

    sale: Sale
    user_id: str
    purchase_id: uuid.UUID
    deadline: float
    reply: Slot[GateAnswer] = field(compare=False)
    quantity: int = 1


__all__ = ["GateAnswer", "Reserve", "Seat"]
