"""The one error hierarchy of Flash Flow.

Actors raise these; the HTTP front maps each class to a status and a wire code in a
single table (``flashflow.http.errors``). Nothing above an actor ever sees a redis or
asyncpg exception: drivers' errors are translated at the actor boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Place, Purchase


class FlashFlowError(Exception):
    """Root of every error Flash Flow raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FlashFlowError):
    """Raised when a request's input fails validation; nothing is written."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @staticmethod
    def over_limit(limit: int) -> InvalidInput:
        """The refusal of a quantity outside 1 to the sale's per-user ``limit``."""
        return InvalidInput(f"quantity must be an integer from 1 to {limit}, the sale's "
                            "per-user limit.", field="quantity")


class UnsupportedMediaType(FlashFlowError):
    """Raised when a request body is not ``application/json``; nothing is read or written."""

    def __init__(self, message: str = "The request body must be application/json.") -> None:
        super().__init__(message)


class Unauthorized(FlashFlowError):
    """Raised when a request needs a valid bearer token and carries none (a buyer's token
    when authentication is on, the operators' token on the admin API).

    ``challenge`` is the ``WWW-Authenticate`` value to answer with (RFC 6750).
    """

    def __init__(self, message: str = "A valid bearer token is required.", *,
                 challenge: str = 'Bearer error="invalid_token"') -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(FlashFlowError):
    """Raised when an authenticated buyer names another user than the token's subject."""

    def __init__(self, message: str = "The userId does not match the signed-in user.") -> None:
        super().__init__(message)


class SaleNotFound(FlashFlowError):
    """Raised when there is no current sale (none scheduled, or an unknown id)."""

    def __init__(self, message: str = "There is no flash sale.") -> None:
        super().__init__(message)


class SaleNotActive(FlashFlowError):
    """Raised when a purchase is attempted before the start or after the end of a sale."""

    def __init__(self, *, started: bool) -> None:
        self.started = started
        super().__init__(
            "The flash sale has ended." if started else "The flash sale has not started yet."
        )


class SaleStarted(FlashFlowError):
    """Raised when an operator tries to change a sale whose window has opened.

    Whether it has opened is judged by the database clock.
    """

    def __init__(
        self, message: str = "The flash sale has started; it can no longer be changed."
    ) -> None:
        super().__init__(message)


class StockBelowSold(FlashFlowError):
    """Raised when an operator sets a sale's stock below the units already committed."""

    def __init__(self, sold: int) -> None:
        self.sold = sold
        super().__init__(f"The stock cannot be set below the {sold} units already sold.")


class SoldOut(FlashFlowError):
    """Raised when no stock is left for the sale."""

    def __init__(self, message: str = "Sorry, the item is sold out.") -> None:
        super().__init__(message)


class InsufficientStock(FlashFlowError):
    """Raised when fewer units than asked can ever be sold to the buyer (final): the free
    units and those whose commits or holds are still in doubt are fewer than the quantity.

    ``remaining`` is that count, the most a purchase could still take.
    """

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        unit = "unit is" if remaining == 1 else "units are"
        super().__init__(f"Sorry, only {remaining} {unit} left.")


class AlreadyPurchased(FlashFlowError):
    """Raised when the user already holds a purchase in this sale."""

    def __init__(self, message: str = "You have already purchased this item.") -> None:
        super().__init__(message)


class PurchaseNotFound(FlashFlowError):
    """Raised when a confirm or cancel names a purchase the sale does not hold."""

    def __init__(self, message: str = "There is no such purchase in this sale.") -> None:
        super().__init__(message)


class HoldEnded(FlashFlowError):
    """Raised when a confirm or cancel comes too late: the hold ended otherwise.

    Build it with :meth:`of`, which picks the subclass of how it ended (the HTTP front maps
    each to its own code).
    """

    standing = "ended"

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @staticmethod
    def of(standing: str) -> HoldEnded:
        """The error for a hold that ended ``standing`` (lapsed, cancelled or confirmed)."""
        kind = {"lapsed": HoldExpired, "cancelled": HoldCancelled,
                "confirmed": HoldConfirmed}[str(standing)]
        return kind()


class HoldExpired(HoldEnded):
    """The hold reached its end unpaid: its unit went back (final)."""

    standing = "lapsed"

    def __init__(self) -> None:
        super().__init__("The hold expired before payment; its unit went back on sale.")


