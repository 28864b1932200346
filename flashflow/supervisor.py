"""Run N server processes on one listening socket, and keep them running.

The supervisor binds the socket once and hands it to each worker (``fd://``), so every
worker accepts on the same port. Correctness across workers rests on Redis and
PostgreSQL, not on process memory. A worker that dies is started again under the declared
``RESTART`` policy; SIGINT or SIGTERM is passed on to every worker, which then drains within
the graceful timeout. A second signal while they drain stops at once: every worker is
killed, and the supervisor exits 1.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import multiprocess

from actors import Backoff

from .settings import LISTEN_BACKLOG, Settings

log = logging.getLogger(__name__)

#: Waits before starting a worker that died again: 0.5 s, doubling, at most 5 s.
RESTART = Backoff(initial_s=0.5, max_s=5.0)
#: A worker that ran this long before dying is restarted as if for the first time.
STABLE_AFTER_S = 30.0
#: How long past the graceful timeout a stopping worker gets to close its actors before
#: it is killed.
KILL_AFTER_S = 5.0


def stop_deadline_s(settings: Settings) -> float:
    """The longest a stop takes before the workers still running are killed; whatever stops
    the server (a container runtime, say) must wait longer than this before its SIGKILL."""
    return settings.graceful_timeout_s + KILL_AFTER_S


class WorkerExited(Exception):
    """A worker process exited while the supervisor was not stopping it."""

    def __init__(self, index: int, pid: int, code: int) -> None:
        super().__init__(f"worker {index} (pid {pid}) exited with {code}")
        self.index, self.pid, self.code = index, pid, code


class ForcedStop(Exception):
    """A second SIGINT or SIGTERM arrived while the workers were draining."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name} while stopping")
        self.signum = signum


class Restarts:
    """One worker's runs as attempts of the ``RESTART`` policy: each exit is a failed one."""

    def __init__(self, policy: Backoff = RESTART) -> None:
        self._attempts = iter(policy.forever(WorkerExited))
        self._attempt = next(self._attempts)
        self._attempt.__enter__()

    def failed(self, exited: WorkerExited) -> None:
        """Record the exit and wait as long as the policy says before the next run."""
        self._attempt.__exit__(WorkerExited, exited, None)
        self._attempt = next(self._attempts)  # sleeps the policy's wait
        self._attempt.__enter__()


def listening_socket(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A bound, listening TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def bound_url(sock: socket.socket) -> str:
    """The http:// address a listening socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Worker:
    """One worker process and its restart bookkeeping."""

    index: int
    process: subprocess.Popen
    restarts: Restarts = field(default_factory=Restarts)
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.workers: list[Worker] = []
        self.stopping = False
        #: True while :meth:`stop` waits for the workers to drain.
        self.draining = False

    def spawn(self, index: int) -> subprocess.Popen:
        """Start worker ``index`` on the shared socket."""
        fd = self.sock.fileno()
        command = [sys.executable, "-m", "flashflow.cli", "worker", "--fd", str(fd)]
        # The worker builds its settings from these: the same as the supervisor's, the
        # command's options (--log-level, the URLs) and the metrics directory included.
        env = self.settings.process_env()
        # Own session: a Ctrl-C in the terminal reaches the supervisor only, which then
        # stops the workers in order instead of every process at once.
        return subprocess.Popen(command, pass_fds=(fd,), env=env, start_new_session=True)

    def start(self) -> None:
        """Start every worker."""
        self.workers = [Worker(i, self.spawn(i)) for i in range(self.settings.workers)]
        log.info("started %d workers: %s", len(self.workers),
                 ", ".join(str(w.process.pid) for w in self.workers))

    def watch_once(self) -> None:
        """Restart any worker that exited while the supervisor is not stopping."""
        for worker in self.workers:
            code = worker.process.poll()
            if code is None or self.stopping:
                continue
            exited = WorkerExited(worker.index, worker.process.pid, code)
            if time.monotonic() - worker.started_at > STABLE_AFTER_S:
                worker.restarts = Restarts()
            log.warning("%s; restarting it", exited)
            self.forget_metrics(worker.process.pid)
            worker.restarts.failed(exited)
            worker.process = self.spawn(worker.index)
            worker.started_at = time.monotonic()

    def forget_metrics(self, pid: int) -> None:
        """Drop an exited worker's live gauges; its counters stay, so totals never go back."""
        if self.settings.metrics_dir is not None:
            multiprocess.mark_process_dead(pid, str(self.settings.metrics_dir))

    def stop(self) -> list[int]:
        """SIGTERM every worker, wait for them to drain, SIGKILL the stragglers."""
        self.stopping = self.draining = True
        try:
            for worker in self.workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + stop_deadline_s(self.settings)
            codes = []
            for worker in self.workers:
                try:
                    codes.append(worker.process.wait(max(deadline - time.monotonic(), 0.1)))
                except subprocess.TimeoutExpired:
                    log.error("worker pid %d did not stop in time; killing it",
                              worker.process.pid)
                    worker.process.kill()
                    codes.append(worker.process.wait())
            return codes
        finally:
            self.draining = False

    def kill(self) -> list[int]:
        """SIGKILL every worker still running and reap them all."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
        return [worker.process.wait() for worker in self.workers]


def supervise(settings: Settings, announce: Callable[[str], None]) -> int:
    """Run ``settings.workers`` workers until SIGINT or SIGTERM; return an exit code."""
    sock = listening_socket(settings.host, settings.port)
    # Every worker writes its metrics here, so /metrics adds them up whichever answers.
    metrics_dir = tempfile.TemporaryDirectory(prefix="flashflow-metrics-")
    if settings.metrics_dir is None:
        settings = settings.override(metrics_dir=Path(metrics_dir.name))
    supervisor = Supervisor(settings, sock)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if supervisor.draining:
            # Raised in the main thread, out of whatever the stop is waiting on.
            raise ForcedStop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        announce(bound_url(sock))
        while not received:
            supervisor.watch_once()
            time.sleep(0.2)
        log.info("received %s; stopping workers", signal.Signals(received[0]).name)
        try:
            codes = supervisor.stop()
        except ForcedStop as again:
            log.warning("%s; killing the workers", again)
            supervisor.kill()
            return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
        metrics_dir.cleanup()
    # A worker still starting up when asked to stop dies of the SIGTERM itself: it held no
    # requests, so that is a clean stop too.
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
