"""The server under benchmark: a scratch database and key prefix with one sale (the load
harness's, :mod:`flashflow.capacity.harness`), ``flashflow serve`` in a child process, and a sampler
of its CPU time and memory."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from flashflow.capacity.harness import Scratch, create_sale, open_scratch
from flashflow.embedded import free_port
from flashflow.http import wire
from flashflow.processes import stop_process

from ..server import server_env

#: What the scratch databases and key prefixes of the benchmarks are named after.
TAG = "ffbench"
#: How long a benchmark's sale lasts: longer than any run.
SALE_LASTS_S = 2 * 3600


@contextmanager
def bench_sale(admin_url: str, redis_url: str, stock: int) -> Iterator[tuple[Scratch, uuid.UUID]]:
    """A scratch database and key prefix holding one active sale of ``stock``, removed
    afterwards; yields them and the sale's id."""
    with open_scratch(admin_url, redis_url, TAG) as scratch:
        sale = create_sale(scratch.database_url, "Bench Sneakers", stock, SALE_LASTS_S)
        yield scratch, sale.id


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
    serve`` against one :class:`~flashflow.capacity.harness.Scratch`, or one of the ceilings."""

    process: subprocess.Popen
    url: str
    log_path: Path
    sampler: Sampler

    @property
    def root(self) -> psutil.Process:
        """The server's top process (the supervisor, when there are workers)."""
        return psutil.Process(self.process.pid)

    @classmethod
    def start(cls, scratch: Scratch, workers: int, log_dir: Path,
              auth_secret: str | None = None, timeout_s: float = 60.0) -> BenchServer:
        """Start ``flashflow serve`` and wait until it is ready to sell; with
        ``auth_secret``, buyers must carry tokens signed with it."""
        env = server_env(FLASHFLOW_DATABASE_URL=scratch.database_url,
                         FLASHFLOW_REDIS_URL=scratch.redis_url,
                         FLASHFLOW_KEY_PREFIX=scratch.key_prefix)
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
