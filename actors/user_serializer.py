"""The per-user serializer: the one owner of the purchase path and of the status read.

A purchase is decided here: the sale and its window, answers already final in memory, the
rate limit, then one purchase in flight per (sale, user). Presses of a user that arrive
while their purchase is in flight wait for it; the first press is the one answered 201, the
others ``ALREADY_PURCHASED`` once it commits. Every 409 is final: ``ALREADY_PURCHASED`` only
once the ledger holds the user's purchase, ``SOLD_OUT`` only once it holds every unit. While
the answer is in doubt the purchase waits, bounded by ``wait_s``, then answers ``Undecided``
(503). Outcomes whose reply was lost are learnt by asking the ledger or undone in Redis,
never guessed. Each purchase runs in the serializer's own nursery, so a client that hangs up
cannot strand a reservation halfway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime

import trio

from ._nursery import open_actor_nursery
from ._slot import Slot
from .backoff import Backoff
from .buyer_memory import BuyerMemory
from .catalog import Catalog
from .errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    InsufficientStock,
    InvalidInput,
    LedgerUnreachable,
    Overloaded,
    SaleNotActive,
    SaleNotFound,
    SoldOut,
    StandingHold,
    Undecided,
    WaitlistOpen,
)
from .holds import Holds
from .ledger import CommitOutcome, CommitResult, Ledger
from .lost_reservations import LostReservations
from .model import BuyerStatus, Purchase, Sale, SaleStatus, Standing, utc_now
from .rate_limiter import RateLimiter
from .stock_gate import Seat, StockGate

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
    lost_replies: int
    remembered_sales: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SerializerConfig:
    """The serializer's knobs; the application builds this from its settings, which hold the
    defaults of those it sets. ``sweep_s`` is the serializer's own."""

    max_in_flight: int
    wait_s: float
    poll_s: float
    release_retry_s: float
    drain_timeout_s: float
    sweep_s: float = 5.0


