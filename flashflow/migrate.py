"""Apply the plain SQL files in ``migrations/`` in order, once each."""

from __future__ import annotations

from importlib import resources
from typing import Any

# A fixed advisory-lock key so that two processes migrating at once take turns.
_MIGRATION_LOCK = 0x466C617368466C6F  # "FlashFlo"


def migration_files() -> list[tuple[str, str]]:
    """Every migration as (version, SQL text), in file-name order."""
    folder = resources.files("migrations")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def apply_migrations(conn: Any) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; return their versions.

    Re-running is a no-op. Each migration runs in its own transaction with its record.
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
