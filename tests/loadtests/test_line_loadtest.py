"""A short locust crowd in a sale's waiting room against a real server process, verified
end to end."""

from __future__ import annotations

import functools

import pytest
import trio

from ..helpers import spawn_server
from .test_stampede_loadtest import run_loadtest

pytestmark = pytest.mark.slow

LINE_RULES = {"the seed is the committed one", "the early tickets are in the seed's order",
              "later arrivals follow in arrival order", "admissions follow the published order",
              "each ticket is admitted once", "nobody bought without an admitted ticket",
              "a sold-out line leaves nobody waiting",
              "the early order is not the order of arrival"}


async def test_short_locust_waiting_room_keeps_every_rule(settings, tmp_path):
    """150 users join a waiting room before its opening and 50 after it, stock 40, 20
    admitted a second: every rule of a sale and of its line holds (the early order passes the
    shuffle check too), 40 admitted buyers bought, the line closed as sold out, and every
    followed stream got its final event."""
    # Outside coverage: the crowd's streams would measure the tracer, not the server.
    server = await trio.to_thread.run_sync(
        functools.partial(spawn_server, settings, tmp_path, traced=False))
    summary, output = await run_loadtest(
        settings, server, tmp_path, "--line", "--stock", "40", "--line-before", "150",
        "--line-after", "50", "--opens-in-s", "12", "--admit-per-s", "20",
        "--admission-s", "30", "--line-spawn-rate", "100", "--line-s", "40", timeout_s=150)
    names = {check["name"] for check in summary["invariants"]}
    assert summary["held"] and LINE_RULES <= names, output
    line = summary["line"]
    assert line["early"] == 150 and line["early"] + line["late"] + line["joins_refused"] == 200
    assert line["bought"] == 40 and line["closed"] == "sold_out", line
    assert line["streams_without_final"] == 0, line
    assert line["streams_admitted"] + line["streams_closed"] == line["early"] + line["late"]
    outcomes = summary["kinds"]["purchase"]["outcomes"]
    assert outcomes.get("201") == 40, outcomes
