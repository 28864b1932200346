"""Locust as a child process of ``python -m loadtests``: its command line and its lifetime."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The stampede's locust file, and the waiting room's.
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
LINE_LOCUSTFILE = Path(__file__).resolve().parent / "line_locustfile.py"


class RunError(RuntimeError):
    """The load test could not run (as opposed to: it ran and an invariant broke)."""


def locust_base(args: argparse.Namespace, locustfile: Path, host: str, records: Path,
                tag: str) -> list[str]:
    """The part of a locust command line every run shares: the file, the host, the records,
    the users' tag, headless (or with the web UI) and the processes."""
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--host", host,
               "--stop-timeout", "15", "--exit-code-on-error", "0", "--only-summary",
               "--loglevel", "WARNING", "--user-tag", tag, "--record-dir", str(records)]
    command += ["--autostart", "--autoquit", "5"] if args.web else ["--headless"]
    if args.processes != 1:
        command += ["--processes", str(args.processes)]
    return command


def run_locust(command: list[str], log_path: Path, timeout_s: float) -> None:
    """Run locust to the end of its shape; stop it (SIGTERM, then SIGKILL) past ``timeout_s``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout_s)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    if code != 0:
        raise RunError(f"locust exited with {code}; see {log_path}")
