"""The declared retry policies: their waits, their end under stamina's test mode."""

from __future__ import annotations

import itertools
import time

import pytest
import stamina
import trio

from actors import Backoff
from flashflow.supervisor import RESTART, Restarts, WorkerExited


class Refused(Exception):
    """What the block under retry raises."""


async def test_waits_double_up_to_the_cap_and_go_on_until_success(autojump_clock):
    """Waits are initial_s, doubling, capped at max_s, for as long as attempts fail."""
    tried_at: list[float] = []
    async for attempt in Backoff(initial_s=1.0, max_s=4.0).forever(Refused):
        with attempt:
            tried_at.append(trio.current_time())
            if len(tried_at) < 6:
                raise Refused
    waits = [round(b - a, 6) for a, b in itertools.pairwise(tried_at)]
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]


async def test_another_error_ends_the_attempts_at_once():
    """An exception the policy does not name is raised from the first attempt."""
    attempts = 0
    with pytest.raises(KeyError):
        async for attempt in Backoff(initial_s=1.0, max_s=4.0).forever(Refused):
            with attempt:
                attempts += 1
                raise KeyError("not a refusal")
    assert attempts == 1


async def test_testing_mode_drops_the_waits_and_caps_the_attempts():
    """Under stamina.set_testing a policy makes at most N attempts, with no wait between."""
    attempts = 0
    with stamina.set_testing(True, attempts=3), trio.fail_after(1), pytest.raises(Refused):
        async for attempt in Backoff(initial_s=60.0, max_s=60.0).forever(Refused):
            with attempt:
                attempts += 1
                raise Refused
    assert attempts == 3


def test_worker_restarts_follow_the_restart_policy(monkeypatch):
    """Each exit of a worker waits RESTART's next delay; a fresh Restarts starts over."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert (RESTART.initial_s, RESTART.max_s, RESTART.jitter_s) == (0.5, 5.0, 0.0)
    restarts = Restarts()
    for _ in range(5):
        restarts.failed(WorkerExited(0, 1234, -9))
    Restarts().failed(WorkerExited(0, 1235, 1))
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 0.5]


def test_worker_restarts_end_in_testing_mode():
    """Under stamina.set_testing the restarts of one worker run out and the exit is raised."""
    with stamina.set_testing(True, attempts=2):
        restarts = Restarts()
        started = time.monotonic()
        restarts.failed(WorkerExited(0, 1, 1))
        with pytest.raises(WorkerExited, match="pid 2"):
            restarts.failed(WorkerExited(0, 2, 1))
        assert time.monotonic() - started < 1
