"""The per-user serializer: one purchase in flight per user, and the pipeline it drives.

Requests for the same (sale, user) within a process are serialized: one that arrives
while that user's purchase is in flight waits for the same outcome, with no second trip
to Redis. Users known to have bought are answered from memory. Each purchase runs in the
serializer's own nursery, so a client that hangs up cannot strand a reservation halfway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from ._nursery import open_actor_nursery
from ._slot import Slot
from .errors import AlreadyPurchased, BackendUnavailable, FlashFlowError, Overloaded, SoldOut
from .ledger import CommitResult, Ledger
from .model import Purchase, Sale
from .stock_gate import StockGate

log = logging.getLogger(__name__)

Key = tuple[uuid.UUID, str]


@dataclass(frozen=True, slots=True)
class SerializerStatistics:
    """A snapshot of the serializer, for /metrics and tests."""

    in_flight: int
    coalesced: int
    known_buyers: int
    answered_from_memory: int
    rolled_back: int


class UserSerializer:
    """Handle to the running serializer; see :func:`open_user_serializer`."""

    def __init__(self, nursery: trio.Nursery, gate: StockGate, ledger: Ledger, max_in_flight: int,
                 clock: Callable[[], datetime]) -> None:
        self._nursery = nursery
        self._gate = gate
        self._ledger = ledger
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._in_flight: dict[Key, Slot[Purchase]] = {}
        # Users known to hold a purchase; the purchase itself when this process made it.
        self._buyers: dict[Key, Purchase | None] = {}
        self._coalesced = 0
        self._from_memory = 0
        self._rolled_back = 0

    async def purchase(self, sale: Sale, user_id: str) -> Purchase:
        """Buy one unit of ``sale`` for ``user_id`` and return the committed purchase.

        Raises:
            AlreadyPurchased, SoldOut, Overloaded, BackendUnavailable.
        """
        key = (sale.id, user_id)
        self.answer_from_memory(sale, user_id)
        slot = self._in_flight.get(key)
        if slot is not None:
            self._coalesced += 1
            return await slot.wait()
        if len(self._in_flight) >= self._max_in_flight:
            raise Overloaded("user_serializer")
        slot = Slot()
        self._in_flight[key] = slot
        self._nursery.start_soon(self._settle, sale, user_id, slot)
        return await slot.wait()

    def answer_from_memory(self, sale: Sale, user_id: str) -> None:
        """Raise AlreadyPurchased or SoldOut when the answer is known without Redis.

        Does nothing when a trip to the gate is needed.
        """
        if (sale.id, user_id) in self._buyers:
            self._from_memory += 1
            raise AlreadyPurchased()
        self._gate.answer_from_memory(sale, user_id)

    def known_purchase(self, sale_id: uuid.UUID, user_id: str) -> Purchase | None:
        """The user's purchase when this process made it, else None (ask the ledger)."""
        return self._buyers.get((sale_id, user_id))

    def statistics(self) -> SerializerStatistics:
        """Return a snapshot of the serializer's counters."""
        return SerializerStatistics(
            in_flight=len(self._in_flight),
            coalesced=self._coalesced,
            known_buyers=len(self._buyers),
            answered_from_memory=self._from_memory,
            rolled_back=self._rolled_back,
        )

    async def _settle(self, sale: Sale, user_id: str, slot: Slot[Purchase]) -> None:
        key = (sale.id, user_id)
        try:
            purchase = await self._reserve_and_commit(sale, user_id)
            self._buyers[key] = purchase
            slot.set(purchase)
        except FlashFlowError as exc:
            slot.fail(exc)
        except BaseException:
            slot.fail(BackendUnavailable("internal"))
            raise
        finally:
            del self._in_flight[key]

    async def _reserve_and_commit(self, sale: Sale, user_id: str) -> Purchase:
        purchase = Purchase(uuid.uuid4(), sale.id, user_id, self._clock())
        await self._gate.reserve(sale, user_id, purchase.id)
        try:
            outcome = await self._ledger.commit(purchase)
        except FlashFlowError:
            await self._roll_back(purchase, restock=True)
            raise
        if outcome.result is CommitResult.COMMITTED:
            return purchase
        if outcome.result is CommitResult.DUPLICATE:
            # The ledger itself holds this user's purchase: safe to remember. (A gate that
            # merely sees another process's reservation is not: it may still roll back.)
            self._buyers[(sale.id, user_id)] = outcome.purchase
            await self._roll_back(purchase, restock=True)
            raise AlreadyPurchased()
        await self._roll_back(purchase, restock=False)
        raise SoldOut()

    async def _roll_back(self, purchase: Purchase, *, restock: bool) -> None:
        """Undo a reservation the ledger did not take; shielded so it is never half done."""
        self._rolled_back += 1
        with trio.CancelScope(shield=True):
            try:
                await self._gate.release(purchase.sale_id, purchase.user_id, purchase.id,
                                         restock=restock)
            except BackendUnavailable as exc:
                log.error("could not return a reservation to the gate: %r", exc.__cause__,
                          extra={"sale_id": str(purchase.sale_id), "purchase_id": str(purchase.id)})


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@asynccontextmanager
async def open_user_serializer(gate: StockGate, ledger: Ledger, *, max_in_flight: int = 8192,
                               clock: Callable[[], datetime] = utc_now,
                               drain_timeout_s: float = 10.0) -> AsyncIterator[UserSerializer]:
    """Open the serializer; on exit, purchases in flight get ``drain_timeout_s`` to settle."""
    async with open_actor_nursery() as nursery:
        serializer = UserSerializer(nursery, gate, ledger, max_in_flight, clock)
        try:
            yield serializer
        finally:
            nursery.cancel_scope.deadline = trio.current_time() + drain_timeout_s
