"""Status codes other than 400: 404, 405, 409, 413, 500, 503, the status read and health checks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import trio

from flashflow.http import errors
from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, HEALTHZ, READYZ, SALES
from flashflow.logs import LineBudget

from ..helpers import (
    FakeClock,
    assert_error,
    fetch,
    gate_keys,
    live_server,
    make_sale,
    pg,
    redis_client,
)


async def purchase_rows(settings) -> list:
    """Every purchase row in the test's database."""
    return await pg(settings.database_url, fetch, "SELECT user_id FROM purchases")


async def test_body_over_the_limit_is_413_and_writes_nothing(settings):
    """A 10 KiB purchase body is 413 PAYLOAD_TOO_LARGE in the envelope and buys nothing."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, json={"userId": "alice", "pad": "x" * 10 * 1024})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await purchase_rows(settings) == []
    assert redis_client(settings).hlen(gate_keys(settings, sale.id)[1]) == 0


async def test_no_sale_is_404_sale_not_found(settings):
    """With no sale scheduled, the current sale, a purchase and a status read are 404."""
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.get(CURRENT),
                       await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"}),
                       await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"})]
    for response in answers:
        assert_error(response, 404, "SALE_NOT_FOUND")
    assert await purchase_rows(settings) == []


async def test_unknown_path_and_wrong_method_use_the_envelope(settings):
    """An unknown path is 404 NOT_FOUND; a wrong method is 405 in the envelope, with an
    ``Allow`` header naming the methods the path accepts (hot routes and Quart's alike)."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            missing = await server.client.get("/api/v1/no-such-thing")
            put = await server.client.put(CURRENT_PURCHASE, json={"userId": "alice"})
            delete = await server.client.delete(CURRENT)
            post_health = await server.client.post(HEALTHZ)
            put_sales = await server.client.put(SALES)
    assert_error(missing, 404, "NOT_FOUND")
    assert "allow" not in missing.headers
    for response, allowed in [(put, "DELETE, GET, HEAD, POST"), (delete, "GET, HEAD"),
                              (post_health, "GET, HEAD"), (put_sales, "GET, HEAD")]:
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers.get_list("allow") == [allowed], response.request
    assert await purchase_rows(settings) == []


async def test_status_read_reports_the_purchase_or_its_absence(settings):
    """GET .../purchase?userId= is true with the same purchase id for a buyer, else false."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            before = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"})
            bought = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            after = await server.client.get(CURRENT_PURCHASE, params={"userId": "  alice "})
            other = await server.client.get(CURRENT_PURCHASE, params={"userId": "bob-the-builder"})
    assert before.status_code == 200 and before.json() == {"data": {"purchased": False}}
    assert other.json() == {"data": {"purchased": False}}
    assert after.status_code == 200
    confirmed = bought.json()["data"]
    assert after.json()["data"] == {"purchased": True, "purchaseId": confirmed["purchaseId"],
                                    "purchasedAt": confirmed["purchasedAt"]}


async def test_ended_sale_is_409_sale_not_active_and_writes_nothing(settings):
    """A purchase after the end is 409 SALE_NOT_ACTIVE saying it ended, and nothing is written."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(hours=-2),
                           lasts=timedelta(hours=1))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            late = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            current = await server.client.get(CURRENT)
    assert "ended" in assert_error(late, 409, "SALE_NOT_ACTIVE")["message"]
    assert current.json()["data"]["status"] == "ended"
    assert await purchase_rows(settings) == []
    assert redis_client(settings).hlen(gate_keys(settings, sale.id)[1]) == 0


async def test_current_sale_body_has_every_field_and_the_server_time(settings):
    """GET /current returns the sale's fields, remaining stock and the clock's time in ISO UTC."""
    # Near the real time: the ledger commits only inside the window by PostgreSQL's clock.
    clock = FakeClock(datetime.now(UTC).replace(microsecond=891234))
    sale = await make_sale(settings.database_url, stock=7, product="Console", now=clock.now,
                           starts_in=timedelta(minutes=-10), lasts=timedelta(minutes=30))
    with trio.fail_after(30):
        async with live_server(settings, clock=clock) as server:
            await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            clock.advance(timedelta(seconds=1))
            response = await server.client.get(CURRENT)
    assert response.status_code == 200
    assert response.json() == {"data": {
        "id": str(sale.id),
        "productName": "Console",
        "totalStock": 7,
        "remainingStock": 6,
        "startTime": millis_z(clock.now - timedelta(minutes=10, seconds=1)),
        "endTime": millis_z(clock.now + timedelta(minutes=20, seconds=-1)),
        "status": "active",
        "serverTime": millis_z(clock.now),
    }}


def millis_z(moment: datetime) -> str:
    """``2031-03-04T05:06:07.891Z``: milliseconds, UTC, a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def test_health_and_readiness_are_200_when_everything_answers(settings):
    """/healthz and /readyz are 200 once Redis, PostgreSQL and the gate are ready."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            health = await server.client.get(HEALTHZ)
            ready = await server.client.get(READYZ)
    assert health.status_code == 200 and health.json() == {"data": {"status": "ok"}}
    assert ready.status_code == 200
    assert ready.json() == {"data": {"ready": True,
                                     "checks": {"redis": True, "postgres": True, "gate": True}}}


