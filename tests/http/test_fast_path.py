"""The fast path answers as Quart does: the same status, headers and body, request by request."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace

import pytest
import trio

from flashflow.http.fast import route_of, takes
from flashflow.http.wire import (
    CURRENT,
    CURRENT_EVENTS,
    CURRENT_PURCHASE,
    HEALTHZ,
    READYZ,
    SALE,
    SALE_PURCHASE,
    SALES,
    purchase_path,
    sale_path,
)
from flashflow.tokens import mint

from ..helpers import live_fronts, make_sale
from .test_auth import SECRET, signed

JSON = {"Content-Type": "application/json"}
#: Headers that differ between any two answers: when, and by whom.
VOLATILE_HEADERS = {"date", "server"}
#: Headers present on both answers, with values that differ between any two.
FRESH_HEADERS = {"x-correlation-id"}
#: Body fields that differ between any two answers of the same kind.
VOLATILE = re.compile(r'"(correlationId|purchaseId|purchasedAt|serverTime)": "[^"]*"')


def seen(response) -> tuple[int, list[tuple[str, str]], str]:
    """What a client sees of an answer, less what differs between any two answers."""
    headers = sorted((name.lower(), "-" if name.lower() in FRESH_HEADERS else value)
                     for name, value in response.headers.multi_items()
                     if name.lower() not in VOLATILE_HEADERS)
    return response.status_code, headers, VOLATILE.sub(r'"\1": "-"', response.text)


async def both(fast, quart, method: str, path: str, *, body: bytes | None = None,
               headers: dict[str, str] | None = None, users: tuple[str, str] | None = None):
    """Send one request to each front (``users``: the userId each one names) and return both
    answers as seen."""
    answers = []
    for server, user in zip((fast, quart), users or (None, None), strict=True):
        content = body if user is None else f'{{"userId": "{user}"}}'.encode()
        response = await server.client.request(method, path, content=content,
                                               headers=headers or {})
        answers.append(seen(response))
    if users is not None:  # the bodies name their own user: say the same one for both
        answers[1] = (*answers[1][:2], answers[1][2].replace(users[1], users[0]))
    return answers


@pytest.fixture
def fronts(settings):
    """The same settings served with the fast path and without it."""
    return replace(settings, fast_path=True), replace(settings, fast_path=False)


async def test_the_fast_path_answers_every_request_as_quart_does(settings, fronts):
    """Purchases, repeats, sold out, bad bodies and ids, 415s and the GETs: the same answers."""
    current = await make_sale(settings.database_url, stock=100, product="Phone")
    gone = await make_sale(settings.database_url, stock=1, product="Rare")
    with trio.fail_after(60):
        async with live_fronts(settings, fronts) as (fast, quart):
            await fast.client.post(purchase_path(gone.id),
                                   json={"userId": "first-buyer"})
            by_id = sale_path(current.id)
            table = {
                "201": ("POST", CURRENT_PURCHASE, None, JSON, ("buyer-f", "buyer-q")),
                "repeat": ("POST", CURRENT_PURCHASE, None, JSON, ("buyer-f", "buyer-q")),
                "by id": ("POST", purchase_path(current.id), None, JSON, ("other-f", "other-q")),
                "sold out": ("POST", purchase_path(gone.id), None, JSON,
                             ("late-f", "late-q")),
                "bad JSON": ("POST", CURRENT_PURCHASE, b'{"userId": ', JSON, None),
                "no userId": ("POST", CURRENT_PURCHASE, b"{}", JSON, None),
                "control char": ("POST", CURRENT_PURCHASE, b'{"userId": "ab\\u0000c"}', JSON, None),
                "too short": ("POST", CURRENT_PURCHASE, b'{"userId": "ab"}', JSON, None),
                "not an object": ("POST", CURRENT_PURCHASE, b"[]", JSON, None),
                "empty body": ("POST", CURRENT_PURCHASE, b"", JSON, None),
                "charset": ("POST", CURRENT_PURCHASE, None,
                            {"Content-Type": "application/json; charset=utf-8"},
                            ("charset-f", "charset-q")),
                "text/plain": ("POST", CURRENT_PURCHASE, b'{"userId": "plain-text"}',
                               {"Content-Type": "text/plain"}, None),
                "unknown sale": ("POST", purchase_path(uuid.uuid4()),
                                 b'{"userId": "nobody"}', JSON, None),
                "malformed id": ("POST", purchase_path("not-a-uuid"),
                                 b'{"userId": "nobody"}', JSON, None),
                "GET current": ("GET", CURRENT, None, None, None),
                "GET by id": ("GET", by_id, None, None, None),
                "GET unknown id": ("GET", sale_path(uuid.uuid4()), None, None,
                                   None),
                "GET malformed id": ("GET", sale_path("42"), None, None, None),
                "healthz": ("GET", HEALTHZ, None, None, None),
                "wrong method": ("POST", CURRENT, b"{}", JSON, None),
            }
            for name, (method, path, body, headers, users) in table.items():
                fast_seen, quart_seen = await both(fast, quart, method, path, body=body,
                                                   headers=headers, users=users)
                assert fast_seen == quart_seen, name


async def test_with_auth_on_the_fast_path_refuses_as_quart_does(settings, fronts):
    """No token, a forged one, a sub that is not the body's user, and a good one: alike."""
    on = {"auth_jwt_secret": SECRET, "auth_jwt_issuer": "https://id.example",
          "auth_jwt_audience": "flashflow"}
    settings = replace(settings, **on)
    fronts = tuple(replace(front, **on) for front in fronts)
    await make_sale(settings.database_url, stock=100)
    forged = signed({"sub": "alice", "exp": 2**40})[:-4] + "AAAA"
    table = {
        "no token": ({}, b'{"userId": "alice"}', None),
        "two tokens": ({"Authorization": f"Bearer {mint(settings, 'alice')}, Bearer x"},
                       b"{}", None),
        "forged": ({"Authorization": f"Bearer {forged}"}, b"{}", None),
        "basic": ({"Authorization": "Basic YWxpY2U6eA=="}, b"{}", None),
        "sub mismatch": ({"Authorization": f"Bearer {mint(settings, 'alice')}"},
                         b'{"userId": "mallory"}', None),
    }
    with trio.fail_after(60):
        async with live_fronts(settings, fronts) as (fast, quart):
            for name, (headers, body, users) in table.items():
                fast_seen, quart_seen = await both(fast, quart, "POST", CURRENT_PURCHASE, body=body,
                                                   headers={**JSON, **headers}, users=users)
                assert fast_seen == quart_seen, name
                assert fast_seen[0] in (401, 403), name
            for user in ("token-f", "token-q"):
                server = fast if user.endswith("f") else quart
                bought = await server.client.post(CURRENT_PURCHASE, content=b"{}", headers={
                    **JSON, "Authorization": f"Bearer {mint(settings, user)}"})
                assert bought.status_code == 201 and bought.json()["data"]["userId"] == user


