"""The ledger actor: PostgreSQL, the source of truth, written by group commit.

Reserved purchases queue in a bounded inbox; the actor drains what has gathered and
writes it as one transaction per sale, so a burst costs one round trip to PostgreSQL and
one trio-asyncio crossing. A caller is answered only after its transaction committed.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg
import trio

from . import _aio, ledger_sql
from ._batching import batches
from ._nursery import open_actor_nursery
from ._slot import Slot
from .errors import BackendUnavailable, LedgerUnreachable, Overloaded
from .model import LedgerState, Purchase, Sale, Tally, WaitingRoom

log = logging.getLogger(__name__)

#: Buyers read per query when a sale's committed state is read in pages.
BUYERS_PAGE = 50_000


class CommitResult(enum.Enum):
    """How the ledger decided one purchase."""

    COMMITTED = "committed"
    DUPLICATE = "duplicate"
    NO_STOCK = "no_stock"
    OVER_LIMIT = "over_limit"
    NOT_STARTED = "not_started"
    ENDED = "ended"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """The ledger's answer: the result and the purchase that now stands for the user.

    ``ABSENT`` is only ever the answer of :meth:`Ledger.resolve`: nothing is committed for the
    user, and no commit of theirs is in flight.
    """

    result: CommitResult
    purchase: Purchase | None
    #: With ``OVER_LIMIT``: the sale's per-user limit, as the ledger holds it.
    limit: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """Ask the ledger to make one reserved purchase durable, if it can be sent by ``deadline``."""

    purchase: Purchase
    deadline: float
    reply: Slot[CommitOutcome] = field(compare=False)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Ask the ledger for one user's committed purchase (a withdrawn one is skipped)."""

    sale_id: uuid.UUID
    user_id: str
    reply: Slot[Purchase | None] = field(compare=False)


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    """A snapshot of the ledger's work, for /metrics and tests."""

    inbox_depth: int
    batches: int
    committed: int
    largest_batch: int
    failed_batches: int
    lookups: int
    lookup_batches: int
    withdrawn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerConfig:
    """The ledger's knobs; the application builds this from its settings, which hold the
    defaults."""

    database_url: str
    pool_size: int
    inbox_size: int
    batch_max: int
    timeout_s: float
    statement_cache_size: int


