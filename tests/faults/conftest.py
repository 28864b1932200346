"""Fault-test fixtures: own embedded PostgreSQL and Redis, servers as subprocesses, load, checks.

Every backend here is started by the test itself from the wheels (``flashflow.embedded``)
under a temporary directory outside pytest's temporary root, and is killed, stopped and
restarted by its process id only: the machine's own PostgreSQL and Redis are never touched.
The helpers below are imported by the fault tests (``from .conftest import ...``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

try:
    import coverage
except ImportError:  # pragma: no cover - coverage is a test dependency
    coverage = None
import httpx
import psutil
import pytest
import redis
import trio

from actors import Sale
from actors.keys import parse_holder, sale_keys
from flashflow.embedded import EmbeddedServer, start_postgres, start_redis
from flashflow.invariants import GateSnapshot, ledger_snapshot
from flashflow.migrate import apply_migrations
from flashflow.settings import Settings
from loadtests.records import PURCHASE as PURCHASE_KIND
from loadtests.records import Record

from ..helpers import (  # noqa: F401  (sale_row_locked: imported by the fault tests)
    ServerProcess,
    gate_state,
    judge,
    ledger_of,
    redis_client,
    run_pg,
    sale_row_locked,
    spawn_server,
)
from ..servers import Cluster, redis_cluster

PURCHASE = "/api/v1/flash-sales/current/purchase"
RETURNED_LOG_LINE = "returned a reservation that never committed"
CLAIMED_LOG_LINE = r"recorded (\d+) committed purchases the gate did not hold"

#: Outcome.status for a request that got no HTTP answer (refused, reset, closed).
NO_ANSWER = 0
#: Outcome.status for a request the client gave up on: the server hung.
HUNG = -1


# -- backends --------------------------------------------------------------------------------


@dataclass
class Backends:
    """This test's own PostgreSQL and Redis, restartable on the same ports and data dir."""

    data_dir: Path
    postgres: EmbeddedServer
    redis: EmbeddedServer
    #: The PostgreSQL processes :meth:`pause_postgres` stopped, postmaster first.
    paused_postgres: list[int] = field(default_factory=list)

    @property
    def redis_port(self) -> int:
        """The TCP port Redis listens on, kept across restarts."""
        return int(self.redis.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def postgres_port(self) -> int:
        """The TCP port PostgreSQL listens on, kept across restarts."""
        return int(self.postgres.url.rsplit(":", 1)[1].split("/")[0])

    def kill_redis(self) -> None:
        """SIGKILL Redis by its pid: every key is lost (it keeps nothing on disk)."""
        with suppress(ProcessLookupError):
            os.kill(self.redis.pid, signal.SIGKILL)
        self.redis.process.wait(10)

    def start_redis_empty(self) -> float:
        """Start a fresh, empty Redis on the same port; return how long it took."""
        started = time.monotonic()
        self.redis = start_redis(self.data_dir, port=self.redis_port)
        return time.monotonic() - started

    def stop_postgres(self) -> None:
        """Stop PostgreSQL (fast shutdown: sessions aborted), keeping its data."""
        self.postgres.stop()

    def start_postgres(self) -> float:
        """Start PostgreSQL again on the same data dir and port; return how long it took."""
        started = time.monotonic()
        self.postgres = start_postgres(self.data_dir, port=self.postgres_port)
        return time.monotonic() - started

    def pause_postgres(self) -> None:
        """SIGSTOP PostgreSQL's postmaster and every backend, each by its pid: a hung server.

        Each backend leads a session of its own (PostgreSQL calls ``setsid`` in every
        child), so stopping the postmaster's group would leave open connections answering.
        Connections stay open and bytes sent meanwhile wait in the kernel, unanswered.
        """
        os.kill(self.postgres.pid, signal.SIGSTOP)  # first, so it forks no new backend
        self.paused_postgres = [self.postgres.pid]
        for child in psutil.Process(self.postgres.pid).children(recursive=True):
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGSTOP)
                self.paused_postgres.append(child.pid)

    @asynccontextmanager
    async def postgres_paused(self) -> AsyncIterator[None]:
        """PostgreSQL stopped (:meth:`pause_postgres`) for as long as the block runs."""
        self.pause_postgres()
        try:
            yield
        finally:
            self.resume_postgres()

    def resume_postgres(self) -> None:
        """SIGCONT what :meth:`pause_postgres` stopped: it reads what waited and answers."""
        paused, self.paused_postgres = self.paused_postgres, []
        if self.postgres.process.poll() is not None:
            return
        for pid in reversed(paused):  # the backends first, the postmaster last
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def pause_redis(self) -> None:
        """SIGSTOP Redis: commands sent meanwhile wait in its socket buffers, unanswered."""
        os.kill(self.redis.pid, signal.SIGSTOP)

    def resume_redis(self) -> None:
        """SIGCONT Redis: it runs the commands that waited (their senders may have given up)."""
        if self.redis.process.poll() is None:
            os.kill(self.redis.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop both servers (each ``stop`` is a no-op when that server is not running)."""
        # A paused server ignores SIGTERM and SIGINT until it runs again.
        self.resume_redis()
        self.resume_postgres()
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()


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
            run_pg(postgres.url, apply_migrations)
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


# -- server processes ------------------------------------------------------------------------

@pytest.fixture
async def launch(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[Callable[..., Any]]:
    """Start ``flashflow serve`` subprocesses; every one (and every worker) is stopped by pid.

    Their logs are kept beside the figures, under ``logs/<test name>/``.
    """
    started: list[ServerProcess] = []

    async def go(settings: Settings, *args: str) -> ServerProcess:
        server = await trio.to_thread.run_sync(
            partial(spawn_server, settings, tmp_path, *args))
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


def worker_pids(server: ServerProcess) -> list[int]:
    """The worker processes of a ``--workers N`` supervisor (its direct children)."""
    try:
        return [child.pid for child in psutil.Process(server.process.pid).children()]
    except psutil.NoSuchProcess:
        return []


def established(pid: int, port: int) -> int:
    """TCP connections process ``pid`` holds on its listening ``port``."""
    try:
        return sum(1 for c in psutil.Process(pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
    except psutil.NoSuchProcess:
        return 0


def stop_server_tree(server: ServerProcess) -> None:
    """Stop a server and, should any survive it, its workers, each by its own pid."""
    workers = worker_pids(server)
    server.stop()
    for pid in workers:
        with suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.kill()
            process.wait(10)


async def wait_until_serving(base_url: str, timeout_s: float = 30.0, *,
                             checks: tuple[str, ...] = ("redis", "postgres")) -> float:
    """Wait until /readyz says Redis and PostgreSQL answer; return the seconds it took.

    Args:
        checks: the /readyz checks that must hold; add "gate" to wait until the current
            sale's gate is read through the Redis node that serves it.

    Raises:
        AssertionError: not ready within ``timeout_s``; names the last answer (or error).
    """
    started = trio.current_time()
    last: object = None
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    response = await client.get("/readyz")
                    last = response.status_code, response.text
                    held = response.json()["data"]["checks"]
                    if all(held[name] for name in checks):
                        return trio.current_time() - started
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    last = exc
                await trio.sleep(0.05)
    raise AssertionError(f"{base_url} not ready after {timeout_s} s; last /readyz: {last!r}")


#: What the README promises past ``purchase_wait_s``: the answer's own way out (a reservation
#: returned to Redis, the HTTP reply) on a busy 2-core machine.
ANSWER_SLACK_S = 2.0


def redis_fault_bound_s(settings: Settings) -> float:
    """The longest a purchase may take to be refused while Redis is down or stuck.

    The purchase wait bounds every step of a purchase, however many batches queue ahead of
    it in the gate or the limiter, so the bound is the wait plus the stated slack. A request
    that waited for Redis to come back would take the whole outage: tests keep the outage
    longer than this bound.
    """
    return settings.purchase_wait_s + ANSWER_SLACK_S


@asynccontextmanager
async def open_clients(*servers: ServerProcess, timeout_s: float = 15.0
                       ) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per server; a request that gets no answer in ``timeout_s`` is HUNG."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            httpx.AsyncClient(base_url=s.base_url, timeout=timeout_s, limits=limits))
            for s in servers]


def reconciler_returns(*servers: ServerProcess) -> int:
    """Reservations the reconcilers of these servers logged as put back on sale."""
    return sum(s.log_path.read_text(errors="replace").count(RETURNED_LOG_LINE) for s in servers)


def reconciler_claims(*servers: ServerProcess) -> int:
    """Committed purchases the reconcilers of these servers logged as claimed back."""
    return sum(int(m) for s in servers
               for m in re.findall(CLAIMED_LOG_LINE, s.log_path.read_text(errors="replace")))


def lines_in_logs(text: str, *servers: ServerProcess) -> int:
    """How many log lines of these servers contain ``text``."""
    return sum(line.count(text) > 0 for s in servers
               for line in s.log_path.read_text(errors="replace").splitlines())


# -- load ------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """One purchase attempt as the client saw it."""

    user: str
    phase: str
    status: int
    code: str | None
    purchase_id: str | None
    retry_after: str | None
    seconds: float
    #: ``time.monotonic()`` once the answer was in (for a batch of results: once recorded).
    answered_at: float = 0.0

    def as_record(self) -> Record:
        """This attempt as the load test's record (a hung request is one without an answer;
        times on the monotonic clock, which is all :func:`flashflow.invariants.verify` compares)."""
        status = NO_ANSWER if self.status == HUNG else self.status
        return Record(PURCHASE_KIND, self.user, status, self.answered_at - self.seconds,
                      self.seconds * 1000, purchase_id=self.purchase_id,
                      code=None if self.status == 201 else self.code)


@dataclass
class Recorder:
    """Every purchase attempt of a test, tagged with the phase it was sent in."""

    phase: str = "before"
    outcomes: list[Outcome] = field(default_factory=list)
    winners: dict[str, str] = field(default_factory=dict)

    async def press(self, client: httpx.AsyncClient, user: str) -> Outcome:
        """POST one purchase for ``user`` and record what came back."""
        phase, started = self.phase, time.perf_counter()
        try:
            response = await client.post(PURCHASE, json={"userId": user})
        except httpx.TimeoutException:
            return self._record(user, phase, started, HUNG)
        except httpx.TransportError:
            return self._record(user, phase, started, NO_ANSWER)
        return self._record(user, phase, started, response.status_code, response.content,
                            response.headers.get("Retry-After"))

    async def press_lightly(self, base_url: str, user: str, timeout_s: float = 60.0) -> Outcome:
        """:meth:`press` on a connection of its own, as a bare HTTP/1.1 exchange.

        A crowd of thousands pressing at once from one test process is held up by the
        client's own work per request; this costs a fraction of it, so the latency recorded
        is the server's (with the connection's set-up), not the test's.
        """
        phase, started = self.phase, time.perf_counter()
        url = httpx.URL(base_url)
        body = json.dumps({"userId": user}).encode()
        request = (f"POST {PURCHASE} HTTP/1.1\r\nHost: {url.host}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body
        received = bytearray()
        with trio.move_on_after(timeout_s) as waited:
            try:
                async with await trio.open_tcp_stream(url.host, url.port) as stream:
                    await stream.send_all(request)
                    while chunk := await stream.receive_some(65536):
                        received += chunk
            except (OSError, trio.BrokenResourceError):
                return self._record(user, phase, started, NO_ANSWER)
        if waited.cancelled_caught:
            return self._record(user, phase, started, HUNG)
        head, _, content = bytes(received).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return self._record(user, phase, started, NO_ANSWER)
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        return self._record(user, phase, started, status, content, headers.get("retry-after"))

    def _record(self, user: str, phase: str, started: float, status: int,
                content: bytes = b"", retry_after: str | None = None) -> Outcome:
        code, purchase_id = None, None
        with suppress(ValueError, KeyError, TypeError):
            body = json.loads(content)
            if status == 201:
                code, purchase_id = "CONFIRMED", body["data"]["purchaseId"]
            else:
                code = body["error"]["code"]
        outcome = Outcome(user, phase, status, code, purchase_id, retry_after,
                          time.perf_counter() - started, time.monotonic())
        self.outcomes.append(outcome)
        if purchase_id is not None:
            self.winners.setdefault(user, purchase_id)
        return outcome

    def add(self, phase: str, results: list[tuple[str, int, dict]]) -> None:
        """Record the results of ``tests.integration.test_stampede.stampede``."""
        recorded_at = time.monotonic()
        for user, status, body in results:
            data, error = body.get("data") or {}, body.get("error") or {}
            purchase_id = data.get("purchaseId") if status == 201 else None
            self.outcomes.append(Outcome(user, phase, status,
                                         "CONFIRMED" if status == 201 else error.get("code"),
                                         purchase_id, None, 0.0, recorded_at))
            if purchase_id is not None:
                self.winners.setdefault(user, purchase_id)

    def in_phase(self, *phases: str) -> list[Outcome]:
        """The attempts sent during any of ``phases``."""
        return [o for o in self.outcomes if o.phase in phases]


async def fault_under_load(recorder: Recorder, clients: list[httpx.AsyncClient],
                           users: list[str], settings: Settings, sale: Sale,
                           fault: Callable[[], object], *, sold_before: int = 80,
                           hold_s: float = 2.0, rate_per_s: float = 250) -> float:
    """Spam purchases, run ``fault`` once ``sold_before`` units sold, keep spamming ``hold_s``.

    Returns:
        The trio time at which the fault began.
    """
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(spam, recorder, clients, users, stop=stop,
                                   rate_per_s=rate_per_s))
        await wait_for_sold(settings, sale, sold_before, timeout_s=20)
        recorder.phase = "fault"
        await trio.to_thread.run_sync(fault)
        began = trio.current_time()
        await trio.sleep(hold_s)
        stop.set()
    return began


async def recover_and_sell_out(recorder: Recorder, clients: list[httpx.AsyncClient],
                               users: list[str], settings: Settings, sale: Sale,
                               stock: int) -> tuple[float, float]:
    """After a fault: spam until answers are healthy and the stock is sold, then one click each.

    Returns:
        (seconds until healthy, seconds until sold out).
    """
    from ..integration.test_stampede import stampede

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(spam, recorder, clients, users, stop=stop, rate_per_s=250))
        recovery_s = await recover(recorder)
        sell_out_s = await wait_for_sold(settings, sale, stock, timeout_s=40)
        stop.set()
    recorder.add("after", await stampede(clients, users, clicks=1))
    return recovery_s, sell_out_s


async def spam(recorder: Recorder, clients: list[httpx.AsyncClient], users: list[str], *,
               stop: trio.Event, rate_per_s: float, concurrency: int = 64,
               max_requests: int = 20_000, repeat_share: float = 0.1) -> None:
    """Open-loop purchase traffic at ``rate_per_s`` until ``stop`` is set.

    Mostly users who have not bought yet; ``repeat_share`` of the attempts are repeats by a
    winner. At most ``concurrency`` requests are in flight and ``max_requests`` are sent.
    """
    limiter = trio.CapacityLimiter(concurrency)

    async def one(user: str, client: httpx.AsyncClient) -> None:
        async with limiter:
            await recorder.press(client, user)

    pending = list(users)

    def newcomer() -> str | None:
        while pending:
            i = random.randrange(len(pending))
            if pending[i] not in recorder.winners:
                return pending[i]
            pending[i] = pending[-1]
            pending.pop()
        return None

    async with trio.open_nursery() as nursery:
        next_at, sent = trio.current_time(), 0
        while not stop.is_set() and sent < max_requests:
            user = newcomer()
            if recorder.winners and (user is None or random.random() < repeat_share):
                user = random.choice(list(recorder.winners))
            elif user is None:
                user = random.choice(users)
            nursery.start_soon(one, user, random.choice(clients))
            sent += 1
            next_at += 1 / rate_per_s
            await trio.sleep_until(next_at)


async def recover(recorder: Recorder, *, clean_run: int = 100, timeout_s: float = 15.0) -> float:
    """Switch ``recorder`` to phase "after" once ``clean_run`` answers in a row were not 5xx.

    Called with traffic running once the servers say they are ready again; what they
    answer in between is phase "recovering". Returns the seconds recovery took.
    """
    started, seen = trio.current_time(), len(recorder.outcomes)
    recorder.phase = "recovering"
    with trio.fail_after(timeout_s):
        while True:
            fresh = recorder.outcomes[seen:]
            tail = fresh[-clean_run:]
            if len(tail) == clean_run and all(200 <= o.status < 500 for o in tail):
                recorder.phase = "after"
                return trio.current_time() - started
            await trio.sleep(0.02)


async def press_until_final(recorder: Recorder, clients: list[httpx.AsyncClient],
                            users: list[str], *, rounds: int = 12, pause_s: float = 1.0,
                            concurrency: int = 64) -> int:
    """Each user presses once per round until their answer is final (201 or 409).

    A user answered 503 (or nothing) presses again next round, after ``pause_s`` (the
    servers' ``Retry-After``). Returns the rounds it took.

    Raises:
        AssertionError: some users still had no final answer after ``rounds`` rounds.
    """
    limiter = trio.CapacityLimiter(concurrency)
    left = list(users)

    async def one(user: str, client: httpx.AsyncClient, final: set[str]) -> None:
        async with limiter:
            outcome = await recorder.press(client, user)
        if outcome.status in (201, 409):
            final.add(user)

    for done in range(1, rounds + 1):
        final: set[str] = set()
        async with trio.open_nursery() as nursery:
            for user in left:
                nursery.start_soon(one, user, random.choice(clients), final)
        left = [u for u in left if u not in final]
        if not left:
            return done
        await trio.sleep(pause_s)
    raise AssertionError(f"{len(left)} users had no final answer after {rounds} rounds: "
                         f"{left[:5]}")


async def purchase_status(client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    """The status read ``GET .../current/purchase?userId=`` (its ``data``)."""
    response = await client.get(PURCHASE, params={"userId": user})
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()["data"]


# -- PostgreSQL and Redis as the tests read them ---------------------------------------------


@dataclass
class SoldWatch:
    """Polls ``flash_sales.sold`` to judge whether a ``SOLD_OUT`` was true when it was told.

    ``last_short_at`` is the latest ``time.monotonic()`` at which a poll *began* and then
    found fewer units committed than the stock. Rows never go away, so a ``SOLD_OUT``
    answered before that moment was told while units were still unsold. The check has no
    false alarms; it may miss a lie told within one poll of the sell-out.
    """

    settings: Settings
    sale: Sale
    poll_s: float = 0.05
    last_short_at: float = float("-inf")
    sold_out_at: float | None = None
    polls: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll until cancelled."""
        task_status.started()
        while True:
            began = time.monotonic()
            sold = await sold_counter(self.settings, self.sale)
            self.polls += 1
            if sold < self.sale.total_stock:
                self.last_short_at = max(self.last_short_at, began)
            elif self.sold_out_at is None:
                self.sold_out_at = time.monotonic()
            await trio.sleep(self.poll_s)

    def told_too_soon(self, outcomes: list[Outcome]) -> list[Outcome]:
        """The ``SOLD_OUT`` answers among ``outcomes`` told while units were unsold."""
        return [o for o in outcomes
                if o.code == "SOLD_OUT" and o.answered_at < self.last_short_at]




async def committed_rows(settings: Settings, sale: Sale) -> dict[str, str]:
    """user -> purchase id of every committed purchase of ``sale``."""
    return (await ledger_of(settings, sale.id)).purchases


async def sold_counter(settings: Settings, sale: Sale) -> int:
    """``flash_sales.sold`` of ``sale``."""
    return (await ledger_of(settings, sale.id)).sold


async def wait_for_sold(settings: Settings, sale: Sale, count: int, timeout_s: float) -> float:
    """Wait until ``count`` purchases of ``sale`` are committed; return the seconds it took."""
    started = trio.current_time()
    with trio.fail_after(timeout_s):
        while await sold_counter(settings, sale) < count:
            await trio.sleep(0.05)
    return trio.current_time() - started


async def wait_for_gate_to_agree(settings: Settings, sale: Sale, timeout_s: float) -> float:
    """Wait until Redis holds exactly the committed purchases; return the seconds it took.

    Raises:
        AssertionError: they still disagree after ``timeout_s`` (shows both sides).
    """
    started = trio.current_time()
    while True:
        rows = await committed_rows(settings, sale)
        stock, held = gate_state(settings, sale)
        if stock == sale.total_stock - len(rows) and held == rows:
            return trio.current_time() - started
        if trio.current_time() - started > timeout_s:
            extra = {u: p for u, p in held.items() if rows.get(u) != p}
            missing = {u: p for u, p in rows.items() if held.get(u) != p}
            raise AssertionError(
                f"after {timeout_s}s Redis stock={stock}, total={sale.total_stock}, "
                f"committed={len(rows)}; held without a row: {extra}; rows not held: {missing}")
        await trio.sleep(0.1)


#: A sale's gate read in one step: its stock, its holders and the holders still in doubt.
GATE_AT_ONCE = """
return {redis.call('GET', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        redis.call('ZRANGE', KEYS[3], 0, -1)}
"""


def gate_at_once(client: Any, settings: Settings, sale: Sale) -> tuple[GateSnapshot, set[str]]:
    """The gate of ``sale`` read in one script: its stock and holders, and the holders still
    pending. Read-only (``EVAL_RO``), so a replica answers it too (a cluster's once
    ``READONLY``)."""
    keys = sale_keys(settings.key_prefix, sale.id)
    stock, flat, pending = client.eval_ro(GATE_AT_ONCE, 3, keys.stock, keys.buyers,
                                          keys.pending)
    held = {flat[i]: parse_holder(flat[i + 1])[0] for i in range(0, len(flat), 2)}
    return GateSnapshot(None if stock is None else int(stock), held), set(pending)


def gate_law_breaks(client: Any, settings: Settings, sale: Sale) -> list[str]:
    """What keeps the gate of ``sale`` from the ledger's truth now, purchases flowing or not.

    The truth: every committed buyer is a holder under their purchase id; every other
    holder is a reservation still in doubt (pending); stock = total - holders. With nothing
    pending that is exactly: the holders are the committed buyers, stock = total -
    committed. The gate is read in one script, the rows before it (for the first rule) and
    after it (for the second), so a commit landing meanwhile breaks neither.

    Args:
        client: a synchronous client on the test's Redis (:func:`tests.helpers.redis_client`).
    """
    before = ledger_snapshot(settings.database_url, sale.id).purchases
    gate, pending = gate_at_once(client, settings, sale)
    after = ledger_snapshot(settings.database_url, sale.id).purchases
    held = gate.buyers
    breaks = []
    missing = sorted(u for u, pid in before.items() if held.get(u) != pid)
    if missing:
        breaks.append(f"{len(missing)} committed buyers not held: {missing[:3]}")
    unbacked = sorted(u for u, pid in held.items() if u not in pending and after.get(u) != pid)
    if unbacked:
        breaks.append(f"{len(unbacked)} holders neither committed nor pending: {unbacked[:3]}")
    if gate.stock != sale.total_stock - len(held):
        breaks.append(f"stock {gate.stock} for total {sale.total_stock} and {len(held)} holders")
    return breaks


async def wait_for_gate_law(settings: Settings, sale: Sale, timeout_s: float) -> float:
    """Wait until :func:`gate_law_breaks` finds nothing; return ``time.monotonic()`` then.

    Redis errors (a failover under way) count as not yet.

    Raises:
        AssertionError: still broken after ``timeout_s``; says how.
    """
    client = redis_client(settings)
    last: object = None
    try:
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    last = await trio.to_thread.run_sync(gate_law_breaks, client, settings, sale)
                except redis.RedisError as exc:
                    last = exc
                if last == []:
                    return time.monotonic()
                await trio.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"the gate was not the ledger's truth after {timeout_s} s: {last}")