class UserSerializer:
    """Handle to the running serializer; see :func:`open_user_serializer`."""

    def __init__(self, nursery: trio.Nursery, background: trio.Nursery, gate: StockGate,
                 ledger: Ledger, catalog: Catalog | None, limiter: RateLimiter | None,
                 config: SerializerConfig, clock: Callable[[], datetime],
                 also_forget: tuple[Callable[[list[uuid.UUID]], None], ...] = (),
                 holds: Holds | None = None) -> None:
        self._nursery = nursery
        self._holds = holds
        self._also_forget = also_forget
        self._background = background
        self._gate = gate
        self._ledger = ledger
        self._catalog = catalog
        self._limiter = limiter
        self._config = config
        #: Waits between questions about a lost commit reply: a steady ``poll_s``.
        self._ask_again = Backoff(initial_s=config.poll_s, max_s=config.poll_s)
        self._clock = clock
        self._in_flight: dict[Key, Slot[Purchase]] = {}
        self._memory = BuyerMemory()
        self._coalesced = 0
        self._rolled_back = 0
        self._lost_replies = 0
        self._lost = LostReservations(gate, config.release_retry_s)

    # -- the routes' calls ------------------------------------------------------------

    def sale(self, sale_id: uuid.UUID | None = None) -> Sale:
        """The sale ``sale_id``, or the current one.

        Raises:
            SaleNotFound: no such sale, or none scheduled.
        """
        if self._catalog is None:
            raise SaleNotFound()
        found = (self._catalog.current(self._clock()) if sale_id is None
                 else self._catalog.get(sale_id))
        if found is None:
            raise SaleNotFound() if sale_id is None else SaleNotFound(
                f"There is no flash sale {sale_id}.")
        return found

    async def buy(self, user_id: str, address: str, sale_id: uuid.UUID | None = None,
                  quantity: int = 1) -> tuple[Purchase, Sale]:
        """Buy ``quantity`` units of a sale (the current one by default) for ``user_id``.

        Raises:
            InvalidInput: ``quantity`` is not within 1 and the sale's per-user limit.
            SaleNotFound, SaleNotActive, AlreadyPurchased, SoldOut, InsufficientStock,
            RateLimited, Overloaded, Undecided, BackendUnavailable.
        """
        # The purchase wait counts from here: a stalled limiter spends it too.
        deadline = trio.current_time() + self._config.wait_s
        sale = self.sale(sale_id)
        check_quantity(sale, quantity)
        status = sale.status(self._clock())
        if status is not SaleStatus.ACTIVE:
            raise SaleNotActive(started=status is SaleStatus.ENDED)
        # Final answers known in memory cost no tokens: they never reach Redis or
        # PostgreSQL, which is what the limits protect.
        self.answer_from_memory(sale, user_id)
        if self._limiter is not None:
            with trio.move_on_at(deadline) as waited:
                await self._limiter.check(user_id, address)
            if waited.cancelled_caught:
                raise Undecided()
        return await self.purchase_unchecked(sale, user_id, deadline, quantity), sale

    async def status(self, user_id: str, sale_id: uuid.UUID | None = None, *,
                     address: str | None = None) -> tuple[Sale, Purchase | None]:
        """The user's committed purchase in a sale (the current one by default), or None.

        A purchase this process committed is answered from memory; anything else is read
        from the ledger, and spends rate-limit tokens (for ``address``) like a purchase.

        Raises:
            SaleNotFound, RateLimited, Overloaded, BackendUnavailable.
        """
        sale = self.sale(sale_id)
        known = self.known_purchase(sale.id, user_id)
        if known is not None:
            return sale, known
        if self._limiter is not None and address is not None:
            await self._limiter.check(user_id, address)
        return sale, await self._ledger.find_purchase(sale.id, user_id)

    async def standing(self, user_id: str, sale_id: uuid.UUID | None = None, *,
                       address: str | None = None) -> tuple[Sale, BuyerStatus]:
        """Where the user stands in a sale with holds: hold, purchase, place, or how it ended.

        Read from the ledger every time (a hold may lapse any moment), spending rate-limit
        tokens (for ``address``) like a purchase.

        Raises:
            SaleNotFound, RateLimited, Overloaded, BackendUnavailable.
        """
        sale = self.sale(sale_id)
        if self._holds is None or not sale.holds:
            _, found = await self.status(user_id, sale.id, address=address)
            return sale, BuyerStatus(None if found is None else Standing.CONFIRMED, found)
        if self._limiter is not None and address is not None:
            await self._limiter.check(user_id, address)
        return sale, await self._holds.status(sale.id, user_id)

    # -- the purchase -----------------------------------------------------------------

    async def purchase_unchecked(self, sale: Sale, user_id: str, deadline: float | None = None,
                                 quantity: int = 1) -> Purchase:
        """Buy ``quantity`` units of ``sale`` for ``user_id``, all or none, and return the
        committed purchase.

        Unlike :meth:`buy`, neither the sale's window nor the rate limit is checked here:
        this is the purchase itself, for a caller that checked them or means to skip them.
        The answer comes by ``deadline`` (trio time; by default the purchase wait from now).

        In a sale with holds the purchase is a hold; a user who holds one already hears
        ``StandingHold``, and one who finds every unit held gets a place (``Waitlisted``).

        Raises:
            AlreadyPurchased, SoldOut, InsufficientStock, SaleNotActive, Overloaded,
            Undecided, BackendUnavailable, StandingHold, Waitlisted, InvalidInput.
        """
        key = (sale.id, user_id)
        self.answer_from_memory(sale, user_id)
        slot = self._in_flight.get(key)
        if slot is not None:
            # A second press while the first is in flight: one 201 per user, so this one
            # hears the first one's refusal, or ALREADY_PURCHASED once it committed.
            self._coalesced += 1
            try:
                first = await slot.wait()
            except InsufficientStock as exc:
                # Too few for the first press's size is no answer for another size that fits.
                if quantity > exc.remaining:
                    raise
                return await self.purchase_unchecked(sale, user_id, deadline, quantity)
            if first.held:
                raise StandingHold(first)
            raise AlreadyPurchased()
        if len(self._in_flight) >= self._config.max_in_flight:
            raise Overloaded("user_serializer")
        slot = Slot()
        self._in_flight[key] = slot
        self._memory.serves(sale)
        if deadline is None:
            deadline = trio.current_time() + self._config.wait_s
        self._nursery.start_soon(self._run_purchase, sale, user_id, slot, deadline, quantity)
        return await slot.wait()

    def answer_from_memory(self, sale: Sale, user_id: str) -> None:
        """Raise AlreadyPurchased or SoldOut when the final answer is known without Redis.

        Does nothing when a trip to the gate is needed.
        """
        self._memory.answer(sale, user_id)
        self._gate.queues.answer_from_memory(sale, user_id)

    def known_purchase(self, sale_id: uuid.UUID, user_id: str) -> Purchase | None:
        """The user's purchase when this process knows it committed, else None (ask the ledger)."""
        return self._memory.known(sale_id, user_id)

    def statistics(self) -> SerializerStatistics:
        """Return a snapshot of the serializer's counters."""
        return SerializerStatistics(
            in_flight=len(self._in_flight),
            coalesced=self._coalesced,
            known_buyers=self._memory.buyers,
            answered_from_memory=self._memory.answered,
            rolled_back=self._rolled_back,
            lost_replies=self._lost_replies,
            remembered_sales=self._memory.sales,
        )

    async def _run_purchase(self, sale: Sale, user_id: str, slot: Slot[Purchase],
                            deadline: float, quantity: int) -> None:
        key = (sale.id, user_id)
        try:
            slot.set(await self._reserve_and_commit(sale, user_id, deadline, quantity))
        except FlashFlowError as exc:
            slot.fail(exc)
        except BaseException:
            slot.fail(BackendUnavailable("internal"))
            raise
        finally:
            del self._in_flight[key]

    async def _reserve_and_commit(self, sale: Sale, user_id: str, deadline: float,
                                  quantity: int) -> Purchase:
        while True:
            purchase = Purchase(uuid.uuid4(), sale.id, user_id, self._clock(),
                                quantity=quantity)
            try:
                answer = await self._gate.reserve(sale, user_id, purchase.id, deadline=deadline,
                                                  quantity=quantity)
            except WaitlistOpen:
                await self._take_a_place(sale, user_id, deadline, quantity)
                continue
            except (BackendUnavailable, Undecided):
                # The reservation may have been made with its reply lost (here, or by the
                # waiting queue): undo it as soon as Redis answers, so a retry can buy.
                self._lost_replies += 1
                self._lost.add(purchase)
                raise
            if answer.seat is Seat.RESERVED:
                committed = await self._commit(sale, purchase, deadline)
                if committed is not None:
                    return committed
                continue
            # The user holds a unit already: final only once the ledger has it.
            found = await self._ledger.find_purchase(sale.id, user_id, deadline)
            if found is not None:
                self._already(found)
            if trio.current_time() >= deadline:
                raise Undecided()
            await trio.sleep(self._config.poll_s)

    async def _commit(self, sale: Sale, purchase: Purchase, deadline: float) -> Purchase | None:
        """Commit a reserved purchase; None when, with holds, a unit proved free after all
        (the press tries the gate again)."""
        try:
            outcome = await self._ledger.commit(purchase, deadline)
        except (Overloaded, LedgerUnreachable):
            # Never sent: nothing can have committed, so there is nothing to ask about.
            await self._roll_back(purchase, restock=True)
            raise
        except BackendUnavailable:
            self._lost_replies += 1
            outcome = await self._inquire(purchase, deadline)
        result = outcome.result
        if result is CommitResult.COMMITTED:
            committed = outcome.purchase or purchase
            self._remember(committed)
            if committed.held and self._holds is not None:
                self._holds.made(committed)
            self._gate.settle_soon(purchase.sale_id, purchase.user_id, purchase.id)
            return committed
        if result is CommitResult.DUPLICATE:
            await self._roll_back(purchase, restock=True)
            if outcome.purchase is not None:
                self._already(outcome.purchase)
            raise AlreadyPurchased()
        if result is CommitResult.NO_STOCK:
            # The stock constraint refused it: too few units are uncommitted, for good (with
            # holds: held or confirmed, and a place in the waitlist is the answer).
            await self._roll_back(purchase, restock=False)
            if sale.holds:
                await self._take_a_place(sale, purchase.user_id, deadline, purchase.quantity)
                return None
            if purchase.quantity == 1:  # every unit is committed
                with suppress(BackendUnavailable), trio.move_on_at(deadline):
                    await self._gate.queues.learn_sold_out(sale)
                raise SoldOut()
            refusal = None
            with suppress(BackendUnavailable), trio.move_on_at(deadline):
                refusal = await self._gate.queues.learn_refusal(sale, purchase.quantity)
            if refusal is not None:
                raise refusal
            return None
        if result is CommitResult.OVER_LIMIT:
            await self._roll_back(purchase, restock=True)
            raise InvalidInput.over_limit(outcome.limit)
        await self._roll_back(purchase, restock=True)
        if result is CommitResult.ABSENT:
            raise BackendUnavailable("postgres")
        raise SaleNotActive(started=result is CommitResult.ENDED)

    async def _inquire(self, purchase: Purchase, deadline: float) -> CommitOutcome:
        """Ask the ledger what became of a commit whose reply was lost, until ``deadline``.

        Raises:
            BackendUnavailable: the ledger could not say by ``deadline``; the reservation
                stays in doubt for the reconciler, which resolves it the same way.
        """
        with trio.move_on_at(deadline):
            async for attempt in self._ask_again.forever(BackendUnavailable):
                with attempt:
                    return await self._ledger.inquire(purchase)
        raise BackendUnavailable("postgres")

    async def _take_a_place(self, sale: Sale, user_id: str, deadline: float,
                            quantity: int) -> None:
        """Fewer units than asked are free, held ones may come back: see
        :meth:`Holds.take_a_place <actors.holds.Holds.take_a_place>`; returns when the press
        should try the gate again."""
        if self._holds is None:
            raise Undecided()
        await self._holds.take_a_place(sale, user_id, deadline, self._config.poll_s, quantity)

    def _already(self, found: Purchase) -> None:
        """The user has a purchase already: their hold (200), or a final 409."""
        if found.held:
            raise StandingHold(found)
        self._remember(found)
        raise AlreadyPurchased()

    def _remember(self, purchase: Purchase) -> None:
        self._memory.remember(purchase)

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
                if restock:
                    self._lost.add(purchase)

    # -- memory -----------------------------------------------------------------------

    def forget_ended(self, now: datetime) -> list[uuid.UUID]:
        """Drop what is remembered of sales over for a while; return their ids."""
        over = self._memory.forget_ended(now, {sale_id for sale_id, _ in self._in_flight})
        self._gate.queues.forget(over)
        for forget in self._also_forget:
            forget(over)
        return over

    async def sweep(self) -> None:
        """Forget ended sales every ``sweep_s``, so memory follows the sales still running."""
        while True:
            await trio.sleep(self._config.sweep_s)
            self.forget_ended(self._clock())