class Ledger:
    """Handle to a running ledger actor; see :func:`open_ledger`."""

    def __init__(self, config: LedgerConfig, pool: asyncpg.Pool) -> None:
        self._config = config
        self._pool = pool
        self._send, self._inbox = trio.open_memory_channel[Commit](config.inbox_size)
        self._lookup_send, self._lookups = trio.open_memory_channel[Lookup](config.inbox_size)
        self._batches = 0
        self._committed = 0
        self._largest_batch = 0
        self._failed_batches = 0
        self._lookups_served = 0
        self._lookup_batches = 0
        self._withdrawn = 0

    async def commit(self, purchase: Purchase, deadline: float = math.inf) -> CommitOutcome:
        """Make ``purchase`` durable; returns once its transaction committed.

        The caller waits until ``deadline`` (trio time) at most. A commit still queued then
        is withdrawn, never sent: ``LedgerUnreachable``, and nothing can have committed. A
        commit already sent whose reply has not come is in doubt: ``BackendUnavailable``,
        for the caller to find out by asking the ledger, as for a lost reply. So no caller
        waits behind batches queued ahead of its own, however long PostgreSQL stalls.

        Raises:
            Overloaded: the inbox is full.
            LedgerUnreachable: nothing was sent (no connection, or withdrawn at ``deadline``).
            BackendUnavailable: PostgreSQL is down, too slow, or refused the batch.
        """
        request = Commit(purchase, deadline, Slot())
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise Overloaded("ledger") from None
        with trio.move_on_at(deadline):
            return await request.reply.wait()
        if request.reply.withdraw(LedgerUnreachable()):
            self._withdrawn += 1
        elif not request.reply.done:
            request.reply.fail(BackendUnavailable("postgres"))
        return await request.reply.wait()

    async def sales(self) -> list[Sale]:
        """Every scheduled sale."""
        return await self._query(ledger_sql.fetch_sales)

    async def create_sale(self, product_name: str, total_stock: int, start_time: datetime,
                          end_time: datetime, hold_seconds: int | None = None,
                          per_user_limit: int = 1,
                          waiting_room: WaitingRoom | None = None) -> Sale:
        """Schedule a new sale (with ``hold_seconds``, a sale of holds; with a
        ``per_user_limit``, up to that many units per buyer; with a ``waiting_room``, a line
        in front) and return it."""
        return await self._query(ledger_sql.insert_sale, product_name, total_stock,
                                 start_time, end_time, hold_seconds, per_user_limit,
                                 waiting_room)

    async def update_sale(self, sale_id: uuid.UUID, **changes: Any) -> Sale:
        """Change a sale not started yet; see :func:`ledger_sql.update_sale` for refusals."""
        return await self._query(functools.partial(ledger_sql.update_sale, **changes), sale_id)

    async def end_sale(self, sale_id: uuid.UUID) -> Sale:
        """End a running sale now; see :func:`ledger_sql.end_sale` for refusals."""
        return await self._query(ledger_sql.end_sale, sale_id)

    async def find_purchase(self, sale_id: uuid.UUID, user_id: str,
                            deadline: float = math.inf) -> Purchase | None:
        """The user's committed purchase in a sale, or None.

        Reads are batched like writes: lookups that gather while one query is out go
        together in the next, one round trip and one crossing for all of them. The caller
        waits until ``deadline`` (trio time) at most.

        Raises:
            Overloaded: the lookup inbox is full.
            BackendUnavailable: PostgreSQL is down or too slow, or ``deadline`` passed.
        """
        request = Lookup(sale_id, user_id, Slot())
        try:
            self._lookup_send.send_nowait(request)
        except trio.WouldBlock:
            raise Overloaded("ledger") from None
        with trio.move_on_at(deadline):
            return await request.reply.wait()
        request.reply.fail(BackendUnavailable("postgres"))
        return await request.reply.wait()

    async def purchases(self, sale_id: uuid.UUID, users: list[str]) -> dict[str, Purchase]:
        """The committed purchases of ``users`` in a sale, by user id (absent: none)."""
        if not users:
            return {}
        return await self._query(ledger_sql.find_purchases, sale_id, users)

    async def resolve(self, sale_id: uuid.UUID, users: list[str]) -> dict[str, Purchase]:
        """The committed purchases of ``users``, once no commit of theirs is in flight.

        For outcomes in doubt (a lost reply, a stale reservation): waits for any transaction
        still holding the users' advisory locks, so the answer is never a guess.
        """
        if not users:
            return {}
        return await self._query_pool(ledger_sql.resolve, sale_id, users)

    async def inquire(self, purchase: Purchase) -> CommitOutcome:
        """Ask what became of a commit whose reply was lost: read from the ledger itself."""
        found = (await self.resolve(purchase.sale_id, [purchase.user_id])).get(purchase.user_id)
        if found is None:
            return CommitOutcome(CommitResult.ABSENT, None)
        if found.id == purchase.id:
            return CommitOutcome(CommitResult.COMMITTED, found)
        return CommitOutcome(CommitResult.DUPLICATE, found)

    async def tally(self, sale_id: uuid.UUID) -> Tally:
        """A sale's stock and its committed units, as PostgreSQL holds them now."""
        return await self._query(ledger_sql.tally, sale_id)

    async def state(self, sale: Sale) -> LedgerState:
        """The committed state of a sale, read in one snapshot.

        Each page of buyers is bounded by the timeout, and the whole read by the timeout
        once for every page a sale of its stock can fill.
        """
        pages = 1 + sale.total_stock // BUYERS_PAGE
        return await _aio.postgres_call(
            self._config.timeout_s * (pages + 1), ledger_sql.on_connection, self._pool,
            ledger_sql.ledger_state, sale, BUYERS_PAGE, self._config.timeout_s)

    async def database_time(self) -> datetime:
        """PostgreSQL's clock now: the clock the sale's window is judged by at commit."""
        return await self._query(ledger_sql.database_time)

    async def ping(self) -> bool:
        """Whether PostgreSQL answers a query."""
        return await self._query(_select_one)

    def statistics(self) -> LedgerStatistics:
        """Return a snapshot of the ledger's counters."""
        return LedgerStatistics(
            inbox_depth=self._inbox.statistics().current_buffer_used,
            batches=self._batches,
            committed=self._committed,
            largest_batch=self._largest_batch,
            failed_batches=self._failed_batches,
            lookups=self._lookups_served,
            lookup_batches=self._lookup_batches,
            withdrawn=self._withdrawn,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled; started once PostgreSQL answers."""
        await self.ping()
        task_status.started()
        async for batch in batches(self._inbox, self._config.batch_max):
            await self._write(batch)

    async def serve_lookups(self) -> None:
        """Answer purchase lookups in batches, one query per sale per batch."""
        async for batch in batches(self._lookups, self._config.batch_max):
            self._lookup_batches += 1
            self._lookups_served += len(batch)
            by_sale: dict[uuid.UUID, list[Lookup]] = defaultdict(list)
            for request in batch:
                by_sale[request.sale_id].append(request)
            for sale_id, requests in by_sale.items():
                requests = [r for r in requests if not r.reply.done]
                if not requests:
                    continue
                users = sorted({r.user_id for r in requests})
                try:
                    found = await self._query(ledger_sql.find_purchases, sale_id, users)
                except BackendUnavailable as exc:
                    for request in requests:
                        request.reply.fail(exc)
                    continue
                for request in requests:
                    request.reply.set(found.get(request.user_id))

    def _take_up(self, requests: list[Commit]) -> list[Commit]:
        """The requests still to send: each taken up, unless withdrawn or past its deadline."""
        now = trio.current_time()
        taken = []
        for request in requests:
            if request.deadline <= now:
                if request.reply.withdraw(LedgerUnreachable()):
                    self._withdrawn += 1
            elif request.reply.take():
                taken.append(request)
        return taken

    async def _write(self, batch: list[Commit]) -> None:
        self._batches += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        by_sale: dict[uuid.UUID, list[Commit]] = defaultdict(list)
        for request in batch:
            by_sale[request.purchase.sale_id].append(request)
        for sale_id, queued in by_sale.items():
            # Taken up sale by sale, just before sending: time spent on the sales before
            # this one counts against these requests' deadlines too.
            requests = self._take_up(queued)
            if not requests:
                continue
            purchases = [r.purchase for r in requests]
            # No one waits past the last deadline: the batch is not held to longer either.
            timeout_s = min(self._config.timeout_s,
                            max(r.deadline for r in requests) - trio.current_time())
            try:
                try:
                    result = await _aio.postgres_call(timeout_s, ledger_sql.write_batch,
                                                      self._pool, sale_id, purchases)
                except ledger_sql.NotSent as exc:
                    raise LedgerUnreachable() from exc.__cause__
            except BackendUnavailable as exc:
                self._failed_batches += 1
                log.warning("ledger batch of %d failed: %r", len(requests), exc.__cause__,
                            extra={"sale_id": str(sale_id)})
                for request in requests:
                    request.reply.fail(exc)
                continue
            self._committed += len(result.committed)
            for request in requests:
                request.reply.set(_outcome(request.purchase, result))

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` (an asyncio coroutine of SQL) on a pooled connection,
        within the ledger's timeout.

        Raises:
            BackendUnavailable: PostgreSQL is down, too slow, or refused the statement.
        """
        return await self._query_pool(ledger_sql.on_connection, fn, *args)

    _query = call

    async def _query_pool(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await _aio.postgres_call(self._config.timeout_s, fn, self._pool, *args)


def _outcome(purchase: Purchase, result: ledger_sql.BatchResult) -> CommitOutcome:
    if result.closed is not None:
        return CommitOutcome(CommitResult.ENDED if result.closed.started
                             else CommitResult.NOT_STARTED, None)
    if purchase.id in result.committed:
        expires = result.expires.get(purchase.id)
        return CommitOutcome(CommitResult.COMMITTED,
                             purchase if expires is None else replace(purchase, expires_at=expires))
    if purchase.id in result.no_stock:
        return CommitOutcome(CommitResult.NO_STOCK, None)
    if purchase.id in result.over_limit:
        return CommitOutcome(CommitResult.OVER_LIMIT, None, result.over_limit[purchase.id])
    return CommitOutcome(CommitResult.DUPLICATE, result.existing.get(purchase.user_id))


async def _select_one(conn: Any) -> bool:
    return await conn.fetchval("SELECT 1") == 1


@asynccontextmanager
async def open_ledger(config: LedgerConfig) -> AsyncIterator[Ledger]:
    """Open the ledger actor; yields once PostgreSQL answers, stops its loop on exit."""
    async with _aio.open_postgres(config.database_url, config.timeout_s, config.pool_size,
                                  config.statement_cache_size) as pool:
        ledger = Ledger(config, pool)
        async with open_actor_nursery() as nursery:
            await nursery.start(ledger.run)
            nursery.start_soon(ledger.serve_lookups)
            try:
                yield ledger
            finally:
                nursery.cancel_scope.cancel()
