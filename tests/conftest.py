"""Test fixtures: real PostgreSQL and Redis, one fresh database and key prefix per test.

Servers come from, in order: ``FLASHFLOW_TEST_DATABASE_URL`` / ``FLASHFLOW_TEST_REDIS_URL``
when set; testcontainers when a Docker engine answers; else the embedded servers shipped
as wheels, started once for the session and stopped by process id at its end.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from flashflow.database import execute, run_on_connection, with_database
from flashflow.migrate import apply_migrations
from flashflow.settings import Settings


@dataclass(frozen=True)
class Services:
    """Where the test servers are, and which provider started them."""

    database_url: str
    redis_url: str
    provider: str


def docker_answers() -> bool:
    """Whether a Docker engine (not only the client) is reachable."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Real PostgreSQL and Redis for the whole session."""
    db_url = os.environ.get("FLASHFLOW_TEST_DATABASE_URL")
    redis_url = os.environ.get("FLASHFLOW_TEST_REDIS_URL")
    if db_url and redis_url:
        yield Services(db_url, redis_url, "environment")
    elif docker_answers():
        from .containers import container_services

        with container_services() as (db_url, redis_url):
            yield Services(db_url, redis_url, "testcontainers")
    else:
        from flashflow.embedded import embedded_services

        # Outside pytest's temporary root: a second pytest run resets that root to mode
        # 0700, which would lock out the unprivileged user the embedded PostgreSQL runs as.
        with tempfile.TemporaryDirectory(prefix="flashflow-tests-") as data_dir, \
                embedded_services(Path(data_dir)) as (postgres, redis_server):
            yield Services(postgres.url, redis_server.url, "embedded")


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    """A migrated template database that every test's database is cloned from."""
    name = f"ff_template_{uuid.uuid4().hex[:8]}"
    run_on_connection(services.database_url, execute, f'CREATE DATABASE "{name}"')
    run_on_connection(with_database(services.database_url, name), apply_migrations)
    yield name
    run_on_connection(services.database_url, execute,
                      f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(services: Services, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"ff_test_{uuid.uuid4().hex[:12]}"
    run_on_connection(services.database_url, execute,
                      f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(services.database_url, name)
    run_on_connection(services.database_url, execute,
                      f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def key_prefix(services: Services) -> Iterator[str]:
    """A Redis key prefix of one's own for one test; its keys are deleted afterwards."""
    prefix = f"fftest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(services.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def settings(database_url: str, key_prefix: str, services: Services, tmp_path: Path) -> Settings:
    """Settings pointing at this test's database and key prefix."""
    return Settings(
        database_url=database_url,
        redis_url=services.redis_url,
        key_prefix=key_prefix,
        data_dir=tmp_path,
        port=0,
        catalog_refresh_s=0.2,
        # The stampede tests run clients and server in one process, traced for coverage:
        # generous deadlines keep them about invariants, not latency. tests/faults holds the
        # timeouts to the production values.
        redis_timeout_s=10.0,
        # Every test client shares 127.0.0.1; tests of the address limit lower it.
        rate_address_per_s=1_000_000.0,
        rate_address_burst=1_000_000,
        postgres_timeout_s=30.0,
        # A purchase in doubt waits a little longer than one commit may take, as by default,
        # and a reservation is returned only after a purchase's wait, as by default.
        purchase_wait_s=35.0,
        reservation_grace_s=40.0,
    )


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Put the root logger's handlers and level back after the test (``configure_logging``,
    which every ``flashflow`` command calls, replaces them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
