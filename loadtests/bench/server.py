"""The server under benchmark: a fresh database and key prefix, ``flashflow serve`` in a
child process, and a sampler of its CPU time and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from flashflow.database import execute, run_on_connection, with_database
from flashflow.embedded import free_port
from flashflow.http import wire
from flashflow.migrate import apply_migrations
from flashflow.processes import stop_process


async def _insert_sale(conn: Any, stock: int) -> uuid.UUID:
    start = datetime.now(UTC) - timedelta(seconds=1)
    return await conn.fetchval(
        "INSERT INTO flash_sales (product_name, total_stock, start_time, end_time) "
        "VALUES ('Bench Sneakers', $1, $2, $3) RETURNING id", stock, start,
        start + timedelta(hours=2))


@dataclass
class Backend:
    """A database of its own (migrated, holding one active sale) and a key prefix of its own."""

    admin_url: str
    redis_url: str
    name: str = field(default_factory=lambda: f"ff_bench_{uuid.uuid4().hex[:10]}")
    key_prefix: str = field(default_factory=lambda: f"ffwrk:{uuid.uuid4().hex[:10]}:")
    sale_id: uuid.UUID | None = None

    @property
    def database_url(self) -> str:
        """The URL of this backend's own database."""
        return with_database(self.admin_url, self.name)

    def create(self, stock: int) -> Backend:
        """Create and migrate the database and schedule the sale; return self."""
        run_on_connection(self.admin_url, execute, f'CREATE DATABASE "{self.name}"')
        run_on_connection(self.database_url, apply_migrations)
        self.sale_id = run_on_connection(self.database_url, _insert_sale, stock)
        return self

    def drop(self) -> None:
        """Drop the database and delete the key prefix's Redis keys."""
        run_on_connection(self.admin_url, execute,
                          f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


class Sampler:
    """Samples the resident memory of a process tree in a background thread."""

    def __init__(self, root: psutil.Process, every_s: float = 0.2) -> None:
        self._root = root
        self._every_s = every_s
        self._stop = threading.Event()
        self.peak_rss = 0
        self.peak_process_rss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._every_s)

    def sample(self) -> int:
        """Record the tree's resident memory now; return it in bytes."""
        total = 0
        for process in tree(self._root):
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peak_process_rss = max(self.peak_process_rss, rss)
        self.peak_rss = max(self.peak_rss, total)
        return total

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def tree(root: psutil.Process) -> list[psutil.Process]:
    """The process and its live descendants."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(root: psutil.Process) -> float:
    """CPU time (user + system) the process tree has used so far."""
    total = 0.0
    for process in tree(root):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


@dataclass
class BenchServer:
    """A server under benchmark in a child process on a free loopback port: ``flashflow
    serve`` against one :class:`Backend`, or one of the ceilings."""

    process: subprocess.Popen
    url: str
    log_path: Path
    sampler: Sampler

    @property
    def root(self) -> psutil.Process:
        """The server's top process (the supervisor, when there are workers)."""
        return psutil.Process(self.process.pid)

    @classmethod
    def start(cls, backend: Backend, workers: int, log_dir: Path,
              auth_secret: str | None = None, timeout_s: float = 60.0) -> BenchServer:
        """Start ``flashflow serve`` and wait until it is ready to sell; with
        ``auth_secret``, buyers must carry tokens signed with it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHFLOW_")}
        # One machine plays the whole crowd from one address: the per-address rate limit
        # would measure itself, not the server.
        env.update(FLASHFLOW_DATABASE_URL=backend.database_url,
                   FLASHFLOW_REDIS_URL=backend.redis_url, FLASHFLOW_KEY_PREFIX=backend.key_prefix,
                   FLASHFLOW_LOG_LEVEL="WARNING", FLASHFLOW_RATE_LIMIT_ENABLED="false")
        if auth_secret is not None:
            env["FLASHFLOW_AUTH_JWT_SECRET"] = auth_secret
        return cls.launch(
            lambda port: [sys.executable, "-m", "flashflow.cli", "serve", "--port", str(port),
                          "--workers", str(workers)],
            env, log_dir, (wire.CURRENT, wire.READYZ), timeout_s)

    @classmethod
    def launch(cls, command: Callable[[int], list[str]], env: dict[str, str], log_dir: Path,
               ready_paths: tuple[str, ...], timeout_s: float = 60.0) -> BenchServer:
        """Run ``command(port)`` and wait until every one of ``ready_paths`` answers 200."""
        port = free_port()
        log_path = log_dir / f"server-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command(port), env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        server = cls(process, f"http://127.0.0.1:{port}", log_path,
                     Sampler(psutil.Process(process.pid)))
        try:
            server.wait_ready(ready_paths, timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, paths: tuple[str, ...], timeout_s: float) -> None:
        """Wait until every one of ``paths`` answers 200."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    if all(client.get(path).status_code == 200 for path in paths):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout_s}s: {self.log_path.read_text()[-2000:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; return the exit code."""
        self.sampler.close()
        workers = tree(self.root)[1:] if self.process.poll() is None else []
        stop_process(self.process, signal.SIGTERM, timeout_s)
        for worker in workers:  # only these pids: workers a killed supervisor left behind
            with suppress(psutil.Error):
                worker.kill()
        return self.process.returncode
