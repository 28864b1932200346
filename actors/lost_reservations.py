"""Reservations whose reply was lost, undone in Redis as soon as it answers again.

A reservation whose reply never came back (Redis down or too slow, or the wait ran out)
may have been made: it is released, so the user's retry can buy. One task releases all of
them, one at a time, so a Redis that is down meets one retry at a time, not one per
purchase; what is still unreleased after ``retry_s`` is left to the reconciler.
"""

from __future__ import annotations

import uuid

import trio

from .backoff import Backoff
from .errors import BackendUnavailable
from .model import Purchase
from .stock_gate import StockGate

#: Waits between attempts to undo a reservation whose reply was lost: a steady 0.25 s.
LOST_RELEASE = Backoff(initial_s=0.25, max_s=0.25)


class LostReservations:
    """The reservations to undo; :meth:`run` undoes them."""

    def __init__(self, gate: StockGate, retry_s: float) -> None:
        self._gate = gate
        self._retry_s = retry_s
        # purchase id -> (a reservation whose reply was lost, when to leave it to the reconciler)
        self._lost: dict[uuid.UUID, tuple[Purchase, float]] = {}
        self._wake = trio.Event()

    def add(self, purchase: Purchase) -> None:
        """Undo ``purchase``'s reservation as soon as Redis answers again."""
        self._lost[purchase.id] = (purchase, trio.current_time() + self._retry_s)
        self._wake.set()

    async def run(self) -> None:
        """Undo the reservations added, one at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._lost:
                purchase_id, (purchase, give_up_at) = next(iter(self._lost.items()))
                async for attempt in LOST_RELEASE.forever(BackendUnavailable):
                    with attempt:
                        try:
                            await self._gate.release(purchase.sale_id, purchase.user_id,
                                                     purchase.id, restock=True)
                        except BackendUnavailable:
                            if trio.current_time() >= give_up_at:
                                break  # left to the reconciler
                            raise
                del self._lost[purchase_id]


__all__ = ["LOST_RELEASE", "LostReservations"]
