"""The stampede through PgBouncer in transaction pooling mode, with asyncpg's statement cache
off: still exact, with many client connections over two server connections."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from ..helpers import live_server, make_sale
from ..servers import PgBouncer, pgbouncer
from .test_stampede import check_invariants, stampede, stampede_two_servers

pytestmark = pytest.mark.slow


@pytest.fixture
def bouncer(database_url: str) -> Iterator[PgBouncer]:
    """PgBouncer with two server connections per database, in front of the test's PostgreSQL."""
    # Outside pytest's temporary root: PgBouncer runs as an unprivileged user when root.
    with tempfile.TemporaryDirectory(prefix="flashflow-pgbouncer-") as tmp, \
            pgbouncer(Path(tmp), database_url, pool_size=2) as started:
        yield started


async def test_stampede_through_pgbouncer_sells_exactly(settings, bouncer):
    """Stock 40, 300 users pressing 3 times, the ledger's pool through PgBouncer: exact."""
    sale = await make_sale(settings.database_url, stock=40)
    through = replace(settings, database_url=bouncer.url(settings.database_url),
                      pg_statement_cache_size=0, pg_pool_size=8)
    users = [f"pgb-{i:04d}" for i in range(300)]
    with trio.fail_after(120):
        async with live_server(through) as server:
            results = await stampede([server.client], users, clicks=3)
    await check_invariants(settings, sale, results, expected_sold=40)


async def test_servers_with_workers_share_pgbouncer_and_stay_exact(settings, bouncer, tmp_path):
    """A 2-worker server and a second server, 12 pools over 2 server connections: exact."""
    sale = await make_sale(settings.database_url, stock=30)
    through = replace(settings, database_url=bouncer.url(settings.database_url),
                      pg_statement_cache_size=0)
    results = await stampede_two_servers(through, tmp_path, [f"pgw-{i:04d}" for i in range(200)])
    await check_invariants(settings, sale, results, expected_sold=30)
