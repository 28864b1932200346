"""Prometheus metrics: ``GET /metrics`` in the text format, and the hooks that feed it.

The hot path pays for two dictionary look-ups and two increments per request: requests are
counted by route rule (never the raw path, so labels stay bounded), and the purchase
outcome is read from the response (its status, or the wire code an error answer carries)
only on ``POST .../purchase``. The actors' numbers cost nothing on that path: their
``statistics()`` are copied into metrics at each scrape (``actor_metrics.actor_mirror``).

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable
directory before the processes start: prometheus-client chooses its storage when it is
first imported. The directory is created if missing, never emptied. Every metric is then
written to files there, and every scrape combines them over all workers, whichever
answers: each worker also copies its actors' numbers and its ``process_*`` figures there
every :data:`SYNC_INTERVAL_S`. Without the variable, one in-process registry per app is
used, with prometheus-client's own ``ProcessCollector``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from quart import Response, g, request
from quart_schema import hide
from quart_trio import QuartTrio

from ..runtime import Runtime
from .actor_metrics import ACTOR_METRICS, SALE_METRICS, SaleCollector, actor_mirror, read_sale
from .auth import Asking
from .mirror import LARGEST_LIVE, PROCESS_METRICS, Mirror, process_values
from .wire import METRICS

__all__ = ["ACTOR_METRICS", "BUILD_METRICS", "PROCESS_METRICS", "REQUEST_METRICS",
           "SALE_METRICS", "RequestMetrics", "install_metrics", "scrape_registry"]

UNMATCHED = "<unmatched>"
PURCHASE_ENDPOINT = "purchase"
CONFIRMED = "CONFIRMED"
#: The outcome of each success status of a purchase.
SUCCESSES = {201: CONFIRMED, 200: "HELD", 202: "WAITLISTED"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Metrics counted on each request: (exposed name, help).
REQUEST_METRICS: tuple[tuple[str, str], ...] = (
    ("flashflow_http_requests_total", "HTTP requests by route rule, method and status."),
    ("flashflow_http_request_duration_seconds", "HTTP request latency by route rule and method."),
    ("flashflow_purchases_total",
     "Purchase answers by wire code (CONFIRMED for a 201, HELD for a 200, WAITLISTED for a 202)."),
    ("flashflow_http_errors_total", "Error answers by status and wire code."),
    ("flashflow_purchased_units_total",
     "Units taken by purchase answers of 201 (a purchase, or with holds a hold)."),
)

#: Metrics of the build: (exposed name, help).
BUILD_METRICS: tuple[tuple[str, str], ...] = (
    ("flashflow_build_info", "Always 1; the version label is the flashflow package's."),
)

#: How often each worker copies its actors' numbers into the multiprocess files.
SYNC_INTERVAL_S = 1.0


class RequestMetrics:
    """The counters and histograms fed by every request."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        names = dict(REQUEST_METRICS)
        self.requests = Counter("flashflow_http_requests_total",
                                names["flashflow_http_requests_total"],
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("flashflow_http_request_duration_seconds",
                                 names["flashflow_http_request_duration_seconds"],
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.purchases = Counter("flashflow_purchases_total", names["flashflow_purchases_total"],
                                 ["outcome"], registry=registry)
        self.errors = Counter("flashflow_http_errors_total",
                              names["flashflow_http_errors_total"], ["status", "code"],
                              registry=registry)
        self.purchased_units = Counter("flashflow_purchased_units_total",
                                       names["flashflow_purchased_units_total"],
                                       registry=registry)
        # label values -> child: a request pays a dictionary look-up, not labels()'s checks
        self._requests: dict[tuple[str, ...], Any] = {}
        self._latency: dict[tuple[str, ...], Any] = {}
        self._purchases: dict[tuple[str, ...], Any] = {}
        self._errors: dict[tuple[str, ...], Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float | None,
                error_code: str | None = None) -> None:
        """Count one request, its error answer's wire code (``error_code``, None for a
        success) and, when its start is known, its latency."""
        method = method if method in METHODS else "OTHER"
        _child(self._requests, self.requests, (route, method, str(status))).inc()
        if error_code is not None:
            _child(self._errors, self.errors, (str(status), error_code)).inc()
        if seconds is not None:
            _child(self._latency, self.latency, (route, method)).observe(seconds)

    def purchase(self, outcome: str) -> None:
        """Count one purchase answer."""
        _child(self._purchases, self.purchases, (outcome,)).inc()

    def units(self, quantity: int) -> None:
        """Count the units of one 201 purchase answer."""
        self.purchased_units.inc(quantity)


def _child(children: dict[tuple[str, ...], Any], metric: Any, labels: tuple[str, ...]) -> Any:
    child = children.get(labels)
    if child is None:
        child = children[labels] = metric.labels(*labels)
    return child


def scrape_registry(collectors: Iterable[Collector],
                    own: CollectorRegistry | None) -> CollectorRegistry:
    """The registry a scrape reads: ``own`` in one process, else the multiprocess files."""
    if own is None:
        from prometheus_client import multiprocess

        own = CollectorRegistry()
        multiprocess.MultiProcessCollector(own)
    for collector in collectors:
        own.register(collector)
    return own


def build_info(registry: CollectorRegistry | None) -> None:
    """Set ``flashflow_build_info{version=...}`` to 1."""
    name, help_text = BUILD_METRICS[0]
    gauge = Gauge(name, help_text, ["version"], registry=registry, multiprocess_mode=LARGEST_LIVE)
    gauge.labels(version("flashflow")).set(1)


def purchase_outcome(status: int, error_code: str | None) -> str:
    """The wire code of a purchase answer: CONFIRMED for a 201 (a purchase, or with holds a
    hold), HELD for a 200 (pressed again while holding), WAITLISTED for a 202 (a place),
    else the error's code."""
    if status in SUCCESSES:
        return SUCCESSES[status]
    return error_code if error_code is not None else f"HTTP_{status}"


def install_metrics(app: QuartTrio, runtime: Runtime,
                    check: Callable[[Asking], None] = lambda asking: None) -> RequestMetrics:
    """Register ``GET /metrics`` and the request hooks that count and time every request.

    ``check`` runs before each scrape and raises to refuse it (the metrics token). Returns
    the recorder, which the fast path feeds the same way for the requests it answers.
    """
    directory = runtime.settings.metrics_dir  # PROMETHEUS_MULTIPROC_DIR, or one process
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    own = None if directory is not None else CollectorRegistry()
    recorder = RequestMetrics(own)
    build_info(own)
    mirrors = [actor_mirror(runtime, own)]
    if directory is None:
        ProcessCollector(registry=own)
    else:
        # ProcessCollector would describe the worker that answers: copy each worker's
        # figures into the files instead, combined as PROCESS_METRICS says.
        process = ProcessCollector(registry=None)
        mirrors.append(Mirror(PROCESS_METRICS, lambda: process_values(process), None))
    stock = SaleCollector()
    registry = scrape_registry([stock], own)

    def sync() -> None:
        for mirror in mirrors:
            mirror.sync()

    if directory is not None:
        # The other workers' numbers reach a scrape through the files: each copies its own.
        copying = trio.CancelScope()

        async def copy_every_interval() -> None:
            with copying:
                while True:
                    sync()
                    await trio.sleep(SYNC_INTERVAL_S)

        @app.before_serving
        async def start_copying() -> None:
            app.nursery.start_soon(copy_every_interval)

        @app.after_serving
        async def copy_last() -> None:
            copying.cancel()
            sync()

    @app.before_request
    async def start_timer() -> None:
        g.flashflow_started = time.perf_counter()

    @app.after_request
    async def record_request(response: Response) -> Response:
        started = g.get("flashflow_started")
        elapsed = time.perf_counter() - started if started is not None else None
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        # error_code is set on the error answers of wire.response
        error_code = getattr(response, "error_code", None)
        recorder.observe(route, request.method, response.status_code, elapsed, error_code)
        if request.endpoint == PURCHASE_ENDPOINT and request.method == "POST":
            recorder.purchase(purchase_outcome(response.status_code, error_code))
        return response

    @app.get(METRICS)
    @hide  # for the operators' scraper, not for API clients
    async def prometheus_metrics() -> Response:
        check(Asking.of(request))
        stock.sale = await read_sale(runtime)
        sync()
        # No await between setting the sale and rendering: no other task can interleave.
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    return recorder
