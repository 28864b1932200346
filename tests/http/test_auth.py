"""Bearer-token buyers against a live server: who may buy, who may read, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, HEALTHZ, METRICS, OPENAPI, READYZ
from flashflow.tokens import mint

from ..helpers import assert_error, gate_keys, live_server, make_sale, redis_client
from .test_errors_and_status import purchase_rows

SECRET = "test-secret-for-hs256-0123456789abcdef"
CHALLENGE = 'Bearer error="invalid_token"'


def bearer(token: str) -> dict[str, str]:
    """The Authorization header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    """Unpadded base64url, as JWT segments are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", **extra) -> dict:
    """Claims valid for an hour, with ``extra`` added or (as None) removed."""
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + 3600, **extra}
    return {k: v for k, v in body.items() if v is not None}


def hs256_with(key: bytes, payload: dict) -> str:
    """An HS256 token signed by hand with any bytes as the key (PyJWT refuses PEM keys)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


@pytest.fixture
def hs_settings(settings):
    """Settings with an HS256 secret, an issuer and an audience."""
    return replace(settings, auth_jwt_secret=SECRET, auth_jwt_issuer="https://id.example",
                   auth_jwt_audience="flashflow", auth_jwt_leeway_s=0)


def signed(payload: dict) -> str:
    """A token for ``payload`` with the test secret, the issuer and the audience."""
    return jwt.encode({"iss": "https://id.example", "aud": "flashflow", **payload}, SECRET,
                      algorithm="HS256")


async def test_the_token_names_the_buyer_and_the_body_may_omit_it(hs_settings):
    """With a valid token the purchase is the token's sub's; a body userId, if any, must match."""
    await make_sale(hs_settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            alice = await server.client.post(CURRENT_PURCHASE, json={},
                                             headers=bearer(mint(hs_settings, "alice")))
            bob = await server.client.post(CURRENT_PURCHASE, json={"userId": " bob "},
                                           headers=bearer(mint(hs_settings, "bob")))
    assert alice.status_code == 201 and alice.json()["data"]["userId"] == "alice", alice.text
    assert bob.status_code == 201 and bob.json()["data"]["userId"] == "bob", bob.text
    assert sorted(r["user_id"] for r in await purchase_rows(hs_settings)) == ["alice", "bob"]


async def test_a_body_naming_another_user_is_403_and_buys_nothing(hs_settings):
    """A signed-in buyer naming another userId in the body is 403 FORBIDDEN; nothing is sold."""
    sale = await make_sale(hs_settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            response = await server.client.post(CURRENT_PURCHASE, json={"userId": "mallory"},
                                                headers=bearer(mint(hs_settings, "alice")))
    assert_error(response, 403, "FORBIDDEN")
    assert await purchase_rows(hs_settings) == []
    assert redis_client(hs_settings).hlen(gate_keys(hs_settings, sale.id)[1]) == 0


REFUSED_TOKENS = {
    "no-header": None,
    "bare-scheme": "Bearer",
    "two-words": "Bearer abc def",
    "basic-scheme": "Basic YWxpY2U6c2VjcmV0",
    "not-a-jwt": "Bearer not.a.token",
    "forged-signature": "Bearer " + jwt.encode(claims(iss="https://id.example", aud="flashflow"),
                                               "another-secret-of-the-same-length-000",
                                               algorithm="HS256"),
    "alg-none": "Bearer " + jwt.encode(claims(iss="https://id.example", aud="flashflow"), None,
                                       algorithm="none"),
    "expired": "Bearer " + signed(claims(exp=int(time.time()) - 60)),
    "not-yet-valid": "Bearer " + signed(claims(nbf=int(time.time()) + 3600)),
    "wrong-audience": "Bearer " + jwt.encode(claims(iss="https://id.example", aud="other"),
                                             SECRET, algorithm="HS256"),
    "wrong-issuer": "Bearer " + jwt.encode(claims(iss="https://evil.example", aud="flashflow"),
                                           SECRET, algorithm="HS256"),
    "no-exp": "Bearer " + signed(claims(exp=None)),
    "no-sub": "Bearer " + signed(claims(sub=None)),
    "sub-with-bidi-override": "Bearer " + signed(claims(sub="\u202eadmin")),
}


@pytest.mark.parametrize("authorization", list(REFUSED_TOKENS.values()),
                         ids=list(REFUSED_TOKENS))
async def test_a_missing_or_invalid_token_is_401_with_a_challenge(hs_settings, authorization):
    """No, malformed, forged, alg-none, expired, early or misaddressed tokens are 401, unsold."""
    await make_sale(hs_settings.database_url, stock=5)
    headers = {"Authorization": authorization} if authorization else {}
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            post = await server.client.post(CURRENT_PURCHASE, json={"userId": "alice"},
                                            headers=headers)
            read = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"},
                                           headers=headers)
    for response in (post, read):
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert await purchase_rows(hs_settings) == []


async def test_two_authorization_headers_are_401(hs_settings):
    """A request with two Authorization headers, even two valid ones, is 401."""
    await make_sale(hs_settings.database_url, stock=5)
    token = mint(hs_settings, "alice")
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, json={}, headers=[("Authorization", f"Bearer {token}"),
                                                    ("Authorization", f"Bearer {token}")])
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert await purchase_rows(hs_settings) == []


