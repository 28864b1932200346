"""One-off PostgreSQL work outside the actors: the CLI, migrations, tests and tools."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


def run_on_connection(url: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run the asyncio coroutine ``fn(conn, *args)`` on a fresh connection, synchronously."""

    async def go() -> T:
        conn = await asyncpg.connect(url)
        try:
            return await fn(conn, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name`` (query options kept)."""
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{base}/{name}" + (f"?{query}" if query else "")


async def execute(conn: Any, sql: str) -> None:
    """``conn.execute(sql)`` as a coroutine function, for :func:`run_on_connection`."""
    await conn.execute(sql)