# -- a Redis that stops answering ------------------------------------------------------------


class StuckableProxy:
    """A TCP proxy to Redis that can get stuck: it still accepts, but nothing goes through.

    While stuck, bytes already sent stay in the proxy (neither dropped nor forwarded) and a
    new connection is accepted and never answered, as with a hung server. Unsticking lets
    everything through again, in order.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()
        self.connections = 0

    def stick(self) -> None:
        """Stop forwarding anything, in both directions and for new connections."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def unstick(self) -> None:
        """Forward again."""
        self._flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (given to ``task_status``) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            await self._flowing.wait()
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.receive_some(65536)
                if not data:
                    return
                await self._flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            scope.cancel()


# -- invariants and figures ------------------------------------------------------------------


def latency_figures(outcomes: list[Outcome]) -> dict[str, float | None]:
    """Median, 99th percentile and maximum client-side latency of ``outcomes``, in ms."""
    seconds = sorted(o.seconds for o in outcomes)
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p99_ms": round(seconds[int(len(seconds) * 0.99)] * 1000, 1),
            "max_ms": round(seconds[-1] * 1000, 1)}


async def check_sale_after_faults(settings: Settings, sale: Sale, recorder: Recorder, *,
                                  expected_sold: int, settle_s: float) -> dict[str, Any]:
    """The exact invariants of a sale that lived through faults; returns the figures.

    Every attempt is held to :func:`flashflow.invariants.verify`, those sent before recovery
    (any phase but "after") as sent while the fault lasted: a 503 or no answer there is no
    break, and a row without a 201 may be a commit whose reply it lost. On top of that:
    every 503 carries Retry-After, nothing hung, after recovery only 201 and 409, exactly
    ``expected_sold`` committed. Redis is first given ``settle_s`` to agree with the ledger
    (the reconciler may still be returning reservations).
    """
    outcomes = recorder.outcomes
    statuses = Counter(o.status for o in outcomes)
    other_5xx = [o for o in outcomes if o.status >= 500 and o.status != 503]
    hung = [o for o in outcomes if o.status == HUNG]
    assert not hung, f"{len(hung)} requests hung past the client timeout"
    no_retry_after = [o for o in outcomes if o.status == 503 and not o.retry_after]
    assert not no_retry_after, f"503 without Retry-After: {no_retry_after[:5]}"
    after = Counter(o.status for o in recorder.in_phase("after"))
    assert set(after) <= {201, 409}, f"after recovery: {after}"

    await wait_for_gate_to_agree(settings, sale, settle_s)
    records = [o.as_record() for o in outcomes]
    faulted = [r for o, r in zip(outcomes, records, strict=True) if o.phase != "after"]
    ledger, gate = await judge(settings, sale, records, faulted=faulted)
    rows, stock = ledger.purchases, gate.stock
    assert len(rows) == expected_sold
    assert ledger.sold == expected_sold
    unconfirmed = set(rows) - {o.user for o in outcomes if o.status == 201}

    told_already = {o.user for o in outcomes if o.code == "ALREADY_PURCHASED"}
    told_sold_out = {o.user for o in outcomes if o.code == "SOLD_OUT"}
    return {
        "requests": len(outcomes),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "committed": len(rows),
        "total_stock": sale.total_stock,
        "redis_stock_at_end": stock,
        "five_xx_other_than_503": len(other_5xx),
        "five_xx_after_recovery": sum(v for k, v in after.items() if k >= 500),
        "committed_without_a_201": len(unconfirmed),
        "already_purchased_told_to_users_without_a_row": len(told_already - set(rows)),
        "sold_out_told_to_users_who_then_bought": len(told_sold_out & set(rows)),
    }


