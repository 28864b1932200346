"""Run wrk with one of the benchmark's Lua scripts and read back what it measured."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

WRK = "wrk"


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured.

    Attributes:
        requests: responses received.
        duration_s: wall time of the run as wrk measured it.
        p50_ms, p90_ms, p99_ms, max_ms: latency percentiles over every request.
        answers: responses by ``"<status>[ <error code>]"``.
        socket_errors: connect, read, write and timeout errors.
        won: (user, purchase id) of every 201 seen by a purchase script.
        cpu_s: CPU time (user + system) wrk itself used.
    """

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    answers: dict[str, int]
    socket_errors: dict[str, int]
    won: list[tuple[str, str]] = field(repr=False)
    cpu_s: float

    @property
    def per_s(self) -> float:
        """Responses per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def token_files(directory: Path, secret: str, prefix: str, threads: int, count: int) -> str:
    """Mint the tokens the purchase and status scripts send, as their third argument wants.

    Thread i gets ``count`` tokens, for users ``<prefix>-<i>-1`` to ``<prefix>-<i>-<count>``,
    in ``tokens-<prefix>-<i>.txt``; returns the path with ``{id}`` in place of i.
    """
    from flashflow.settings import Settings
    from flashflow.tokens import mint

    settings = Settings(auth_jwt_secret=secret)
    template = str(directory / f"tokens-{prefix}-{{id}}.txt")
    for thread in range(1, threads + 1):
        lines = (mint(settings, f"{prefix}-{thread}-{n}", ttl_s=4 * 3600)
                 for n in range(1, count + 1))
        Path(template.replace("{id}", str(thread))).write_text("\n".join(lines) + "\n")
    return template


def available() -> str | None:
    """The path of wrk, or None when it is not installed."""
    return shutil.which(WRK)


def run(url: str, script: str, *, connections: int, threads: int, duration_s: float,
        args: tuple[str, ...] = (), timeout_s: float | None = None) -> WrkResult:
    """Run wrk against ``url`` with the Lua ``script`` text and parse its result.

    Raises:
        WrkError: wrk is missing, exits non-zero, or prints no ``WRK_JSON`` line.
    """
    binary = available()
    if binary is None:
        raise WrkError("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="flashflow-wrk-") as tmp:
        script_path, out_path, err_path = (Path(tmp) / n for n in ("s.lua", "out", "err"))
        script_path.write_text(script)
        command = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s",
                   "--timeout", "10s", "-s", str(script_path), url, "--", *args]
        # Output goes to files: a long list of WON lines would fill a pipe and stall wrk.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + (timeout_s or duration_s + 60)
        # wait4 hands back the child's own resource usage: wrk's CPU, exactly.
        interrupted = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not interrupted and out_path.read_bytes().count(b"THREAD_DONE") >= threads:
                # Every thread has its answers; SIGINT makes wrk report now, not at -d.
                process.send_signal(signal.SIGINT)
                interrupted = True
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = out_path.read_text(), err_path.read_text()
    return parse(stdout, stderr, process.returncode, usage.ru_utime + usage.ru_stime)


def parse(stdout: str, stderr: str, returncode: int, cpu_s: float) -> WrkResult:
    """Read the ``WRK_JSON`` and ``WON`` lines of a run's output."""
    found = [line for line in stdout.splitlines() if line.startswith("WRK_JSON ")]
    if returncode != 0 or not found:
        raise WrkError(f"wrk exited {returncode}: {(stderr or stdout)[-2000:]}")
    data = json.loads(found[-1].removeprefix("WRK_JSON "))
    won = [tuple(line.split()[1:3]) for line in stdout.splitlines() if line.startswith("WON ")]
    return WrkResult(
        requests=data["requests"], duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000,
        answers=dict(sorted(data["answers"].items())),
        socket_errors={k: v for k, v in data["errors"].items() if k != "status"},
        won=won, cpu_s=cpu_s)
