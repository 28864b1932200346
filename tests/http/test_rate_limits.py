"""Rate limits: per user id and per client address, shared through Redis."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import trio

from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import ledger_of, live_server, make_sale


async def test_answers_from_memory_spend_no_tokens(settings):
    """Once a sale is known sold out, presses past the burst still get 409 SOLD_OUT, not 429."""
    settings = replace(settings, rate_user_per_s=0.5, rate_user_burst=2)
    await make_sale(settings.database_url, stock=0)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(CURRENT_PURCHASE, json={"userId": "spammer"})
                       for _ in range(10)]
    assert [a.status_code for a in answers] == [409] * 10
    assert {a.json()["error"]["code"] for a in answers} == {"SOLD_OUT"}


async def test_user_over_its_burst_gets_429_with_retry_after(settings):
    """Past its burst a user gets 429 with Retry-After; nothing is written for it."""
    settings = replace(settings, rate_user_per_s=0.5, rate_user_burst=2)
    sale = await make_sale(settings.database_url, stock=100)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            # Six presses race before the first one commits, so each one spends a token.
            async with trio.open_nursery() as nursery:
                answers = []

                async def press() -> None:
                    answers.append(await server.client.post(CURRENT_PURCHASE,
                                                            json={"userId": "racer"}))

                for _ in range(6):
                    nursery.start_soon(press)
    codes = sorted(a.status_code for a in answers)
    limited = [a for a in answers if a.status_code == 429]
    assert limited, codes
    assert set(codes) <= {201, 409, 429}
    for answer in limited:
        assert answer.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(answer.headers["Retry-After"]) >= 1
    assert list((await ledger_of(settings, sale.id)).purchases) == ["racer"]


async def test_address_limit_applies_across_users(settings):
    """Many users from one address past the address burst get 429."""
    settings = replace(settings, rate_address_per_s=0.5, rate_address_burst=3)
    sale = await make_sale(settings.database_url, stock=100)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(CURRENT_PURCHASE, json={"userId": f"crowd-{i}"})
                       for i in range(6)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429, 429]
    assert len((await ledger_of(settings, sale.id)).purchases) == 3


def from_address(i: int) -> dict[str, str]:
    """Headers making the (trusted) loopback proxy forward for client ``i``."""
    return {"X-Forwarded-For": f"198.51.100.{i}"}


async def test_a_request_the_address_refuses_spends_no_user_token(settings):
    """Refused by its address's bucket, a user keeps its token for a request from elsewhere."""
    settings = replace(settings, rate_address_per_s=0.01, rate_address_burst=1,
                       rate_user_per_s=0.01, rate_user_burst=1,
                       trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    await make_sale(settings.database_url, stock=10)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(CURRENT_PURCHASE, json={"userId": "first"},
                                             headers=from_address(1))
            refused = await server.client.post(CURRENT_PURCHASE, json={"userId": "second"},
                                               headers=from_address(1))
            elsewhere = await server.client.post(CURRENT_PURCHASE, json={"userId": "second"},
                                                 headers=from_address(2))
    assert [first.status_code, refused.status_code, elsewhere.status_code] == [201, 429, 201]


async def test_status_reads_are_limited_and_a_user_refusal_spends_no_address_token(settings):
    """Status reads spend tokens; one refused by the user's bucket spends no address token."""
    settings = replace(settings, rate_address_per_s=0.01, rate_address_burst=2,
                       rate_user_per_s=0.01, rate_user_burst=1)
    await make_sale(settings.database_url, stock=10)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            read = await server.client.get(CURRENT_PURCHASE, params={"userId": "reader"})
            again = await server.client.get(CURRENT_PURCHASE, params={"userId": "reader"})
            buy = await server.client.post(CURRENT_PURCHASE, json={"userId": "buyer"})
            over = await server.client.post(CURRENT_PURCHASE, json={"userId": "late"})
    assert [read.status_code, again.status_code, buy.status_code, over.status_code] == [
        200, 429, 201, 429]
    assert again.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
