"""Every 400 VALIDATION_ERROR of the purchase API, and that a rejected request writes nothing."""

from __future__ import annotations

import json

import pytest
import trio

from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import assert_error, gate_keys, ledger_of, live_server, make_sale, redis_client


async def assert_nothing_written(settings, sale, stock: int) -> None:
    """No purchase row, no buyer in Redis, and the gate's stock untouched."""
    assert (await ledger_of(settings, sale.id)).purchases == {}
    stock_key, buyers_key = gate_keys(settings, sale.id)
    r = redis_client(settings)
    assert r.hlen(buyers_key) == 0
    assert r.get(stock_key) == str(stock)


def body(payload) -> bytes:
    """A JSON body, built without Python's escaping of non-ASCII characters."""
    return json.dumps(payload, ensure_ascii=False).encode()


BAD_BODIES = [
    ("bad-json", b"{not json", "valid JSON"),
    ("empty-body", b"", "valid JSON"),
    ("invalid-utf8", b'{"userId": "\xff\xfe"}', "valid JSON"),
    ("too-deep", b"[" * 4000, "valid JSON"),
    ("json-array", b'["alice"]', "JSON object"),
    ("json-null", b"null", "JSON object"),
    ("json-string", b'"alice"', "JSON object"),
    ("missing", body({}), "required"),
    ("other-field", body({"user_id": "alice"}), "required"),
    ("null", body({"userId": None}), "required"),
    ("number", body({"userId": 12345}), "string"),
    ("boolean", body({"userId": True}), "string"),
    ("list", body({"userId": ["alice"]}), "string"),
    ("empty", body({"userId": ""}), "empty"),
    ("whitespace", body({"userId": " \t\n "}), "empty"),
    ("two-chars", body({"userId": "ab"}), "at least 3"),
    ("two-chars-padded", body({"userId": "  ab  "}), "at least 3"),
    ("256-chars", body({"userId": "a" * 256}), "at most 255"),
    ("nul", body({"userId": "ali\x00ce"}), "control"),
    ("newline-inside", body({"userId": "ali\nce"}), "control"),
    ("escape", body({"userId": "ali\x1bce"}), "control"),
    ("delete", body({"userId": "ali\x7fce"}), "control"),
    ("next-line-u0085", body({"userId": "ali\u0085ce"}), "control"),
    ("line-separator-Zl", body({"userId": "ali\u2028ce"}), "line separator"),
    ("paragraph-separator-Zp", body({"userId": "ali\u2029ce"}), "paragraph separator"),
    ("bidi-override-Cf", body({"userId": "\u202eadmin"}), "invisible formatting"),
    ("zero-width-only-Cf", body({"userId": "\u200b\u200c\u200d"}), "invisible formatting"),
    ("zero-width-inside-Cf", body({"userId": "ad\u200bmin"}), "invisible formatting"),
    ("bom-Cf", body({"userId": "\ufeffadmin"}), "invisible formatting"),
    ("private-use-Co", body({"userId": "adm\ue000in"}), "private-use"),
    ("unassigned-Cn", body({"userId": "adm\u0378in"}), "unassigned"),
    ("noncharacter-Cn", body({"userId": "adm\uffffin"}), "unassigned"),
    ("lone-surrogate-Cs", b'{"userId": "adm\\ud800in"}', "valid JSON"),
]


@pytest.mark.parametrize(("content", "needle"), [c[1:] for c in BAD_BODIES],
                         ids=[c[0] for c in BAD_BODIES])
async def test_bad_purchase_body_is_400_and_writes_nothing(settings, content, needle):
    """A malformed purchase request is 400 VALIDATION_ERROR saying why, and nothing is written."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.post(
                CURRENT_PURCHASE, content=content, headers={"content-type": "application/json"})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert needle in error["message"]
    await assert_nothing_written(settings, sale, 5)


async def test_user_id_length_boundaries_are_accepted(settings):
    """User ids of exactly 3 and 255 characters (after trimming) are accepted."""
    sale = await make_sale(settings.database_url, stock=5)
    ids = ["abc", "  xyz  ", "b" * 255, "ünï"]
    with trio.fail_after(30):
        async with live_server(settings) as server:
            answers = [await server.client.post(CURRENT_PURCHASE, json={"userId": u}) for u in ids]
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert [a.json()["data"]["userId"] for a in answers] == ["abc", "xyz", "b" * 255, "ünï"]
    rows = (await ledger_of(settings, sale.id)).purchases
    assert sorted(rows) == sorted(["abc", "xyz", "b" * 255, "ünï"])


async def test_user_ids_are_nfc_normalised(settings):
    """A decomposed id is stored composed, so its composed twin is the same buyer."""
    await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            first = await server.client.post(CURRENT_PURCHASE, json={"userId": "jose\u0301"})
            twin = await server.client.post(CURRENT_PURCHASE, json={"userId": "jos\u00e9"})
            read = await server.client.get(CURRENT_PURCHASE, params={"userId": "jose\u0301"})
    assert first.status_code == 201 and first.json()["data"]["userId"] == "jos\u00e9"
    assert twin.json()["error"]["code"] == "ALREADY_PURCHASED"
    assert read.json()["data"]["purchaseId"] == first.json()["data"]["purchaseId"]


def test_the_openapi_pattern_refuses_only_what_the_server_refuses():
    """The OpenAPI pattern is short and names part of the rule: each character it refuses the
    server refuses too, and it refuses the common ways to hide or disguise an id."""
    import re

    from actors.errors import InvalidInput
    from flashflow.http.validation import PATTERN_RANGES, user_id, user_id_pattern

    pattern = re.compile(user_id_pattern())
    assert len(pattern.pattern) < 1000
    refused = ["\u202eadmin", "ad\u200bmin", "adm\ue000in", "ali\u2028ce", "ali\u2029ce",
               "ali\x00ce", "adm\ud800in", "\ufeffadmin", " admin"]
    assert [bool(pattern.match(u)) for u in refused] == [False] * len(refused)
    assert all(pattern.match(u) for u in ["alice", "jos\u00e9", "b\U0001F600b", "a b"])
    for first, last in PATTERN_RANGES:
        for code in range(first, last + 1):
            with pytest.raises(InvalidInput):
                user_id(f"ab{chr(code)}cd")


@pytest.mark.parametrize(("query", "needle"), [
    ("", "required"),
    ("?userId=", "empty"),
    ("?userId=%20%20", "empty"),
    ("?userId=ab", "at least 3"),
    ("?userId=" + "a" * 256, "at most 255"),
    ("?userId=ali%00ce", "control"),
    ("?userId=%E2%80%AEadmin", "invisible formatting"),
    ("?userId=%E2%80%8B%E2%80%8C%E2%80%8D", "invisible formatting"),
    ("?userId=adm%EE%80%80in", "private-use"),
    ("?userId=adm%CD%B8in", "unassigned"),
    ("?userId=ali%E2%80%A8ce", "line separator"),
], ids=["missing", "empty", "blank", "two-chars", "256-chars", "nul", "bidi-Cf", "zero-width-Cf",
        "private-use-Co", "unassigned-Cn", "line-separator-Zl"])
async def test_bad_status_query_is_400(settings, query, needle):
    """GET .../purchase with a missing or malformed userId is 400 VALIDATION_ERROR."""
    sale = await make_sale(settings.database_url, stock=5)
    with trio.fail_after(30):
        async with live_server(settings) as server:
            response = await server.client.get(CURRENT_PURCHASE + query)
    assert needle in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    await assert_nothing_written(settings, sale, 5)
