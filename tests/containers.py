"""PostgreSQL and Redis in containers, for machines where a Docker engine answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_IMAGE = "postgres:16-alpine"
REDIS_IMAGE = "redis:7-alpine"


def postgres_url(container) -> str:
    """A plain ``postgresql://`` URL (no SQLAlchemy driver suffix) for asyncpg."""
    host = container.get_container_host_ip()
    port = container.get_exposed_port(5432)
    return f"postgresql://{container.username}:{container.password}@{host}:{port}/{container.dbname}"


def redis_url(container) -> str:
    """A ``redis://`` URL for the container."""
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return f"redis://{host}:{port}/0"


@contextmanager
def container_services() -> Iterator[tuple[str, str]]:
    """Start PostgreSQL 16 and Redis 7 containers; stop both on exit."""
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    with PostgresContainer(POSTGRES_IMAGE) as pg, RedisContainer(REDIS_IMAGE) as rd:
        yield postgres_url(pg), redis_url(rd)