async def test_the_status_read_answers_for_the_token_s_sub_only(hs_settings):
    """GET .../purchase reads the token's sub's purchase; another user's userId is 403."""
    await make_sale(hs_settings.database_url, stock=5)
    alice, bob = bearer(mint(hs_settings, "alice")), bearer(mint(hs_settings, "bob"))
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            bought = await server.client.post(CURRENT_PURCHASE, json={}, headers=alice)
            own = await server.client.get(CURRENT_PURCHASE, headers=alice)
            named = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"},
                                            headers=alice)
            other = await server.client.get(CURRENT_PURCHASE, params={"userId": "alice"},
                                            headers=bob)
            bobs = await server.client.get(CURRENT_PURCHASE, headers=bob)
    purchase_id = bought.json()["data"]["purchaseId"]
    assert own.json()["data"]["purchaseId"] == purchase_id
    assert named.json()["data"]["purchaseId"] == purchase_id
    assert_error(other, 403, "FORBIDDEN")
    assert bobs.json()["data"] == {"purchased": False}


async def test_public_routes_stay_public_with_auth_on(hs_settings):
    """The current sale, health, readiness, the page and the OpenAPI need no token."""
    await make_sale(hs_settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(hs_settings) as server:
            answers = [await server.client.get(path) for path in (
                CURRENT, HEALTHZ, READYZ, "/", OPENAPI)]
    assert [a.status_code for a in answers] == [200] * 5
    doc = answers[-1].json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"][CURRENT_PURCHASE]["post"]["security"] == [{"bearer": []}]


def write_public_key(private_key, path: Path) -> Path:
    """Write the PEM of ``private_key``'s public half to ``path``."""
    path.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


async def test_rs256_key_accepts_rs256_and_refuses_hs256_signed_with_the_key(settings, tmp_path):
    """With an RSA key, an RS256 token buys; an HS256 token keyed with the PEM is 401."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_path = write_public_key(private, tmp_path / "rsa.pem")
    settings = replace(settings, auth_jwt_public_key_file=pem_path)
    await make_sale(settings.database_url, stock=5)
    good = jwt.encode(claims("alice"), private, algorithm="RS256")
    confused = hs256_with(pem_path.read_bytes(), claims("mallory"))
    with trio.fail_after(30):
        async with live_server(settings) as server:
            bought = await server.client.post(CURRENT_PURCHASE, json={}, headers=bearer(good))
            refused = await server.client.post(CURRENT_PURCHASE, json={}, headers=bearer(confused))
    assert bought.status_code == 201, bought.text
    assert_error(refused, 401, "UNAUTHORIZED")
    assert [r["user_id"] for r in await purchase_rows(settings)] == ["alice"]


async def test_es256_key_accepts_es256_and_refuses_rs256(settings, tmp_path):
    """With a P-256 key only ES256 passes; an RS256 token from another key is 401."""
    private = ec.generate_private_key(ec.SECP256R1())
    settings = replace(settings,
                       auth_jwt_public_key_file=write_public_key(private, tmp_path / "ec.pem"))
    await make_sale(settings.database_url, stock=5)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            bought = await server.client.post(
                CURRENT_PURCHASE, json={}, headers=bearer(jwt.encode(claims("alice"), private,
                                                                     algorithm="ES256")))
            refused = await server.client.post(
                CURRENT_PURCHASE, json={}, headers=bearer(jwt.encode(claims("bob"), rsa_key,
                                                                     algorithm="RS256")))
    assert bought.status_code == 201, bought.text
    assert_error(refused, 401, "UNAUTHORIZED")


async def test_metrics_token_guards_the_scrape(settings):
    """With FLASHFLOW_METRICS_TOKEN set, /metrics needs that bearer token; others are 401."""
    settings = replace(settings, metrics_token="scrape-me")
    with trio.fail_after(30):
        async with live_server(settings) as server:
            bare = await server.client.get(METRICS)
            wrong = await server.client.get(METRICS, headers=bearer("nope"))
            right = await server.client.get(METRICS, headers=bearer("scrape-me"))
    assert_error(bare, 401, "UNAUTHORIZED")
    assert_error(wrong, 401, "UNAUTHORIZED")
    assert right.status_code == 200 and "flashflow_http_requests_total" in right.text
