"""The fault test's own PostgreSQL and Redis, and the faults done to them.

Every backend is started by the test itself from the wheels (``flashflow.embedded``) and is
killed, stopped, paused and restarted by its process id only: the machine's own PostgreSQL
and Redis are never touched. A Redis that stops answering without stopping is a
:class:`StuckableProxy` in front of it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from flashflow.embedded import EmbeddedServer, start_postgres, start_redis

from ..helpers import continue_all, stop_tree


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
        self.paused_postgres = stop_tree(self.postgres.pid)

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
        continue_all(paused)  # the backends first, the postmaster last

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
