"""The actors' ``statistics()`` as metrics, and the current sale's stock.

Nothing here runs on the request path. :func:`actor_mirror` copies each entry of
:data:`ACTOR_METRICS` into a prometheus-client metric when ``/metrics`` is scraped and, with
several workers, every second, so a scrape of any worker sums them over all (see
:mod:`.mirror` for how each kind adds up). :class:`SaleCollector` reads the current sale's
stock, which lives in the shared catalog and gate, so every worker gives the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors import FlashFlowError

from ..runtime import Runtime
from .mirror import COMBINED, COUNTER, LARGEST, LARGEST_LIVE, SMALLEST_LIVE, SUMMED, Mirror

#: Metrics of the actors: (exposed name, kind, help, source, field of the source). The kind
#: is ``COUNTER`` or how the workers' gauges combine (:mod:`.mirror`). The sources are the
#: actors' ``statistics()`` records and, for capacities, the settings; an actor that the
#: settings switch off (the rate limiter) exports nothing.
ACTOR_METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("flashflow_gate_inbox_depth", SUMMED,
     "Reserve requests waiting in the stock gate's inbox.", "gate", "inbox_depth"),
    ("flashflow_gate_inbox_capacity", SUMMED,
     "Size of the stock gate's inbox.", "settings", "gate_inbox_size"),
    ("flashflow_gate_batches_total", COUNTER,
     "Batches the stock gate sent to Redis.", "gate", "batches"),
    ("flashflow_gate_requests_total", COUNTER,
     "Reserve requests the stock gate took from its inbox.", "gate", "reserved_requests"),
    ("flashflow_gate_largest_batch", LARGEST,
     "Largest batch the stock gate has sent.", "gate", "largest_batch"),
    ("flashflow_gate_local_sold_out_answers_total", COUNTER,
     "Answers given from the gate's sold-out memory, without Redis.", "gate",
     "local_sold_out_answers"),
    ("flashflow_gate_sold_out_sales", LARGEST_LIVE,
     "Sales the stock gate currently holds as sold out.", "gate", "sold_out_sales"),
    ("flashflow_ledger_inbox_depth", SUMMED,
     "Commits waiting in the ledger's inbox.", "ledger", "inbox_depth"),
    ("flashflow_ledger_inbox_capacity", SUMMED,
     "Size of the ledger's inbox.", "settings", "ledger_inbox_size"),
    ("flashflow_ledger_batches_total", COUNTER,
     "Group commits the ledger wrote.", "ledger", "batches"),
    ("flashflow_ledger_committed_total", COUNTER,
     "Purchases the ledger committed.", "ledger", "committed"),
    ("flashflow_ledger_largest_batch", LARGEST,
     "Largest batch the ledger has written.", "ledger", "largest_batch"),
    ("flashflow_ledger_failed_batches_total", COUNTER,
     "Per-sale batches PostgreSQL did not take.", "ledger", "failed_batches"),
    ("flashflow_ledger_lookups_total", COUNTER,
     "Purchase lookups the ledger answered.", "ledger", "lookups"),
    ("flashflow_ledger_lookup_batches_total", COUNTER,
     "Queries that answered those lookups, batched.", "ledger", "lookup_batches"),
    ("flashflow_ledger_withdrawn_total", COUNTER,
     "Commits withdrawn unsent: their purchase wait ran out while they queued.",
     "ledger", "withdrawn"),
    ("flashflow_serializer_in_flight", SUMMED,
     "Purchases in flight in the user serializer.", "serializer", "in_flight"),
    ("flashflow_serializer_max_in_flight", SUMMED,
     "Purchases the user serializer admits at once.", "settings", "max_in_flight"),
    ("flashflow_serializer_coalesced_total", COUNTER,
     "Requests that joined a purchase already in flight.", "serializer", "coalesced"),
    ("flashflow_serializer_known_buyers", SUMMED,
     "Buyers each worker remembers.", "serializer", "known_buyers"),
    ("flashflow_serializer_answered_from_memory_total", COUNTER,
     "ALREADY_PURCHASED answers given from memory.", "serializer", "answered_from_memory"),
    ("flashflow_serializer_rolled_back_total", COUNTER,
     "Reservations returned to the gate after the ledger refused them.",
     "serializer", "rolled_back"),
    ("flashflow_feed_subscribers", SUMMED,
     "Open stock-feed subscriptions (one per SSE client).", "feed", "subscribers"),
    ("flashflow_feed_watched_sales", LARGEST_LIVE,
     "Sales the stock feed is watching.", "feed", "watched_sales"),
    ("flashflow_feed_messages_received_total", COUNTER,
     "Stock messages the feed received from Redis.", "feed", "messages_received"),
    ("flashflow_feed_updates_delivered_total", COUNTER,
     "Stock values handed to subscribers.", "feed", "updates_delivered"),
    ("flashflow_feed_reconnects_total", COUNTER,
     "Times the feed lost its Redis subscription.", "feed", "reconnects"),
    ("flashflow_feed_connected", SMALLEST_LIVE,
     "1 while the feed holds its Redis subscription.", "feed", "connected"),
    ("flashflow_reconciler_runs_total", COUNTER,
     "Reconciler passes over a sale with a gate.", "reconciler", "runs"),
    ("flashflow_reconciler_returned_total", COUNTER,
     "Stale reservations the reconciler put back on sale.", "reconciler", "returned"),
    ("flashflow_reconciler_failed_runs_total", COUNTER,
     "Reconciler passes that a backend failure cut short.", "reconciler", "failed_runs"),
    ("flashflow_reconciler_claimed_total", COUNTER,
     "Committed purchases the reconciler recorded in a gate that did not hold them.",
     "reconciler", "claimed"),
    ("flashflow_reconciler_recounted_total", COUNTER,
     "Times the reconciler found a gate's stock counter drifted and set it right.",
     "reconciler", "recounted"),
    ("flashflow_reconciler_settled_total", COUNTER,
     "Committed purchases the reconciler took out of a gate's pending set.",
     "reconciler", "settled"),
    ("flashflow_gate_waiting", SUMMED,
     "Purchases waiting for a unit to come back or for the sale to be sold out for good.",
     "gate", "waiting"),
    ("flashflow_serializer_lost_replies_total", COUNTER,
     "Reservations or commits whose reply was lost, then settled or undone.",
     "serializer", "lost_replies"),
    ("flashflow_limiter_inbox_depth", SUMMED,
     "Token requests waiting in the rate limiter's inbox.", "limiter", "inbox_depth"),
    ("flashflow_limiter_batches_total", COUNTER,
     "Batches of token requests the rate limiter sent to Redis.", "limiter", "batches"),
    ("flashflow_limiter_checked_total", COUNTER,
     "Purchase attempts the rate limiter checked.", "limiter", "checked"),
    ("flashflow_limiter_limited_total", COUNTER,
     "Purchase attempts refused with 429.", "limiter", "limited"),
    ("flashflow_holds_made_total", COUNTER,
     "Holds committed by winning presses in sales with holds.", "holds", "made"),
    ("flashflow_holds_confirmed_total", COUNTER,
     "Holds confirmed by the payment step.", "holds", "confirmed"),
    ("flashflow_holds_lapsed_total", COUNTER,
     "Holds that reached their end unpaid and lapsed (each in one process).", "holds",
     "lapsed"),
    ("flashflow_holds_cancelled_total", COUNTER,
     "Holds cancelled by their buyer or the payment step.", "holds", "cancelled"),
    ("flashflow_waitlist_joins_total", COUNTER,
     "Places given in a waitlist.", "holds", "joined"),
    ("flashflow_waitlist_offers_total", COUNTER,
     "Units handed to the first in a waitlist as new holds.", "holds", "offered"),
    ("flashflow_holds_gate_retries_total", COUNTER,
     "Ended holds told to the gate again (a process died first, or Redis failed).", "holds",
     "gate_retries"),
    ("flashflow_holds_failed_sweeps_total", COUNTER,
     "Hold sweeps that failed (PostgreSQL or Redis did not answer).", "holds",
     "failed_sweeps"),
    ("flashflow_holds_watchers", SUMMED,
     "Buyers' streams following their standing.", "holds", "watchers"),
    ("flashflow_line_ticks_total", COUNTER,
     "Passes that moved the waiting rooms' lines on.", "lines", "ticks"),
    ("flashflow_line_failed_ticks_total", COUNTER,
     "Line moves that failed (PostgreSQL did not answer).", "lines", "failed_ticks"),
    ("flashflow_line_joined_total", COUNTER,
     "Tickets given in waiting rooms (a user's second join is not counted).", "lines",
     "joined"),
    ("flashflow_line_watching", SUMMED,
     "Positions whose streams wait for their turn.", "lines", "watching"),
    ("flashflow_catalog_sales", LARGEST_LIVE,
     "Sales held by the catalog.", "catalog", "sales"),
    ("flashflow_catalog_refreshes_total", COUNTER,
     "Times the catalog reloaded the sales.", "catalog", "refreshes"),
    ("flashflow_catalog_failed_refreshes_total", COUNTER,
     "Catalog reloads that failed.", "catalog", "failed_refreshes"),
)

#: Metrics of the current sale, read at scrape time: (exposed name, help).
SALE_METRICS: tuple[tuple[str, str], ...] = (
    ("flashflow_sale_total_stock", "Total stock of the current sale."),
    ("flashflow_sale_remaining_stock", "Stock left in the gate for the current sale."),
    ("flashflow_sale_status", "1 for the status the current sale is in."),
)


@dataclass(frozen=True, slots=True)
class SaleStock:
    """The current sale as a scrape sees it; ``remaining`` is None when Redis did not answer."""

    sale_id: str
    status: str
    total_stock: int
    remaining: int | None


def actor_mirror(runtime: Runtime, registry: CollectorRegistry | None) -> Mirror:
    """The metrics of :data:`ACTOR_METRICS`, copied from the actors at each ``sync()``."""
    sources: dict[str, Any] = {
        "gate": runtime.gate.statistics,
        "ledger": runtime.ledger.statistics,
        "serializer": runtime.serializer.statistics,
        "catalog": runtime.catalog.statistics,
        "feed": runtime.feed.statistics,
        "reconciler": runtime.reconciler.statistics,
        "holds": runtime.holds.statistics,
        "lines": runtime.lines.statistics,
        "settings": lambda: runtime.settings,
    }
    if runtime.limiter is not None:  # switched off by the settings: no limiter metric
        sources["limiter"] = runtime.limiter.statistics
    rows = [row for row in ACTOR_METRICS if row[3] in sources]

    def read() -> dict[str, float]:
        records = {source: statistics() for source, statistics in sources.items()}
        return {name: float(getattr(records[source], field))
                for name, _, _, source, field in rows}

    return Mirror([(name, kind, describe(kind, help_text)) for name, kind, help_text, _, _ in rows],
                  read, registry)


def describe(kind: str, help_text: str) -> str:
    """A metric's help, saying how a gauge's workers combine."""
    return help_text if kind == COUNTER else f"{help_text[:-1]}: {COMBINED[kind]}."


class SaleCollector(Collector):
    """Reads the current sale's stock at scrape time, as the ``/metrics`` route left it."""

    def __init__(self) -> None:
        self.sale: SaleStock | None = None

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe up front: the samples exist only at scrape time."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """Yield the current sale's stock, status and total."""
        yield from self._sale_families()

    def _sale_families(self) -> Iterator[Metric]:
        sale = self.sale
        if sale is None:
            return
        helps = dict(SALE_METRICS)
        total = GaugeMetricFamily("flashflow_sale_total_stock",
                                  helps["flashflow_sale_total_stock"], labels=["sale_id"])
        total.add_metric([sale.sale_id], sale.total_stock)
        yield total
        if sale.remaining is not None:
            left = GaugeMetricFamily("flashflow_sale_remaining_stock",
                                     helps["flashflow_sale_remaining_stock"], labels=["sale_id"])
            left.add_metric([sale.sale_id], sale.remaining)
            yield left
        status = GaugeMetricFamily("flashflow_sale_status", helps["flashflow_sale_status"],
                                   labels=["sale_id", "status"])
        status.add_metric([sale.sale_id, sale.status], 1)
        yield status


async def read_sale(runtime: Runtime) -> SaleStock | None:
    """The current sale and the stock its gate holds, or None when no sale is scheduled."""
    now = runtime.clock()
    sale = runtime.catalog.current(now)
    if sale is None:
        return None
    try:
        remaining: int | None = await runtime.gate.store.remaining(sale)
    except FlashFlowError:
        remaining = None
    return SaleStock(str(sale.id), sale.status(now).value, sale.total_stock, remaining)
