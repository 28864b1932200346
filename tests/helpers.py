"""Helpers shared by the tests: database set-up, sales, a controllable clock, a live server."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis
import trio
from hypercorn.trio import serve as hypercorn_serve

try:
    import coverage
except ImportError:  # pragma: no cover - coverage is a test dependency
    coverage = None

from actors import Sale, WaitingRoom, ledger_sql
from actors.redis_url import sync_client
from flashflow.database import run_on_connection
from flashflow.http import create_app
from flashflow.http.wire import HEALTHZ
from flashflow.invariants import GateSnapshot, LedgerSnapshot, ledger_snapshot, read_gate, verify
from flashflow.processes import stop_process
from flashflow.runtime import Runtime, open_runtime
from flashflow.server import asgi_app, hypercorn_config
from flashflow.settings import Settings
from loadtests import backends
from loadtests.records import Record


async def pg(url: str, fn: Any, *args: Any) -> Any:
    """Like :func:`run_on_connection`, from trio code, in a worker thread."""
    return await trio.to_thread.run_sync(run_on_connection, url, fn, *args)


async def fetch(conn: Any, sql: str, *args: Any) -> list[Any]:
    """``conn.fetch`` as a plain coroutine function, for :func:`pg`."""
    return await conn.fetch(sql, *args)


async def make_sale(url: str, *, stock: int = 10, product: str = "Test Widget",
                    starts_in: timedelta = timedelta(minutes=-1),
                    lasts: timedelta = timedelta(hours=1),
                    now: datetime | None = None, hold_seconds: int | None = None,
                    per_user_limit: int = 1, waiting_room: WaitingRoom | None = None) -> Sale:
    """Schedule a sale relative to ``now`` (default: running now for an hour); with
    ``hold_seconds``, a sale of holds; with ``per_user_limit``, up to that many units a buyer;
    with ``waiting_room``, a line in front."""
    start = (now or datetime.now(UTC)) + starts_in
    return await pg(url, ledger_sql.insert_sale, product, stock, start, start + lasts,
                    hold_seconds, per_user_limit, waiting_room)


@contextmanager
def client_untraced() -> Iterator[None]:
    """The test process's own code not traced for coverage while the block runs.

    Under ``make test`` the whole test process is traced, and a crowd of hundreds of
    connections in one trio loop then reads its answers seconds late: what a latency bound
    measured there would hold is the tracer, not the server (whose workers stay traced).
    """
    current = coverage.Coverage.current() if coverage is not None else None
    if current is None:
        yield
        return
    current.stop()
    try:
        yield
    finally:
        current.start()


async def open_in(url: str, sale_id: uuid.UUID, seconds: float) -> None:
    """Move an upcoming sale's start to ``seconds`` from now by PostgreSQL's clock, and
    return once it has passed: what joined before is early, whatever the machine's speed."""
    [row] = await pg(url, fetch, "UPDATE flash_sales SET start_time = clock_timestamp() "
                                 "+ make_interval(secs => $2) WHERE id = $1 RETURNING "
                                 "extract(epoch FROM start_time - clock_timestamp()) AS left",
                     sale_id, seconds)
    await trio.sleep(float(row["left"]) + 0.1)


def assert_error(response: httpx.Response, status: int, code: str,
                 detailed: bool = False) -> dict:
    """Check the error envelope of the original product and return its ``error`` object
    (``detailed``: one of the errors that carry ``details``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "code", "error"}
    assert (body["status"], body["code"]) == ("error", status)
    assert set(body["error"]) == {"code", "message", "correlationId",
                                  *(["details"] if detailed else [])}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    uuid.UUID(body["error"]["correlationId"])
    assert response.headers.get_list("x-correlation-id") == [body["error"]["correlationId"]]
    return body["error"]


def on_defaults(settings: Settings) -> Settings:
    """The default settings on the test's database, Redis and key prefix: the actors' tests
    run on the production knobs, not on the stampede tests' generous deadlines."""
    return Settings(database_url=settings.database_url, redis_url=settings.redis_url,
                    key_prefix=settings.key_prefix)


def redis_client(settings: Settings) -> redis.Redis | redis.RedisCluster:
    """A synchronous Redis client on the test's Redis, whatever its shape (single, Sentinel,
    cluster)."""
    return sync_client(settings.redis_url, decode_responses=True, socket_timeout=5)


def gate_keys(settings: Settings, sale_id: uuid.UUID) -> tuple[str, str]:
    """The gate's (stock, buyers) Redis keys for a sale under the test's key prefix."""
    return backends.gate_keys(settings.key_prefix, sale_id)


def gate_of(settings: Settings, sale_id: uuid.UUID) -> GateSnapshot:
    """What the test's Redis holds for a sale, read as the load test reads it."""
    client = redis_client(settings)
    try:
        return read_gate(client, settings.key_prefix, sale_id)
    finally:
        client.close()


def gate_state(settings: Settings, sale: Sale) -> tuple[int | None, dict[str, str]]:
    """Redis's stock for ``sale`` (None when the gate is not loaded) and its holders."""
    gate = gate_of(settings, sale.id)
    return gate.stock, gate.buyers


async def ledger_of(settings: Settings, sale_id: uuid.UUID) -> LedgerSnapshot:
    """What the test's PostgreSQL holds for a sale, read as the load test reads it."""
    return await trio.to_thread.run_sync(ledger_snapshot, settings.database_url, sale_id)