def phase_figures(recorder: Recorder, *phases: str) -> dict[str, Any]:
    """Counts and latencies of the attempts sent during ``phases``."""
    chosen = recorder.in_phase(*phases)
    statuses = Counter(o.status for o in chosen)
    return {
        "requests": len(chosen),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "503": statuses.get(503, 0),
        "503_with_retry_after": sum(1 for o in chosen if o.status == 503 and o.retry_after),
        "no_http_answer": statuses.get(NO_ANSWER, 0),
        "five_xx_other_than_503": sum(v for k, v in statuses.items() if k >= 500 and k != 503),
        "latency_all": latency_figures(chosen),
        "latency_503": latency_figures([o for o in chosen if o.status == 503]),
        "latency_no_http_answer": latency_figures([o for o in chosen if o.status == NO_ANSWER]),
    }


def figures_dir() -> Path:
    """Where the figures go: ``$FLASHFLOW_FAULT_FIGURES_DIR``, else a fixed temp folder."""
    configured = os.environ.get("FLASHFLOW_FAULT_FIGURES_DIR")
    directory = Path(configured) if configured else Path(tempfile.gettempdir()) / "flashflow-faults"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


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


async def check_exact_end(figures: dict[str, Any], settings: Settings, sale: Sale,
                          recorder: Recorder, servers: list[ServerProcess], *,
                          recovery: tuple[float, float]) -> None:
    """Record the figures of the recovery and after it, then hold the sale to
    :func:`check_sale_after_faults` (every unit sold), adding its figures.

    Args:
        recovery: what :func:`recover_and_sell_out` returned.
    """
    figures.update(
        recovering=phase_figures(recorder, "recovering"),
        seconds_to_recover=round(recovery[0], 2),
        seconds_to_sell_out_after_recovery=round(recovery[1], 2),
        after=phase_figures(recorder, "after"),
    )
    figures.update(await check_sale_after_faults(
        settings, sale, recorder, expected_sold=sale.total_stock,
        settle_s=settings.reservation_grace_s + settings.reconcile_interval_s + 3))
    figures["reconciler_returned"] = reconciler_returns(*servers)
