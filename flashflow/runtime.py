"""The one place that wires the actor tree together.

Start order is ledger, gate, catalog, stock feed, serializer; the HTTP front runs inside,
so on the way out HTTP stops first, purchases in flight drain, and the actors close after
them.

A change to a sale travels: the writer announces it on the stock channel, every process's
feed hears the notice and nudges its catalog, the catalog reloads and tells the gate which
sales changed, and the gate drops what it had concluded from their old definition.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from actors import (
    Catalog,
    Holds,
    Ledger,
    Lines,
    RateLimiter,
    Reconciler,
    SaleStatus,
    StockFeed,
    StockGate,
    UserSerializer,
    open_asyncio_bridge,
    open_catalog,
    open_holds,
    open_ledger,
    open_lines,
    open_rate_limiter,
    open_reconciler,
    open_stock_feed,
    open_stock_gate,
    open_user_serializer,
    single_errors,
    utc_now,
)

from .admission import Admissions, load_admissions
from .settings import SERVICE_URLS, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Handles to every running actor, for the HTTP front."""

    settings: Settings
    ledger: Ledger
    catalog: Catalog
    gate: StockGate
    serializer: UserSerializer
    clock: Callable[[], datetime]
    feed: StockFeed
    reconciler: Reconciler
    limiter: RateLimiter | None
    holds: Holds
    lines: Lines
    admissions: Admissions


@asynccontextmanager
async def open_runtime(settings: Settings, *,
                       clock: Callable[[], datetime] = utc_now) -> AsyncIterator[Runtime]:
    """Open the asyncio bridge and the actor tree; close them in reverse order on exit.

    Raises:
        SettingsError: ``settings`` name no PostgreSQL or no Redis; the message names the
            variable. The actors' configurations take settings that passed this check.
    """
    settings.require(*SERVICE_URLS)
    if settings.reservation_grace_s <= settings.purchase_wait_s:
        log.warning("FLASHFLOW_RESERVATION_GRACE_S (%s) is not longer than "
                    "FLASHFLOW_PURCHASE_WAIT_S (%s): a reconciler may put a unit back on sale "
                    "while its commit still waits to be sent", settings.reservation_grace_s,
                    settings.purchase_wait_s)
    with single_errors():
        async with (
            open_asyncio_bridge(),
            open_ledger(settings.ledger_config()) as ledger,
            open_stock_gate(settings.gate_config(), loader=ledger.state,
                            counter=ledger.tally) as gate,
            # An injected clock is taken as it is; the real one follows PostgreSQL's.
            open_catalog(ledger.sales, settings.catalog_refresh_s,
                         on_change=(gate.queues.redefine,),
                         database_time=ledger.database_time if clock is utc_now else None,
                         clock=clock) as catalog,
            open_stock_feed(settings.feed_config(), on_notice=catalog.nudge) as feed,
        ):
            clock = catalog.now
            await load_current_gate(catalog, gate, clock())
            admissions = await load_admissions(settings, ledger)
            async with (
                _maybe(settings.rate_limit_enabled, open_rate_limiter,
                       settings.limiter_config()) as limiter,
                open_reconciler(gate, ledger, catalog, interval_s=settings.reconcile_interval_s,
                                grace_s=settings.reservation_grace_s, clock=clock) as reconciler,
                open_holds(ledger, gate, settings.holds_config(),
                           live=partial(holds_may_end, catalog)) as holds,
                open_lines(ledger, catalog.sales, clock, settings.lines_config()) as lines,
                open_user_serializer(
                    gate, ledger, catalog=catalog, limiter=limiter,
                    config=settings.serializer_config(), clock=clock,
                    also_forget=(feed.forget,), holds=holds,
                ) as serializer,
            ):
                yield Runtime(settings=settings, ledger=ledger, catalog=catalog, gate=gate,
                              serializer=serializer, clock=clock, feed=feed,
                              reconciler=reconciler, limiter=limiter, holds=holds,
                              lines=lines, admissions=admissions)


@asynccontextmanager
async def _maybe(enabled: bool, opener: Callable, *args: object) -> AsyncIterator[object]:
    """Open ``opener(*args)`` when enabled, else yield None."""
    if not enabled:
        yield None
        return
    async with opener(*args) as handle:
        yield handle


#: How long past a sale's end plus its window its holds are still swept: a hold made just
#: before the end lapses a window later, and the catalog may learn of a sale a little late.
HOLDS_SWEPT_PAST_S = 60


def holds_may_end(catalog: Catalog) -> bool:
    """Whether a hold of any sale may still end: a sale with holds not over by its end, its
    window and :data:`HOLDS_SWEPT_PAST_S` (by the catalog's clock)."""
    now = catalog.now()
    return any(sale.hold_seconds is not None
               and now < sale.end_time + timedelta(seconds=sale.hold_seconds + HOLDS_SWEPT_PAST_S)
               for sale in catalog.sales())


async def load_current_gate(catalog: Catalog, gate: StockGate, now: datetime) -> None:
    """Build the gate from the ledger for the current sale when Redis does not hold it."""
    sale = catalog.current(now)
    if sale is not None and sale.status(now) is not SaleStatus.ENDED:
        await gate.store.ensure_loaded(sale)
