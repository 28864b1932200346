"""Purchase traffic through a fault: the clients, the spam, the recovery and the
presses until every user has a final answer."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import httpx
import trio

from actors import Sale
from flashflow.settings import Settings

from ..helpers import ServerProcess
from .recorder import Recorder
from .stores import wait_for_sold


def asking(users: list[str], most: int) -> dict[str, int]:
    """The units each of ``users`` asks for: 1, 2, ..., ``most`` in turn (with ``most`` 1,
    one each), for :attr:`Recorder.quantities <tests.faults.recorder.Recorder.quantities>`."""
    return {user: 1 + i % most for i, user in enumerate(users)}


@asynccontextmanager
async def open_clients(*servers: ServerProcess, timeout_s: float = 15.0
                       ) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One HTTP client per server; a request that gets no answer in ``timeout_s`` is HUNG."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            httpx.AsyncClient(base_url=s.base_url, timeout=timeout_s, limits=limits))
            for s in servers]


async def fault_under_load(recorder: Recorder, clients: list[httpx.AsyncClient],
                           users: list[str], settings: Settings, sale: Sale,
                           fault: Callable[[], object], *, sold_before: int = 80,
                           hold_s: float = 2.0, rate_per_s: float = 250) -> float:
    """Spam purchases, run ``fault`` once ``sold_before`` units sold, keep spamming ``hold_s``.

    Returns:
        The trio time at which the fault began.
    """
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(spam, recorder, clients, users, stop=stop,
                                   rate_per_s=rate_per_s))
        await wait_for_sold(settings, sale, sold_before, timeout_s=20)
        recorder.phase = "fault"
        await trio.to_thread.run_sync(fault)
        began = trio.current_time()
        await trio.sleep(hold_s)
        stop.set()
    return began


async def recover_and_sell_out(recorder: Recorder, clients: list[httpx.AsyncClient],
                               users: list[str], settings: Settings, sale: Sale,
                               stock: int) -> tuple[float, float]:
    """After a fault: spam until answers are healthy and the stock is sold, then one click each.

    Returns:
        (seconds until healthy, seconds until sold out).
    """
    from ..integration.test_stampede import stampede

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(spam, recorder, clients, users, stop=stop, rate_per_s=250))
        recovery_s = await recover(recorder)
        sell_out_s = await wait_for_sold(settings, sale, stock, timeout_s=40)
        stop.set()
    recorder.add("after", await stampede(clients, users, clicks=1, body=recorder.body))
    return recovery_s, sell_out_s


async def spam(recorder: Recorder, clients: list[httpx.AsyncClient], users: list[str], *,
               stop: trio.Event, rate_per_s: float, concurrency: int = 64,
               max_requests: int = 20_000, repeat_share: float = 0.1) -> None:
    """Open-loop purchase traffic at ``rate_per_s`` until ``stop`` is set.

    Mostly users who have not bought yet; ``repeat_share`` of the attempts are repeats by a
    winner. At most ``concurrency`` requests are in flight and ``max_requests`` are sent.
    """
    limiter = trio.CapacityLimiter(concurrency)

    async def one(user: str, client: httpx.AsyncClient) -> None:
        async with limiter:
            await recorder.press(client, user)

    pending = list(users)

    def newcomer() -> str | None:
        while pending:
            i = random.randrange(len(pending))
            if pending[i] not in recorder.winners:
                return pending[i]
            pending[i] = pending[-1]
            pending.pop()
        return None

    async with trio.open_nursery() as nursery:
        next_at, sent = trio.current_time(), 0
        while not stop.is_set() and sent < max_requests:
            user = newcomer()
            if recorder.winners and (user is None or random.random() < repeat_share):
                user = random.choice(list(recorder.winners))
            elif user is None:
                user = random.choice(users)
            nursery.start_soon(one, user, random.choice(clients))
            sent += 1
            next_at += 1 / rate_per_s
            await trio.sleep_until(next_at)


async def recover(recorder: Recorder, *, clean_run: int = 100, timeout_s: float = 15.0) -> float:
    """Switch ``recorder`` to phase "after" once ``clean_run`` answers in a row were not 5xx.

    Called with traffic running once the servers say they are ready again; what they
    answer in between is phase "recovering". Returns the seconds recovery took.
    """
    started, seen = trio.current_time(), len(recorder.outcomes)
    recorder.phase = "recovering"
    with trio.fail_after(timeout_s):
        while True:
            fresh = recorder.outcomes[seen:]
            tail = fresh[-clean_run:]
            if len(tail) == clean_run and all(200 <= o.status < 500 for o in tail):
                recorder.phase = "after"
                return trio.current_time() - started
            await trio.sleep(0.02)


async def press_until_final(recorder: Recorder, clients: list[httpx.AsyncClient],
                            users: list[str], *, rounds: int = 12, pause_s: float = 1.0,
                            concurrency: int = 64) -> int:
    """Each user presses once per round until their answer is final (201 or 409).

    A user answered 503 (or nothing) presses again next round, after ``pause_s`` (the
    servers' ``Retry-After``). Returns the rounds it took.

    Raises:
        AssertionError: some users still had no final answer after ``rounds`` rounds.
    """
    limiter = trio.CapacityLimiter(concurrency)
    left = list(users)

    async def one(user: str, client: httpx.AsyncClient, final: set[str]) -> None:
        async with limiter:
            outcome = await recorder.press(client, user)
        if outcome.status in (201, 409):
            final.add(user)

    for done in range(1, rounds + 1):
        final: set[str] = set()
        async with trio.open_nursery() as nursery:
            for user in left:
                nursery.start_soon(one, user, random.choice(clients), final)
        left = [u for u in left if u not in final]
        if not left:
            return done
        await trio.sleep(pause_s)
    raise AssertionError(f"{len(left)} users had no final answer after {rounds} rounds: "
                         f"{left[:5]}")
