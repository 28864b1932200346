"""What one process knows for good about its buyers: the purchases it saw commit.

A buyer whose purchase this process committed (or learnt from the ledger) is answered
``ALREADY_PURCHASED`` from memory, without Redis or PostgreSQL. Only what is final is kept:
a hold, which may still lapse, is never remembered. A sale is forgotten a while after its
end (:data:`LINGER`), so memory follows the sales still running.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from .errors import AlreadyPurchased
from .model import Purchase, Sale

#: How long memory of a sale is kept after it ends: past the end a purchase is refused by
#: the window and a status read asks the ledger, so this only covers clocks a little apart.
LINGER = timedelta(seconds=5)


class BuyerMemory:
    """The committed buyers of the sales this process served."""

    def __init__(self) -> None:
        # sale id -> user -> (purchase id as an int, purchased at) of their committed
        # purchase, as the ledger confirmed it. Plain values, which the garbage collector
        # does not walk: kept as objects, a million buyers made every full collection
        # slower as the sale filled (docs/performance.md, "A big sale").
        self._buyers: dict[uuid.UUID, dict[str, tuple[Any, ...]]] = defaultdict(dict)
        self._sales: dict[uuid.UUID, Sale] = {}
        self.answered = 0

    def serves(self, sale: Sale) -> None:
        """Note that this process serves ``sale`` (so it is forgotten once it is over)."""
        self._sales[sale.id] = sale

    def answer(self, sale: Sale, user_id: str) -> None:
        """Raise AlreadyPurchased when the user's purchase is known to have committed."""
        if user_id in self._buyers.get(sale.id, ()):
            self.answered += 1
            raise AlreadyPurchased()

    def remember(self, purchase: Purchase) -> None:
        """Keep a committed purchase; a hold (not final) is not kept."""
        if not purchase.held:
            kept: tuple[Any, ...] = (purchase.id.int, purchase.purchased_at)
            if purchase.quantity != 1:  # a buyer of one unit keeps the smaller tuple
                kept += (purchase.quantity,)
            self._buyers[purchase.sale_id][purchase.user_id] = kept

    def known(self, sale_id: uuid.UUID, user_id: str) -> Purchase | None:
        """The user's purchase when it is known to have committed, else None."""
        known = self._buyers.get(sale_id, {}).get(user_id)
        if known is None:
            return None
        return Purchase(uuid.UUID(int=known[0]), sale_id, user_id, known[1],
                        quantity=known[2] if len(known) > 2 else 1)

    def forget_ended(self, now: datetime, busy: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """Drop the sales over for a while, except those in ``busy``; return their ids."""
        over = [sale_id for sale_id, sale in self._sales.items()
                if sale.end_time + LINGER <= now and sale_id not in busy]
        for sale_id in over:
            self._sales.pop(sale_id, None)
            self._buyers.pop(sale_id, None)
        return over

    @property
    def buyers(self) -> int:
        """How many buyers are remembered, over every sale."""
        return sum(len(b) for b in self._buyers.values())

    @property
    def sales(self) -> int:
        """How many sales have remembered buyers."""
        return len(self._buyers)


__all__ = ["LINGER", "BuyerMemory"]
