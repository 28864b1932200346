"""A short locust stampede against a real server process, verified end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from flashflow.settings import Settings

from ..helpers import ServerProcess, make_sale, spawn_server

pytestmark = pytest.mark.slow


SECRET = "loadtest-secret-for-hs256-0123456789"
ADMIN = "loadtest-admin-token-0123456789"


async def run_loadtest(settings: Settings, server: ServerProcess, tmp_path: Path, *args: str,
                       timeout_s: float) -> tuple[dict[str, Any], str]:
    """Run ``python -m loadtests`` with ``args`` against ``server`` and its stores, then stop
    the server; once both ended cleanly, return the run's summary and its output."""
    report = tmp_path / "loadtest.json"
    try:
        with trio.fail_after(timeout_s):
            done = await trio.run_process(
                [sys.executable, "-m", "loadtests", "--host", server.base_url,
                 "--database-url", settings.database_url, "--redis-url", settings.redis_url,
                 "--key-prefix", settings.key_prefix, "--records", str(tmp_path / "records"),
                 "--json", str(report), *args],
                capture_stdout=True, capture_stderr=True, check=False)
    finally:
        code = await trio.to_thread.run_sync(server.stop)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    assert code == 0, "the server did not stop cleanly"
    return json.loads(report.read_text()), output


@pytest.mark.parametrize("auth", [False, True], ids=["open", "signed-in"])
async def test_short_locust_stampede_keeps_every_invariant(settings, tmp_path, auth):
    """Stock 15, 30 locust users spamming 3 attempts, with or without tokens: invariants hold."""
    await make_sale(settings.database_url, stock=15)
    served = replace(settings, auth_jwt_secret=SECRET) if auth else settings
    server = await trio.to_thread.run_sync(spawn_server, served, tmp_path)
    signed_in = ["--auth-secret", SECRET] if auth else []
    summary, output = await run_loadtest(
        settings, server, tmp_path, "--ramp-s", "1", "--peak-s", "3", "--cool-s", "1",
        "--ramp-users", "10", "--peak-users", "30", "--user-pool", "60", "--think-s", "0.05",
        *signed_in, timeout_s=120)
    assert summary["held"] and len(summary["invariants"]) >= 9, output
    outcomes = summary["kinds"]["purchase"]["outcomes"]
    assert outcomes.get("201", 0) >= 15, outcomes
    assert outcomes.get("409 SOLD_OUT", 0) > 0, outcomes


async def test_short_locust_checkout_keeps_every_rule_of_holds(settings, tmp_path):
    """A sale of 15 with 5-second holds, 300 users: 60% of holders pay within a second, the
    rest walk away and their holds lapse to the waitlist, whose buyers pay from their stream.
    Every rule of holds holds; some holds lapsed, and some offers were paid."""
    server = await trio.to_thread.run_sync(spawn_server, replace(settings, admin_token=ADMIN),
                                           tmp_path)
    summary, output = await run_loadtest(
        settings, server, tmp_path, "--stock", "15", "--checkout", "--hold-s", "5",
        "--pay-share", "0.6", "--pay-min-s", "0.2", "--pay-max-s", "1.0", "--follow-s", "10",
        "--admin-token", ADMIN, "--ramp-s", "1", "--peak-s", "7", "--cool-s", "1",
        "--ramp-users", "20", "--peak-users", "40", "--user-pool", "300", "--think-s", "0.2",
        timeout_s=150)
    names = {check["name"] for check in summary["invariants"]}
    assert summary["held"] and "no unit free while anyone waits" in names, output
    figures = summary["checkout"]
    assert figures["holds_told"] >= 15 and figures["paid"] > 0, figures
    assert figures["lapsed"] > 0, figures
    assert figures["offers"] > 0 and figures["offers_paid"] > 0, figures
