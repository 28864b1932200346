"""Fault-test fixtures: own embedded PostgreSQL and Redis, servers as subprocesses, figures.

The fault tests import what they work with from the modules beside this one: the backends
and the faults done to them (``backends``), the servers (``fleet``), the purchases recorded
(``recorder``), the traffic (``load``), the stores as read (``stores``) and the checks and
figures (``checks``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from flashflow.database import run_on_connection
from flashflow.embedded import start_postgres, start_redis
from flashflow.migrate import apply_migrations
from flashflow.settings import Settings

from ..helpers import ServerProcess, spawn_server
from ..servers import Cluster, redis_cluster
from .backends import Backends
from .checks import figures_dir
from .fleet import stop_server_tree


@pytest.fixture
def backends() -> Iterator[Backends]:
    """A migrated PostgreSQL and an empty Redis of this test's own, stopped by pid afterwards."""
    # Outside /tmp/pytest-of-root: pytest resets that root to 0700, which would lock out the
    # unprivileged user the embedded PostgreSQL runs as.
    with tempfile.TemporaryDirectory(prefix="flashflow-faults-") as tmp:
        data_dir = Path(tmp)
        postgres = start_postgres(data_dir)
        try:
            redis_server = start_redis(data_dir)
        except BaseException:
            postgres.stop()
            raise
        owned = Backends(data_dir, postgres, redis_server)
        try:
            run_on_connection(postgres.url, apply_migrations)
            yield owned
        finally:
            owned.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis Cluster of three masters with a replica each, stopped by pid afterwards."""
    with redis_cluster(tmp_path / "redis", masters=3, replicas=1) as started:
        yield started


@pytest.fixture
def fault_settings(backends: Backends, tmp_path: Path) -> Settings:
    """Settings on this test's own servers, with short timeouts and a short reservation grace."""
    return Settings(
        database_url=backends.postgres.url,
        redis_url=backends.redis.url,
        key_prefix=f"fault:{uuid.uuid4().hex[:8]}:",
        workers=1,
        port=0,
        data_dir=tmp_path,
        redis_timeout_s=1.0,
        postgres_timeout_s=4.0,
        reservation_grace_s=2.0,
        reconcile_interval_s=0.5,
        catalog_refresh_s=0.5,
        graceful_timeout_s=8.0,
        # Every test client shares 127.0.0.1 and retries during faults: the limits are
        # exercised by tests/http/test_rate_limits.py, not here.
        rate_user_per_s=1_000_000.0,
        rate_user_burst=1_000_000,
        rate_address_per_s=1_000_000.0,
        rate_address_burst=1_000_000,
    )


@pytest.fixture
async def launch(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[Callable[..., Any]]:
    """Start ``flashflow serve`` subprocesses; every one (and every worker) is stopped by pid.

    Their logs are kept beside the figures, under ``logs/<test name>/``.
    """
    started: list[ServerProcess] = []

    async def go(settings: Settings, *args: str, traced: bool = True,
                 port: int | None = None) -> ServerProcess:
        server = await trio.to_thread.run_sync(partial(spawn_server, settings, tmp_path, *args,
                                                       traced=traced, port=port))
        started.append(server)
        return server

    try:
        yield go
    finally:
        for server in started:
            await trio.to_thread.run_sync(stop_server_tree, server)
        kept = figures_dir() / "logs" / request.node.name
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)
        for server in started:
            shutil.copy(server.log_path, kept / server.log_path.name)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures; written as JSON and printed at the end."""
    collected: dict[str, Any] = {}
    started = time.monotonic()
    yield collected
    collected["test_seconds"] = round(time.monotonic() - started, 1)
    name = request.node.name
    text = json.dumps(collected, sort_keys=True, default=str)
    path = figures_dir() / f"{name}.json"
    path.write_text(json.dumps(collected, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nFIGURES {name} {text}\n  (written to {path})")
