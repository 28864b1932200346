"""Start ``flashflow up`` on the embedded default for a load test, and stop it again; and
the environment every Flash Flow server a load tool starts runs with (:func:`server_env`).

The child prints where its embedded PostgreSQL and Redis run and where it listens; those
lines are all the load test needs to drive and verify it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flashflow.processes import stop_process

_LISTENING = re.compile(r"Flash Flow listening on (\S+)")
_EMBEDDED = re.compile(r"started embedded (PostgreSQL|Redis) \(pid \d+\) at (\S+)")


class ServerStartError(RuntimeError):
    """The server exited or did not announce its address in time."""


@dataclass
class UpServer:
    """A ``flashflow up`` child and what it announced.

    Attributes:
        process: the child, owned by this process.
        url: where the API listens.
        database_url: the PostgreSQL it uses.
        redis_url: the Redis it uses.
        key_prefix: its Redis key prefix.
        output: every line it printed so far.
    """

    process: subprocess.Popen
    url: str
    database_url: str
    redis_url: str
    key_prefix: str
    output: list[str]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT (as Ctrl-C: the CLI stops its embedded servers), wait, kill if it hangs."""
        return stop_process(self.process, signal.SIGINT, timeout_s)


def server_env(**settings: str) -> dict[str, str]:
    """The environment of a server a load tool starts: this process's without its
    ``FLASHFLOW_*`` variables, then ``settings``, warnings only, and no per-address rate
    limit (the whole crowd comes from one address here: the limit would turn most of it
    away with 429, and measure itself rather than the server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHFLOW_")}
    env.update(FLASHFLOW_LOG_LEVEL="WARNING", FLASHFLOW_RATE_LIMIT_ENABLED="false", **settings)
    return env


def start_embedded(data_dir: Path, key_prefix: str, timeout_s: float = 90.0) -> UpServer:
    """Run ``flashflow up --port 0 --data-dir data_dir`` and wait for it to listen.

    Raises:
        ServerStartError: it exited first, or said nothing about listening in time.
    """
    env = server_env(FLASHFLOW_KEY_PREFIX=key_prefix)
    # The per-address limit stays off unless the caller asks for it explicitly.
    for name in ("FLASHFLOW_DATABASE_URL", "FLASHFLOW_REDIS_URL", "FLASHFLOW_RATE_LIMIT_ENABLED",
                 "FLASHFLOW_AUTH_JWT_SECRET", "FLASHFLOW_AUTH_JWT_ISSUER",
                 "FLASHFLOW_AUTH_JWT_AUDIENCE", "FLASHFLOW_ADMIN_TOKEN"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    process = subprocess.Popen(
        [sys.executable, "-m", "flashflow.cli", "up", "--port", "0", "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    output: list[str] = []
    found: dict[str, str] = {"PostgreSQL": env.get("FLASHFLOW_DATABASE_URL", ""),
                             "Redis": env.get("FLASHFLOW_REDIS_URL", "")}
    listening = threading.Event()

    def read() -> None:
        # Keep draining after start-up so the child never blocks on a full pipe.
        for line in process.stdout:
            output.append(line.rstrip())
            if match := _EMBEDDED.search(line):
                found[match.group(1)] = match.group(2)
            elif match := _LISTENING.search(line):
                found["API"] = match.group(1)
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    listening.wait(timeout_s)
    server = UpServer(process, found.get("API", ""), found["PostgreSQL"], found["Redis"],
                            key_prefix, output)
    if not server.url or time.monotonic() > deadline:
        server.stop()
        tail = "\n".join(output[-20:])
        raise ServerStartError(f"flashflow up did not start listening:\n{tail}")
    return server