async def test_with_cors_on_answers_say_vary_and_origins_go_to_quart(settings, fronts):
    """With CORS on, fast answers carry Vary: Origin as Quart's do, and a listed origin
    gets its CORS headers either way."""
    origin = "https://shop.example"
    settings = replace(settings, cors_origins=(origin,))
    fronts = tuple(replace(front, cors_origins=(origin,)) for front in fronts)
    await make_sale(settings.database_url, stock=100)
    with trio.fail_after(60):
        async with live_fronts(settings, fronts) as (fast, quart):
            for headers in ({}, {"Origin": origin}, {"Origin": "https://evil.example"}):
                for method, path, users in (("GET", CURRENT, None),
                                            ("POST", CURRENT_PURCHASE, ("vary-f", "vary-q"))):
                    users = users and tuple(f"{u}{len(headers)}{len(str(headers))}"
                                            for u in users)
                    fast_seen, quart_seen = await both(fast, quart, method, path,
                                                       headers={**JSON, **headers},
                                                       users=users)
                    assert fast_seen == quart_seen, (method, headers)
                    assert ("vary", "Origin") in fast_seen[1]


@pytest.mark.parametrize(("method", "path", "rule"), [
    ("GET", HEALTHZ, HEALTHZ),
    ("GET", CURRENT, CURRENT),
    ("GET", sale_path("abc"), SALE),
    ("POST", CURRENT_PURCHASE, CURRENT_PURCHASE),
    ("POST", purchase_path("abc"), SALE_PURCHASE),
    ("HEAD", HEALTHZ, None),
    ("OPTIONS", CURRENT_PURCHASE, None),
    ("POST", CURRENT, None),
    ("GET", CURRENT_PURCHASE, None),
    ("GET", SALES, None),
    ("GET", f"{SALES}/", None),
    ("GET", f"{CURRENT}/", None),
    ("GET", CURRENT_EVENTS, None),
    ("POST", purchase_path(""), None),
    ("POST", f"{CURRENT_PURCHASE}/", None),
    ("GET", READYZ, None),
])
def test_the_fast_path_takes_only_the_hot_routes(method, path, rule):
    """Only the hot routes' methods and paths are taken, by the rule Quart counts them under."""
    route = route_of(method, path)
    assert (route.rule if route is not None else None) == rule


@pytest.mark.parametrize(("headers", "purchase", "taken"), [
    ([(b"content-type", b"application/json"), (b"content-length", b"20")], True, True),
    ([(b"content-type", b"Application/JSON; charset=utf-8"), (b"content-length", b"2")], True,
     True),
    ([(b"content-type", b"application/json"), (b"content-length", b"0")], True, True),
    ([(b"content-type", b"application/json"), (b"content-length", b"4097")], True, False),
    ([(b"content-type", b"application/json")], True, False),
    ([(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")], True, False),
    ([(b"content-type", b"text/plain"), (b"content-length", b"20")], True, False),
    ([(b"content-type", b"application/json"), (b"content-type", b"application/json"),
      (b"content-length", b"20")], True, False),
    ([(b"content-type", b"application/json"), (b"content-length", b"20"), (b"origin", b"x")],
     True, True),
    ([], False, True),
    ([(b"content-length", b"0")], False, True),
    ([(b"content-length", b"3")], False, False),
])
def test_the_fast_path_leaves_odd_bodies_to_quart(headers, purchase, taken):
    """Chunked, oversized, missing, doubled or non-JSON bodies (and a GET's body) go to Quart."""
    assert takes(headers, purchase, 4096, cors=False) is taken


def test_with_cors_on_a_request_with_an_origin_goes_to_quart():
    """While CORS is on, any Origin is Quart's to answer; without one, the fast path's."""
    assert takes([(b"origin", b"https://shop.example")], False, 4096, cors=True) is False
    assert takes([(b"host", b"x")], False, 4096, cors=True) is True
