"""Tests of ``GET /metrics``: request, purchase and actor metrics against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from flashflow.http.metrics import ACTOR_METRICS
from flashflow.http.mirror import COUNTER
from flashflow.http.wire import CURRENT_EVENTS, CURRENT_PURCHASE, METRICS

from ..helpers import live_server, make_sale, spawn_server


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, keyed by (sample name, frozen label items)."""
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    """The value of one sample, failing with the names present when it is missing."""
    key = (name, frozenset(labels.items()))
    assert key in scrape, sorted(k for k in scrape if k[0] == name)
    return scrape[key]


async def test_metrics_after_a_purchase_hold_exact_values(settings):
    """After one purchase and one repeat, /metrics shows outcomes, latency, actors and stock."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            again = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            response = await server.client.get(METRICS)
    assert (first.status_code, again.status_code) == (201, 409)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    scrape = samples(response.text)
    assert value(scrape, "flashflow_purchases_total", outcome="CONFIRMED") == 1
    assert value(scrape, "flashflow_purchases_total", outcome="ALREADY_PURCHASED") == 1
    assert value(scrape, "flashflow_http_errors_total", status="409",
                 code="ALREADY_PURCHASED") == 1
    assert not [k for k in scrape if k[0] == "flashflow_http_errors_total"
                and dict(k[1])["code"] != "ALREADY_PURCHASED"]
    assert value(scrape, "flashflow_http_requests_total",
                 route=CURRENT_PURCHASE, method="POST", status="201") == 1
    assert value(scrape, "flashflow_http_requests_total",
                 route=CURRENT_PURCHASE, method="POST", status="409") == 1
    assert value(scrape, "flashflow_http_request_duration_seconds_count",
                 route=CURRENT_PURCHASE, method="POST") == 2
    assert value(scrape, "flashflow_http_request_duration_seconds_bucket",
                 route=CURRENT_PURCHASE, method="POST", le="+Inf") == 2
    assert 0 < value(scrape, "flashflow_http_request_duration_seconds_sum",
                     route=CURRENT_PURCHASE, method="POST") < 30
    assert value(scrape, "flashflow_gate_requests_total") == 1
    assert value(scrape, "flashflow_gate_batches_total") == 1
    assert value(scrape, "flashflow_gate_largest_batch") == 1
    assert value(scrape, "flashflow_gate_inbox_depth") == 0
    assert value(scrape, "flashflow_gate_inbox_capacity") == settings.gate_inbox_size
    assert value(scrape, "flashflow_ledger_committed_total") == 1
    assert value(scrape, "flashflow_ledger_batches_total") == 1
    assert value(scrape, "flashflow_ledger_failed_batches_total") == 0
    assert value(scrape, "flashflow_serializer_answered_from_memory_total") == 1
    assert value(scrape, "flashflow_serializer_in_flight") == 0
    assert value(scrape, "flashflow_feed_subscribers") == 0
    assert value(scrape, "flashflow_feed_connected") == 1
    assert value(scrape, "flashflow_limiter_checked_total") == 1
    assert value(scrape, "flashflow_limiter_limited_total") == 0
    assert value(scrape, "flashflow_reconciler_returned_total") == 0
    assert value(scrape, "flashflow_sale_total_stock", sale_id=str(sale.id)) == 5
    assert value(scrape, "flashflow_sale_remaining_stock", sale_id=str(sale.id)) == 4
    assert value(scrape, "flashflow_sale_status", sale_id=str(sale.id), status="active") == 1
    assert value(scrape, "flashflow_build_info", version=version("flashflow")) == 1
    assert value(scrape, "process_cpu_seconds_total") > 0
    assert value(scrape, "process_resident_memory_bytes") > 0


async def test_unknown_paths_share_one_route_label(settings):
    """Requests to unknown paths are counted under one label, so paths cannot explode labels."""
    await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            for i in range(3):
                assert (await server.client.get(f"/no/such/path/{i}")).status_code == 404
            scrape = samples((await server.client.get(METRICS)).text)
    assert value(scrape, "flashflow_http_requests_total",
                 route="<unmatched>", method="GET", status="404") == 3
    assert not any("/no/such" in str(labels) for _, labels in scrape)


async def test_sold_out_answers_are_counted_by_wire_code(settings):
    """Once the stock is gone, further purchases count as SOLD_OUT and the gauge reads 0."""
    sale = await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            for user in ("buyer-1", "buyer-2", "buyer-3"):
                await server.client.post(CURRENT_PURCHASE, json={"userId": user})
            scrape = samples((await server.client.get(METRICS)).text)
    assert value(scrape, "flashflow_purchases_total", outcome="CONFIRMED") == 1
    assert value(scrape, "flashflow_purchases_total", outcome="SOLD_OUT") == 2
    assert value(scrape, "flashflow_sale_remaining_stock", sale_id=str(sale.id)) == 0


async def test_an_actor_switched_off_exports_nothing(settings):
    """With rate limits off there is no limiter, and no limiter metric in the scrape."""
    await make_sale(settings.database_url, stock=1)
    with trio.fail_after(30):
        async with live_server(replace(settings, rate_limit_enabled=False)) as server:
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            scrape = samples((await server.client.get(METRICS)).text)
    assert value(scrape, "flashflow_purchases_total", outcome="CONFIRMED") == 1
    assert not [name for name, _ in scrape if name.startswith("flashflow_limiter_")]


async def test_open_event_streams_count_as_feed_subscribers(settings):
    """While one client holds the SSE stream open, /metrics counts one feed subscriber."""
    await make_sale(settings.database_url, stock=3)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            async with server.client.stream("GET", CURRENT_EVENTS) as stream:
                assert stream.status_code == 200
                # Hold the iterator: a dropped one is finalized and closes the stream early.
                chunks, text = stream.aiter_text(), ""
                while "event: snapshot" not in text:
                    text += await anext(chunks)
                scrape = samples((await server.client.get(METRICS)).text)
                await chunks.aclose()
    assert value(scrape, "flashflow_feed_subscribers") == 1
    assert value(scrape, "flashflow_feed_watched_sales") == 1


def test_multiprocess_mode_reads_the_shared_directory(tmp_path: Path):
    """With PROMETHEUS_MULTIPROC_DIR set, a scrape sums what worker processes wrote there."""
    worker = textwrap.dedent("""
        from flashflow.http.metrics import RequestMetrics
        recorder = RequestMetrics(None)
        recorder.observe("/r", "POST", 201, 0.01)
        recorder.purchase("CONFIRMED")
    """)
    scraper = textwrap.dedent("""
        from prometheus_client import generate_latest
        from flashflow.http.metrics import scrape_registry
        print(generate_latest(scrape_registry([], None)).decode())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-c", scraper], env=env, check=True, timeout=60,
                          capture_output=True, text=True)
    scrape = samples(done.stdout)
    assert value(scrape, "flashflow_purchases_total", outcome="CONFIRMED") == 2
    assert value(scrape, "flashflow_http_requests_total",
                 route="/r", method="POST", status="201") == 2
    assert value(scrape, "flashflow_http_request_duration_seconds_count",
                 route="/r", method="POST") == 2


