"""Tests for the embedded PostgreSQL and Redis servers, against the real binaries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from flashflow.embedded import (
    POSTGRES_BIN_PATH,
    EmbeddedServer,
    EmbeddedServerError,
    embedded_services,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data directory outside pytest's own temporary root.

    Under root, PostgreSQL runs as another user that must traverse the whole path, and every
    pytest session resets ``/tmp/pytest-of-root`` to mode 0700, which breaks an initdb that a
    concurrent session is running below it.
    """
    with tempfile.TemporaryDirectory(prefix="flashflow-embedded-test-") as name:
        yield Path(name)


def psql(server: EmbeddedServer, sql: str) -> str:
    """Runs ``sql`` through the wheel's psql against ``server.url`` and returns the rows."""
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), server.url, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=10, check=True,
    )
    return result.stdout.strip()


def assert_gone(server: EmbeddedServer) -> None:
    """Asserts the server process and every process in its group have exited."""
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    # The group catches postgres backends and auxiliary processes, not just the postmaster.
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)


def test_services_answer_and_stop(data_dir: Path) -> None:
    """Both servers answer real requests on their URLs and are gone once the block exits."""
    with embedded_services(data_dir) as (postgres, rds):
        assert postgres.url.startswith("postgresql://postgres@127.0.0.1:")
        assert postgres.url.endswith("/flashflow")
        assert psql(postgres, "SELECT current_database(), 6 * 7") == "flashflow|42"

        assert rds.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(rds.url, socket_timeout=5)
        try:
            assert client.ping()
            client.set("stock:sku-1", "17")
            assert client.get("stock:sku-1") == b"17"
        finally:
            client.close()
    assert_gone(postgres)
    assert_gone(rds)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_stop_is_idempotent(data_dir: Path) -> None:
    """Stopping a server twice is harmless and leaves it stopped."""
    server = start_redis(data_dir)
    try:
        server.stop()
        server.stop()
    finally:
        server.stop()
    assert_gone(server)


def test_restart_keeps_data_and_skips_initdb(data_dir: Path) -> None:
    """A second start on the same data dir keeps tables and does not run initdb again."""
    first = start_postgres(data_dir)
    try:
        psql(first, "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (7)")
    finally:
        first.stop()
    assert_gone(first)
    pg_version_mtime = (data_dir / "postgres" / "PG_VERSION").stat().st_mtime_ns

    second = start_postgres(data_dir)
    try:
        assert psql(second, "SELECT id FROM orders") == "7"
    finally:
        second.stop()
    assert_gone(second)
    assert (data_dir / "postgres" / "PG_VERSION").stat().st_mtime_ns == pg_version_mtime
    log = (data_dir / "postgres.log").read_text()
    assert log.count("creating configuration files") == 1


@pytest.mark.parametrize("stale_pid", ["killed_server", "unrelated_process"])
def test_stale_postmaster_pid_does_not_block_start(
    data_dir: Path, stale_pid: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A postmaster.pid left by a killed server, or naming a non-postgres PID, is ignored."""
    killed = start_postgres(data_dir)
    bystander = None
    try:
        psql(killed, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
        os.killpg(killed.pid, signal.SIGKILL)
        killed.process.wait(timeout=10)
        lock = data_dir / "postgres" / "postmaster.pid"
        assert lock.exists()
        if stale_pid == "unrelated_process":
            # A live PID that is not a postmaster, as after a container restart reuses PIDs.
            bystander = subprocess.Popen(["sleep", "60"])
            lines = lock.read_text().split("\n")
            lock.write_text("\n".join([str(bystander.pid), *lines[1:]]))

        restarted = start_postgres(data_dir)
        try:
            assert psql(restarted, "SELECT v FROM kept") == "yes"
            assert "removing stale" in caplog.text
            assert int(lock.read_text().split("\n")[0]) == restarted.pid
        finally:
            restarted.stop()
        assert_gone(restarted)
    finally:
        killed.stop()
        if bystander is not None:
            bystander.kill()
            bystander.wait()


def assert_start_fails_on(port: int, data_dir: Path) -> None:
    """Asserts both starts on ``port`` fail quickly with the bind error from their log."""
    for start in (start_redis, start_postgres):
        server = None
        started = time.monotonic()
        try:
            with pytest.raises(EmbeddedServerError, match=r"(?i)address already in use"):
                server = start(data_dir, port=port, timeout_s=60)
        finally:
            if server is not None:
                server.stop()
        # Well inside the timeout: the early exit is noticed, not waited out.
        assert time.monotonic() - started < 15


def started_since(before: set[int]) -> set[int]:
    """The live processes this process started since ``before`` (its children's pids then).

    The suite's session-wide embedded servers are children too when no
    ``FLASHFLOW_TEST_*`` URL is set; they and the backends they fork are left out.
    """
    found = set()
    for child in psutil.Process().children():
        if child.pid not in before:
            found |= {child.pid, *(p.pid for p in child.children(recursive=True))}
    return found


def child_pids() -> set[int]:
    """The pids of this process's direct children."""
    return {child.pid for child in psutil.Process().children()}


def test_port_in_use_raises_with_log(data_dir: Path) -> None:
    """A server that cannot bind its port fails fast with its log and leaves no process behind."""
    before = child_pids()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        assert_start_fails_on(blocker.getsockname()[1], data_dir / "second")
    assert started_since(before) == set()


def test_port_answered_by_another_server_raises(data_dir: Path) -> None:
    """A start never mistakes another server answering on its port for itself."""
    before = child_pids()
    with embedded_services(data_dir / "first") as (postgres, rds):
        for holder in (postgres, rds):
            port = int(holder.url.rsplit(":", 1)[1].split("/")[0])
            assert_start_fails_on(port, data_dir / f"second-{holder.name}")
        assert psql(postgres, "SELECT 1") == "1"
        assert child_pids() - before == {postgres.pid, rds.pid}
