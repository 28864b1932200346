"""A short locust stampede against a real server process, verified end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import trio

from ..helpers import make_sale, spawn_server

pytestmark = pytest.mark.slow


SECRET = "loadtest-secret-for-hs256-0123456789"


@pytest.mark.parametrize("auth", [False, True], ids=["open", "signed-in"])
async def test_short_locust_stampede_keeps_every_invariant(settings, tmp_path, auth):
    """Stock 15, 30 locust users spamming 3 attempts, with or without tokens: invariants hold."""
    await make_sale(settings.database_url, stock=15)
    served = replace(settings, auth_jwt_secret=SECRET) if auth else settings
    server = await trio.to_thread.run_sync(spawn_server, served, tmp_path)
    signed_in = ["--auth-secret", SECRET] if auth else []
    report = tmp_path / "loadtest.json"
    try:
        with trio.fail_after(120):
            done = await trio.run_process(
                [sys.executable, "-m", "loadtests", "--host", server.base_url,
                 "--database-url", settings.database_url, "--redis-url", settings.redis_url,
                 "--key-prefix", settings.key_prefix, "--ramp-s", "1", "--peak-s", "3",
                 "--cool-s", "1", "--ramp-users", "10", "--peak-users", "30",
                 "--user-pool", "60", "--think-s", "0.05", "--records", str(tmp_path / "records"),
                 "--json", str(report), *signed_in],
                capture_stdout=True, capture_stderr=True, check=False)
    finally:
        code = await trio.to_thread.run_sync(server.stop)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    assert code == 0, "the server did not stop cleanly"
    summary = json.loads(report.read_text())
    assert summary["held"] and len(summary["invariants"]) >= 9, output
    outcomes = summary["kinds"]["purchase"]["outcomes"]
    assert outcomes.get("201", 0) >= 15, outcomes
    assert outcomes.get("409 SOLD_OUT", 0) > 0, outcomes