class HoldCancelled(HoldEnded):
    """The hold was cancelled: its unit went back (final)."""

    standing = "cancelled"

    def __init__(self) -> None:
        super().__init__("The hold was cancelled; its unit went back on sale.")


class HoldConfirmed(HoldEnded):
    """A cancel came for a hold already paid for: the purchase stands."""

    standing = "confirmed"

    def __init__(self) -> None:
        super().__init__("The purchase is confirmed; it can no longer be cancelled.")


class NotAdmitted(FlashFlowError):
    """Raised when a purchase in a sale with a waiting room carries no valid admission token
    for the buyer: they have not been admitted yet, their admission window has passed, or they
    have no ticket. ``position`` is their place in the line (None: no ticket, or not placed
    yet), ``ahead`` the tickets still to be admitted before theirs."""

    def __init__(self, position: int | None, ahead: int | None,
                 message: str = "You have not been admitted from the waiting room yet.") -> None:
        super().__init__(message)
        self.position = position
        self.ahead = ahead


class TicketNotFound(FlashFlowError):
    """Raised when a ticket id names no ticket of the sale, or the sale has no waiting room."""

    def __init__(self, message: str = "There is no such ticket in this sale's line.") -> None:
        super().__init__(message)


class LineNotOpen(FlashFlowError):
    """Raised when a buyer joins a sale's line before it opens."""

    def __init__(self, message: str = "The waiting room is not open yet.") -> None:
        super().__init__(message)


class StandingHold(FlashFlowError):
    """Not an error: the user pressed again while holding a unit (answered 200 with it)."""

    def __init__(self, purchase: Purchase) -> None:
        super().__init__("You hold a unit of this sale.")
        self.purchase = purchase


class Waitlisted(FlashFlowError):
    """Not an error: no unit is free but some may come back; the user has a place (202)."""

    def __init__(self, place: Place) -> None:
        super().__init__("You are in the waitlist.")
        self.place = place


class WaitlistOpen(FlashFlowError):
    """Inside the purchase path: every unit is held or confirmed, some not yet paid, so the
    press asks the ledger for a place in the waitlist."""

    def __init__(self) -> None:
        super().__init__("Every unit is held; the waitlist is open.")


class Overloaded(FlashFlowError):
    """Raised when an actor's bounded inbox is full: the caller should retry shortly."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        super().__init__("The server is busy; please retry shortly.")


class BackendUnavailable(FlashFlowError):
    """Raised when Redis or PostgreSQL cannot be reached or answers too slowly."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__("The service is temporarily unavailable; please retry shortly.")


class LedgerUnreachable(BackendUnavailable):
    """Raised when a commit never reached PostgreSQL (no connection could be had, or it was
    withdrawn unsent when its purchase wait ran out while it queued).

    Nothing of it can have committed, so its reservation is undone at once, with no need
    to ask the ledger what became of it.
    """

    def __init__(self) -> None:
        super().__init__("postgres")


class Undecided(FlashFlowError):
    """Raised when the answer is still in doubt after the purchase's bounded wait.

    The gate reads 0 but some units are held by purchases not yet committed, or the user
    holds a reservation that has not committed: a 409 could turn out false, so the caller
    is asked to retry instead.
    """

    def __init__(self) -> None:
        super().__init__("Your purchase could not be decided yet; please retry shortly.")


class ShuttingDown(FlashFlowError):
    """Raised to end long-lived streams (the live stock feed) when the server is stopping."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down; please reconnect shortly.")


class RateLimited(FlashFlowError):
    """Raised when a user id or a client address spends its tokens faster than allowed."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"Too many requests; please retry in {retry_after_s} s.")


__all__ = [
    "AlreadyPurchased",
    "BackendUnavailable",
    "FlashFlowError",
    "Forbidden",
    "HoldCancelled",
    "HoldConfirmed",
    "HoldEnded",
    "HoldExpired",
    "InsufficientStock",
    "InvalidInput",
    "LedgerUnreachable",
    "LineNotOpen",
    "NotAdmitted",
    "Overloaded",
    "PurchaseNotFound",
    "RateLimited",
    "SaleNotActive",
    "SaleNotFound",
    "SaleStarted",
    "ShuttingDown",
    "SoldOut",
    "StandingHold",
    "StockBelowSold",
    "TicketNotFound",
    "Unauthorized",
    "Undecided",
    "UnsupportedMediaType",
    "WaitlistOpen",
    "Waitlisted",
]
