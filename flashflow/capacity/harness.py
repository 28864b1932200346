"""The load harness: the servers a run needs, a scratch database and key prefix, a sale,
the clean-up, and the judge of the result.

Every load tool is a scenario on it: the capacity benchmarks (``python -m flashflow.capacity
gate|big-sale|lapses``), the locust stampede (``python -m loadtests``), the wrk benchmark
(``python -m loadtests.bench``) and the live-feed bench (``python -m loadtests.sse_bench``).
It lives beside the capacity benchmarks because ``flashflow.capacity`` ships in the wheel
as an operator's sizing tool; ``loadtests`` imports it from here, as imports run
``loadtests`` -> ``flashflow`` -> ``actors`` and never back. Like the benchmarks, it needs
the ``embedded`` extra.

- :func:`backing_services`: the PostgreSQL and Redis a run was given, or embedded ones
  started on loopback for the block and stopped by their pid.
- :func:`open_scratch`: a database of the run's own (created, migrated, dropped
  afterwards) and a key prefix of its own (every key under it deleted afterwards).
- :func:`create_sale`: a sale running from now, written by
  :func:`actors.ledger_sql.insert_sale`, the one insert ``flashflow sale create``,
  ``flashflow seed`` and the admin API use too.
- :func:`judge`: what the clients were told against what PostgreSQL and Redis hold, by the
  one check, :func:`flashflow.invariants.verify`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from actors import ledger_sql
from actors.model import Sale, WaitingRoom
from actors.redis_url import sync_client

from ..database import execute, run_on_connection, with_database
from ..embedded import start_postgres, start_redis
from ..invariants import Check, LedgerSnapshot, Record, store_snapshots, verify
from ..migrate import apply_migrations


@contextmanager
def backing_services(directory: Path, database_url: str | None = None,
                     redis_url: str | None = None, *,
                     redis_server: Path | None = None) -> Iterator[tuple[str, str]]:
    """``(database_url, redis_url)``: the given ones, and an embedded server for each missing.

    Args:
        directory: Where embedded servers keep their data and logs.
        database_url: A PostgreSQL role that may create databases; None starts one.
        redis_url: A Redis; None starts one.
        redis_server: The ``redis-server`` binary of a Redis started here (the wheel's if None).
    """
    with ExitStack() as stack:
        if database_url is None:
            postgres = start_postgres(directory)
            stack.callback(postgres.stop)
            database_url = postgres.url
        if redis_url is None:
            node = start_redis(directory, server=redis_server)
            stack.callback(node.stop)
            redis_url = node.url
        yield database_url, redis_url


def new_key_prefix(tag: str) -> str:
    """A Redis key prefix of a run's own: ``tag:`` and ten random hex digits."""
    return f"{tag}:{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, key_prefix: str) -> int:
    """Delete every key under ``key_prefix`` (on every node of a cluster); return how many."""
    client = sync_client(url, socket_timeout=30)
    deleted = 0
    try:
        batch: list[Any] = []
        for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += sum(client.delete(k) for k in batch)
                batch.clear()
        deleted += sum(client.delete(k) for k in batch)
    finally:
        client.close()
    return deleted


@contextmanager
def scratch_prefix(redis_url: str, tag: str) -> Iterator[str]:
    """A fresh key prefix (:func:`new_key_prefix`) whose keys are deleted afterwards."""
    prefix = new_key_prefix(tag)
    try:
        yield prefix
    finally:
        delete_prefix(redis_url, prefix)


@contextmanager
def scratch_database(admin_url: str, tag: str) -> Iterator[str]:
    """A fresh database on ``admin_url``'s server, migrated, dropped afterwards."""
    name = f"{tag}_{uuid.uuid4().hex[:10]}"
    run_on_connection(admin_url, execute, f'CREATE DATABASE "{name}"')
    try:
        url = with_database(admin_url, name)
        run_on_connection(url, apply_migrations)
        yield url
    finally:
        run_on_connection(admin_url, execute, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True, slots=True)
class Scratch:
    """A run's own stores: a migrated database and a key prefix on a given Redis."""

    database_url: str
    redis_url: str
    key_prefix: str


@contextmanager
def open_scratch(admin_url: str, redis_url: str, tag: str) -> Iterator[Scratch]:
    """A scratch database and key prefix named after ``tag``, both removed afterwards."""
    with scratch_database(admin_url, tag) as url, scratch_prefix(redis_url, tag) as prefix:
        yield Scratch(url, redis_url, prefix)


async def _insert(conn: Any, product: str, stock: int, lasts_s: float, current: bool,
                  hold_seconds: int | None, per_user_limit: int, starts_in_s: float,
                  waiting_room: WaitingRoom | None) -> Sale:
    start = datetime.now(UTC) + timedelta(seconds=starts_in_s)
    end = start + timedelta(seconds=lasts_s)
    if current:
        # The server's current sale is the active one that ends first: ours must end first.
        sooner = await conn.fetchval(
            "SELECT id FROM flash_sales WHERE start_time <= $1 AND end_time > $1 "
            "AND end_time <= $2 ORDER BY end_time LIMIT 1", start, end)
        if sooner is not None:
            raise LookupError(f"active sale {sooner} ends before a new one would, so it stays "
                              "current: load it without --stock, or wait until it ends")
    return await ledger_sql.insert_sale(conn, product, stock, start, end, hold_seconds,
                                        per_user_limit, waiting_room)


def move_start(database_url: str, sale_id: uuid.UUID, start: datetime) -> Sale:
    """Move an upcoming sale's start (and so its line's opening) to ``start``, as an
    operator's change does; return the sale."""
    return run_on_connection(database_url, partial(ledger_sql.update_sale, start_time=start),
                             sale_id)


def create_sale(database_url: str, product: str, stock: int, lasts_s: float, *,
                current: bool = False, hold_seconds: int | None = None,
                per_user_limit: int = 1, starts_in_s: float = -1.0,
                waiting_room: WaitingRoom | None = None) -> Sale:
    """Schedule a sale of ``stock`` starting ``starts_in_s`` from now (a second ago unless
    told) and lasting ``lasts_s``; return it.

    Args:
        current: The sale must become the server's current one at its next catalog
            refresh (the active sale that ends first).
        hold_seconds: A sale with holds, of this payment window; None: without.
        per_user_limit: The most units one buyer may take.
        waiting_room: A line in front of the sale; None: without.

    Raises:
        LookupError: with ``current``, an active sale ends sooner, so it stays current.
    """
    return run_on_connection(database_url, _insert, product, stock, lasts_s, current,
                             hold_seconds, per_user_limit, starts_in_s, waiting_room)


def judge(records: Iterable[Record], before: LedgerSnapshot, database_url: str,
          redis_url: str, key_prefix: str, sale_id: uuid.UUID, *,
          label: str | None = None) -> list[Check]:
    """The invariants of a run: its answers against what PostgreSQL and Redis hold now.

    Args:
        before: The ledger before the run.
        label: Put before each check's name (``"after sale: ..."``), when given.
    """
    checks = verify(records, before,
                    *store_snapshots(database_url, redis_url, key_prefix, sale_id))
    if label is None:
        return checks
    return [Check(f"{label}: {c.name}", c.held, c.detail) for c in checks]


__all__ = ["Sale", "Scratch", "WaitingRoom", "backing_services", "create_sale", "delete_prefix",
           "judge", "move_start", "new_key_prefix", "open_scratch", "scratch_database",
           "scratch_prefix"]
