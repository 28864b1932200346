"""Property-based fuzzing of the whole API from its own OpenAPI document.

Schemathesis generates valid and invalid requests for every operation; whatever it sends,
the server answers without a 5xx (503 excepted: it is an honest answer under load), every
answer is one the document lists (its status, media type, headers and body schema), and the
server stays up. The event streams never end, so they are left to ``test_sse``.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flashflow.database import execute, run_on_connection
from flashflow.http.wire import CURRENT_PURCHASE, HEALTHZ, OPENAPI
from flashflow.tokens import mint

from ..helpers import spawn_server

pytestmark = pytest.mark.slow


SECRET = "fuzz-secret-for-hs256-0123456789abcdef"
#: The document cannot drift from the code: each answer must be one it lists.
CONFORMANCE = [status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module", params=[False, True], ids=["open", "signed-in"])
def fuzz_target(request, services, template_database, tmp_path_factory):
    """A real server process with an active sale, on a database of its own, with auth or not."""
    import asyncio
    import uuid

    from flashflow.database import with_database
    from flashflow.settings import Settings

    name = f"ff_fuzz_{uuid.uuid4().hex[:8]}"
    run_on_connection(services.database_url, execute,
                      f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = with_database(services.database_url, name)
    settings = Settings(database_url=url, redis_url=services.redis_url,
                        key_prefix=f"fftest:fuzz:{name}:", workers=1,
                        rate_address_per_s=1e6, rate_address_burst=10**6)
    asyncio.run(_sale(url))
    served = replace(settings, auth_jwt_secret=SECRET) if request.param else settings
    server = spawn_server(served, tmp_path_factory.mktemp("fuzz"))
    token = mint(served, "fuzzer") if request.param else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        yield server, headers
    finally:
        server.stop()
        run_on_connection(services.database_url, execute,
                          f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(services.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{settings.key_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


async def _sale(url: str) -> None:
    from datetime import UTC, datetime, timedelta

    import asyncpg

    from actors import ledger_sql

    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        await ledger_sql.insert_sale(conn, "Fuzzed Widget", 50, now - timedelta(minutes=1),
                                     now + timedelta(hours=1))
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE])
def test_no_input_makes_the_server_fail(fuzz_target, mode):
    """No generated request, valid or not, gets a 5xx other than 503 or an answer the document
    does not list, and the server stays up."""
    fuzz_target, headers = fuzz_target
    api = schemathesis.openapi.from_url(f"{fuzz_target.base_url}{OPENAPI}")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 5
    fuzzed: set[str] = set()
    for operation in operations:
        if operation.path.endswith("/events"):
            continue  # a stream that lives as long as its client: test_sse covers it

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(timeout=10, headers={**headers, **(case.headers or {})})
            assert response.status_code < 500 or response.status_code == 503, (
                case.as_curl_command(), response.status_code, response.text[:500])
            case.validate_response(response, checks=CONFORMANCE)
            if response.status_code >= 400:
                body = response.json()
                assert body["status"] == "error" and body["code"] == response.status_code
                assert body["error"]["code"] and body["error"]["correlationId"]

        try:
            check()
        except Unsatisfiable:
            # An operation with no parameters and no body has no invalid form to send.
            assert mode is schemathesis.GenerationMode.NEGATIVE
            continue
        fuzzed.add(f"{operation.method.upper()} {operation.path}")
    assert {f"POST {CURRENT_PURCHASE}", f"GET {CURRENT_PURCHASE}"} <= fuzzed, fuzzed
    assert httpx.get(f"{fuzz_target.base_url}{HEALTHZ}", timeout=5).status_code == 200