async def judge(settings: Settings, sale: Any, records: list[Record], *,
                faulted: Collection[Record] = ()) -> tuple[LedgerSnapshot, GateSnapshot]:
    """Hold a run on a fresh ``sale`` to :func:`flashflow.invariants.verify`, the one invariant
    check, against what PostgreSQL and Redis hold now; return the snapshots it judged."""
    after = await ledger_of(settings, sale.id)
    gate = await trio.to_thread.run_sync(gate_of, settings, sale.id)
    before = LedgerSnapshot(sale.total_stock, 0, {})
    broken = [c for c in verify(records, before, after, gate, faulted=faulted) if not c.held]
    assert not broken, "\n".join(f"{c.name}: {c.detail}" for c in broken)
    return after, gate


@dataclass
class FakeClock:
    """A wall clock the test moves by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass(frozen=True)
class LiveServer:
    """A Flash Flow server listening on loopback, with an HTTP client pointed at it."""

    runtime: Runtime
    client: httpx.AsyncClient
    base_url: str


@asynccontextmanager
async def live_server(settings: Settings, **runtime_kwargs: Any) -> AsyncIterator[LiveServer]:
    """Serve the real app on 127.0.0.1 and an ephemeral port for the test's duration."""
    async with live_fronts(settings, (settings,), **runtime_kwargs) as (server,):
        yield server


@asynccontextmanager
async def live_fronts(settings: Settings, fronts: tuple[Settings, ...],
                      **runtime_kwargs: Any) -> AsyncIterator[tuple[LiveServer, ...]]:
    """Serve one app, on one running runtime, once per settings of ``fronts`` (each on a port
    of its own, served as those settings say: with the fast path or without it, say)."""
    settings = replace(settings, host="127.0.0.1", port=0)
    async with open_runtime(settings, **runtime_kwargs) as runtime:
        app = create_app(runtime)
        async with trio.open_nursery() as nursery, AsyncExitStack() as clients:
            servers = []
            for front in fronts:
                front = replace(front, host="127.0.0.1", port=0)
                binds = await nursery.start(
                    hypercorn_serve, asgi_app(app, front), hypercorn_config(front))
                limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
                client = await clients.enter_async_context(
                    httpx.AsyncClient(base_url=binds[0], limits=limits, timeout=30))
                servers.append(LiveServer(runtime, client, binds[0]))
            yield tuple(servers)
            nursery.cancel_scope.cancel()


def server_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a ``flashflow`` subprocess run on ``settings``, the test's
    servers included, logging warnings only."""
    return replace(settings, log_level="WARNING").process_env()


def stop_tree(pid: int) -> list[int]:
    """SIGSTOP a process, then every process under it, each by its pid; return the pids
    stopped, the parent first (stopped first, so it starts no new child meanwhile)."""
    os.kill(pid, signal.SIGSTOP)
    stopped = [pid]
    for child in psutil.Process(pid).children(recursive=True):
        with suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGSTOP)
            stopped.append(child.pid)
    return stopped


def continue_all(pids: list[int]) -> None:
    """SIGCONT what :func:`stop_tree` stopped: the children first, the parent last."""
    for pid in reversed(pids):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class ServerProcess:
    """A ``flashflow`` server running as a child process, stopped by its process id."""

    process: subprocess.Popen
    base_url: str
    log_path: Path

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait, then SIGKILL; return the exit code."""
        return stop_process(self.process, signal.SIGTERM, timeout_s)


#: What makes a child process (and its workers) traced for coverage under ``make test``.
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def spawn_server(settings: Settings, log_dir: Path, *args: str, timeout_s: float = 30.0,
                 traced: bool = True, port: int | None = None) -> ServerProcess:
    """Start ``flashflow serve`` on ``settings`` (see :func:`server_env`) and a free loopback
    port (or ``port``, to start a server again where it was), and wait until /healthz answers.

    ``traced=False`` runs it outside coverage, for a test whose load would otherwise measure
    the tracer rather than the server.
    """
    from flashflow.embedded import free_port

    port = port or free_port()
    log_path = log_dir / f"server-{port}.log"
    if log_path.exists():  # a server started again on its port: its earlier log is kept
        log_path = log_dir / f"server-{port}-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "flashflow.cli", "serve", "--port", str(port), *args]
    env = server_env(settings)
    if not traced:
        for name in COVERAGE_VARIABLES:
            env.pop(name, None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.base_url}{HEALTHZ}", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not answer in {timeout_s}s: {log_path.read_text()[-2000:]}")


@asynccontextmanager
async def sale_row_locked(database_url: str, sale_id: uuid.UUID
                          ) -> AsyncIterator[Callable[[], None]]:
    """Hold ``FOR UPDATE`` on the sale's row, so every commit of it waits in PostgreSQL.

    Purchases then stay in flight between the gate and the ledger for as long as the test
    likes. Yields a function that releases the lock early; it is released on exit anyway.
    """
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                transaction = conn.transaction()
                await transaction.start()
                await conn.execute("SELECT 1 FROM flash_sales WHERE id = $1 FOR UPDATE", sale_id)
                locked.set()
                while not release.wait(0):
                    await asyncio.sleep(0.01)
                # The test may have stopped PostgreSQL meanwhile: the lock is gone with it.
                with suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await transaction.rollback()
            finally:
                with suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.close()

        asyncio.run(go())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, hold)
        try:
            with trio.fail_after(10):
                while not locked.is_set():
                    await trio.sleep(0.01)
            yield release.set
        finally:
            release.set()


class TtyStream(io.StringIO):
    """A text stream that says it is a terminal (so logs take their readable format)."""

    def isatty(self) -> bool:
        return True
