"""What the user serializer's tests share: a sale in memory, a fake ledger, a real gate."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio_asyncio

from actors import CommitResult, LedgerState, Purchase, Sale, Tally, utc_now
from actors.ledger import CommitOutcome
from actors.stock_gate import StockGate, open_stock_gate
from actors.user_serializer import SerializerConfig
from flashflow.settings import Settings

from ..helpers import on_defaults

#: The serializer's configuration by default.
DEFAULTS = Settings().serializer_config()


def a_sale(stock: int = 5, *, ends_in: timedelta = timedelta(hours=1)) -> Sale:
    """An in-memory sale running now, for tests whose ledger is a fake."""
    now = datetime.now(UTC)
    return Sale(uuid.uuid4(), "Widget", stock, now - timedelta(minutes=1), now + ends_in)


@dataclass
class FakeLedger:
    """A ledger stand-in: answers every commit with ``outcome`` or raises ``error``.

    When ``hold`` is set, each commit waits for it first. ``standing`` is what lookups find;
    ``lost`` is what a commit whose reply was lost turns out to be.
    """

    outcome: CommitResult = CommitResult.COMMITTED
    error: BaseException | None = None
    hold: trio.Event | None = None
    commits: list[Purchase] = field(default_factory=list)
    standing: dict[str, Purchase] = field(default_factory=dict)
    lost: CommitResult = CommitResult.ABSENT

    async def commit(self, purchase: Purchase, deadline: float = math.inf) -> CommitOutcome:
        self.commits.append(purchase)
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        if self.outcome is CommitResult.DUPLICATE:
            other = Purchase(uuid.uuid4(), purchase.sale_id, purchase.user_id, utc_now())
            return CommitOutcome(self.outcome, other)
        return CommitOutcome(self.outcome, purchase if self.outcome is CommitResult.COMMITTED
                             else None)

    async def find_purchase(self, sale_id: uuid.UUID, user_id: str,
                            deadline: float = math.inf) -> Purchase | None:
        return self.standing.get(user_id)

    async def inquire(self, purchase: Purchase) -> CommitOutcome:
        return CommitOutcome(self.lost, purchase if self.lost is CommitResult.COMMITTED
                             else None)


def fixed_loader(buyers: dict[str, str] | None = None):
    """A gate loader reporting nothing sold and the given buyers."""
    async def load(sale: Sale) -> LedgerState:
        return LedgerState(sale.total_stock, 0, dict(buyers or {}))
    return load


async def nothing_sold(sale_id: uuid.UUID) -> Tally:
    """A gate counter for a ledger that holds no purchase (of a stock it does not say)."""
    return Tally(1, 0)


@asynccontextmanager
async def gate_for(settings, loader) -> AsyncIterator[StockGate]:
    """A real stock gate on the test's Redis prefix, inside an asyncio bridge."""
    config = on_defaults(settings).gate_config()
    async with (
        trio_asyncio.open_loop(),
        open_stock_gate(config, loader=loader, counter=nothing_sold) as gate,
    ):
        yield gate


def knobs(**overrides) -> SerializerConfig:
    """Serializer settings with short waits, for tests."""
    return replace(DEFAULTS, **{"wait_s": 0.5, "poll_s": 0.02, **overrides})


async def expect(error: type[BaseException], fn, *args) -> None:
    """Await ``fn(*args)``, which must raise ``error``: for purchases started in a nursery."""
    with pytest.raises(error):
        await fn(*args)