async def test_readiness_is_503_while_the_gate_is_not_loaded(settings):
    """/readyz is 503 when the current sale's gate is missing from Redis."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            redis_client(settings).delete(*gate_keys(settings, sale.id))
            ready = await server.client.get(READYZ)
    assert ready.status_code == 503
    assert ready.json()["data"] == {"ready": False,
                                    "checks": {"redis": True, "postgres": True, "gate": False}}


async def test_backend_failure_is_503_with_retry_after_and_writes_nothing(settings):
    """A Redis failure during a purchase is 503 UNAVAILABLE with Retry-After, and no row."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            redis_client(settings).set(gate_keys(settings, sale.id)[0], "garbage")
            response = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"})
    assert_error(response, 503, "UNAVAILABLE")
    assert response.headers["retry-after"] == str(settings.retry_after_s)
    assert await purchase_rows(settings) == []


async def test_unexpected_error_is_500_without_a_traceback(settings):
    """An unexpected server error is 500 INTERNAL_ERROR with a generic message."""
    sale = await make_sale(settings.database_url, stock=5)
    # Before the server starts, so the stock feed has never heard a good value to answer from.
    redis_client(settings).set(gate_keys(settings, sale.id)[0], "garbage")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.get(CURRENT)
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert error["message"] == "An unexpected error occurred."
    assert "Traceback" not in response.text and "garbage" not in response.text


async def test_a_500_is_logged_once_with_its_traceback_and_correlation_id(settings, caplog):
    """The log line of a 500 carries the traceback and the correlation id the client got."""
    sale = await make_sale(settings.database_url, stock=5)
    redis_client(settings).set(gate_keys(settings, sale.id)[0], "garbage")
    with trio.fail_after(30), caplog.at_level(logging.DEBUG, logger="flashflow.http"):
        async with live_server(settings) as server:
            response = await server.client.get(CURRENT)
    error = assert_error(response, 500, "INTERNAL_ERROR")
    (line,) = [r for r in caplog.records if r.name == "flashflow.http" and r.levelno >= 30]
    assert line.levelno == logging.ERROR
    assert line.correlation_id == error["correlationId"]
    assert line.exc_info is not None and line.exc_info[1] is not None


@pytest.fixture
def fresh_budget(monkeypatch) -> LineBudget:
    """A full line budget for client faults, as a process starts with."""
    budget = LineBudget(per_s=10.0, burst=20)
    monkeypatch.setattr(errors, "CLIENT_FAULT_LINES", budget)
    return budget


async def test_client_faults_are_logged_at_info_and_lost_sales_at_debug(settings, caplog,
                                                                        fresh_budget):
    """400, 405, 413 and 415 are INFO lines with the client's correlation id; a 409 is DEBUG."""
    await make_sale(settings.database_url, stock=5)
    json = {"Content-Type": "application/json"}
    with trio.fail_after(30), caplog.at_level(logging.DEBUG, logger="flashflow.http"):
        async with live_server(settings) as server:
            client = server.client
            first = await client.post(CURRENT_PURCHASE, json={"userId": "alice"})
            assert first.status_code == 201
            answers = {
                409: await client.post(CURRENT_PURCHASE, json={"userId": "alice"}),
                400: await client.post(CURRENT_PURCHASE, content=b'{"userId": ', headers=json),
                405: await client.put(CURRENT_PURCHASE, json={"userId": "alice"}),
                413: await client.post(CURRENT_PURCHASE, json={"userId": "a", "pad": "x" * 10240}),
                415: await client.post(CURRENT_PURCHASE, content=b'{"userId": "alice"}',
                                       headers={"Content-Type": "text/plain"}),
            }
    lines = {r.correlation_id: r for r in caplog.records if hasattr(r, "correlation_id")}
    for status, response in answers.items():
        line = lines[response.headers["x-correlation-id"]]
        assert line.getMessage().startswith(f"{status} "), line.getMessage()
        assert line.levelno == (logging.DEBUG if status == 409 else logging.INFO), status


@pytest.mark.parametrize(("status", "level"), [
    (400, logging.INFO), (401, logging.INFO), (403, logging.INFO), (413, logging.INFO),
    (415, logging.INFO), (404, logging.DEBUG), (409, logging.DEBUG), (429, logging.DEBUG),
    (503, logging.WARNING), (500, logging.ERROR)])
def test_each_status_is_logged_at_its_level(status, level, caplog, fresh_budget):
    """The one table of levels: sale outcomes DEBUG, client faults INFO, server errors above."""
    with caplog.at_level(logging.DEBUG, logger="flashflow.http"):
        errors.report(status, "CODE", "message", "c-1")
    (line,) = caplog.records
    assert (line.levelno, line.correlation_id, line.error_code) == (level, "c-1", "CODE")


def test_a_flood_of_client_faults_is_held_to_the_budget(caplog, monkeypatch):
    """1,000 bad requests at once write the burst, then one line counting the rest."""
    now = [0.0]
    fresh_budget = LineBudget(per_s=10.0, burst=20, clock=lambda: now[0])
    monkeypatch.setattr(errors, "CLIENT_FAULT_LINES", fresh_budget)
    with caplog.at_level(logging.INFO, logger="flashflow.http"):
        for _ in range(1000):
            errors.report(400, "VALIDATION_ERROR", "bad", "c-1")
        assert len(caplog.records) == fresh_budget.burst
        now[0] = 1.0
        errors.report(400, "VALIDATION_ERROR", "bad", "c-2")
    assert caplog.records[-2].suppressed == 1000 - fresh_budget.burst
    assert caplog.records[-1].correlation_id == "c-2"
