"""Smoke test: ``flashflow up`` on the embedded default, bought from over HTTP."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from flashflow.cli import DEMO_HOLD_SECONDS
from flashflow.http.wire import CURRENT, CURRENT_PURCHASE, DEMO_PAY, demo_pay_path

pytestmark = pytest.mark.slow


def process_alive(pid: int) -> bool:
    """Whether a process with this id still exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_for_line(process: subprocess.Popen, pattern: str, lines: list[str],
                  timeout_s: float) -> re.Match:
    """Read the process's output until a line matches ``pattern``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matched {pattern!r}:\n{''.join(lines)}")


def test_up_starts_embedded_services_sells_and_stops_everything():
    """`flashflow up` with no URLs starts embedded servers, sells a hold in its demo sale, pays
    for it through the demo payment route, and stops them all on Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHFLOW_")}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flashflow-up-") as data_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "flashflow.cli", "up", "--port", "0", "--data-dir", data_dir],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        pids: list[int] = []
        try:
            url = wait_for_line(process, r"listening on (http://\S+)", lines, 90).group(1)
            pids = [int(p) for p in re.findall(r"embedded \w+ \(pid (\d+)\)", "".join(lines))]
            assert len(pids) == 2, lines
            with httpx.Client(base_url=url, timeout=10) as client:
                sale = client.get(CURRENT).json()["data"]
                bought = client.post(CURRENT_PURCHASE,
                                     json={"userId": "smoke-user"})
                held = bought.json()["data"]
                paid = client.post(demo_pay_path(sale["id"], held["purchaseId"]))
                status = client.get(CURRENT_PURCHASE,
                                    params={"userId": "smoke-user"}).json()["data"]
                after = client.get(CURRENT).json()["data"]
                page = client.get("/").text
            assert sale["status"] == "active"
            assert sale["holdSeconds"] == DEMO_HOLD_SECONDS
            assert bought.status_code == 201, bought.text
            assert held["status"] == "held"
            assert paid.status_code == 200, paid.text
            assert paid.json()["data"]["status"] == "confirmed"
            assert status == {"purchased": True, "status": "confirmed",
                              "purchaseId": held["purchaseId"],
                              "purchasedAt": held["purchasedAt"]}
            assert after["remainingStock"] == sale["remainingStock"] - 1
            assert f'content="{html.escape(DEMO_PAY)}"' in page
            process.send_signal(signal.SIGINT)
            code = process.wait(30)
            lines.extend(process.stdout.read().splitlines(keepends=True))
            assert code == 0, "".join(lines)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        deadline = time.monotonic() + 15
        while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if process_alive(p)], "an embedded server was left running"
        assert "stopped" in "".join(lines)