async def test_every_worker_of_a_server_scrapes_the_same_totals(settings, tmp_path):
    """Purchases spread over 2 workers: each scrape, whichever worker answers, holds the totals
    of both, with no pid label on a counter."""
    sale = await make_sale(settings.database_url, stock=50)
    server = await trio.to_thread.run_sync(
        lambda: spawn_server(settings, tmp_path, "--workers", "2"))
    # A connection per request, so the kernel hands them to both workers.
    fresh = httpx.Limits(max_keepalive_connections=0)
    buyers = [f"spread-{i:02d}" for i in range(20)]
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=server.base_url, limits=fresh,
                                         timeout=30) as client:
                for user in buyers:
                    response = await client.post(CURRENT_PURCHASE, json={"userId": user})
                    assert response.status_code == 201, response.text
                # Every worker copies its numbers into the shared files within a second.
                scrape = samples((await client.get(METRICS)).text)
                while value(scrape, "flashflow_ledger_committed_total") < len(buyers):
                    await trio.sleep(0.2)
                    scrape = samples((await client.get(METRICS)).text)
                scrapes = [samples((await client.get(METRICS)).text) for _ in range(8)]
    finally:
        assert server.stop() == 0
    counters = {name for name, kind, *_ in ACTOR_METRICS if kind == COUNTER}
    for each in (scrape, *scrapes):
        assert not [key for key in each if key[0] in counters and key[1]], "a counter has labels"
        assert value(each, "flashflow_ledger_committed_total") == len(buyers)
        assert value(each, "flashflow_gate_requests_total") == len(buyers)
        assert value(each, "flashflow_limiter_checked_total") == len(buyers)
        assert value(each, "flashflow_purchases_total", outcome="CONFIRMED") == len(buyers)
        assert value(each, "flashflow_sale_remaining_stock", sale_id=str(sale.id)) == 30
        assert value(each, "flashflow_build_info", version=version("flashflow")) == 1
        assert value(each, "process_cpu_seconds_total") > 0
        assert not [key for key in each if any(label == "pid" for label, _ in key[1])]