def check_quantity(sale: Sale, quantity: int) -> None:
    """Refuse a quantity outside 1 to the sale's per-user limit, before anything is written.

    Raises:
        InvalidInput: naming the limit.
    """
    if not 1 <= quantity <= sale.per_user_limit:
        raise InvalidInput.over_limit(sale.per_user_limit)


@asynccontextmanager
async def open_user_serializer(gate: StockGate, ledger: Ledger, *,
                               catalog: Catalog | None = None,
                               limiter: RateLimiter | None = None,
                               config: SerializerConfig,
                               clock: Callable[[], datetime] = utc_now,
                               also_forget: tuple[Callable[[list[uuid.UUID]], None], ...] = (),
                               holds: Holds | None = None,
                               ) -> AsyncIterator[UserSerializer]:
    """Open the serializer; on exit, purchases in flight get ``drain_timeout_s`` to finish.

    Background work (undoing reservations whose reply was lost, forgetting ended sales, here
    and in each of ``also_forget``) stops at once on exit: what it leaves, the reconciler
    finishes.
    """
    async with open_actor_nursery() as nursery:
        try:
            async with open_actor_nursery() as background:
                serializer = UserSerializer(nursery, background, gate, ledger, catalog, limiter,
                                            config, clock, also_forget, holds)
                background.start_soon(serializer.sweep)
                background.start_soon(serializer._lost.run)
                try:
                    yield serializer
                finally:
                    background.cancel_scope.cancel()
        finally:
            nursery.cancel_scope.deadline = trio.current_time() + config.drain_timeout_s
