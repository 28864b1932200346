"""The actors' building blocks: reply slots, unwrapped nursery errors, the asyncio crossing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
import trio
import trio.lowlevel
import trio_asyncio

from actors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    InvalidInput,
    Overloaded,
    SaleNotActive,
    SaleNotFound,
    SoldOut,
    _aio,
)
from actors._nursery import open_actor_nursery, single_errors
from actors._slot import Slot


async def test_slot_gives_every_waiter_the_first_answer():
    """All waiters of a slot get its first answer; later answers are ignored."""
    slot: Slot[int] = Slot()
    got: list[int] = []

    async def wait() -> None:
        got.append(await slot.wait())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            nursery.start_soon(wait)
            await trio.lowlevel.checkpoint()
            assert not slot.done
            slot.set(1)
            slot.set(2)
            slot.fail(RuntimeError("too late"))
    assert slot.done
    assert got == [1, 1]


async def test_slot_error_is_raised_to_every_waiter_and_cannot_be_overwritten():
    """A failed slot raises its error on each wait; a later set does not replace it."""
    slot: Slot[int] = Slot()
    slot.fail(SoldOut())
    slot.fail(Overloaded("x"))
    slot.set(3)
    with trio.fail_after(5):
        for _ in range(2):
            with pytest.raises(SoldOut):
                await slot.wait()


def test_single_errors_unwraps_a_group_of_one():
    """A group holding a single error, however nested, is raised as that error."""
    error = SoldOut()
    with pytest.raises(SoldOut) as caught, single_errors():
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [error])])
    assert caught.value is error


def test_single_errors_keeps_a_group_of_several():
    """A group holding two errors is raised as the group."""
    with pytest.raises(ExceptionGroup) as caught, single_errors():
        raise ExceptionGroup("two", [SoldOut(), Overloaded("x")])
    assert len(caught.value.exceptions) == 2


async def test_actor_nursery_raises_a_single_child_error_unwrapped():
    """A child task's error leaves an actor nursery as itself, not as an ExceptionGroup."""
    async def fail() -> None:
        raise BackendUnavailable("redis")

    with trio.fail_after(5):
        with pytest.raises(BackendUnavailable):
            async with open_actor_nursery() as nursery:
                nursery.start_soon(fail)
                await trio.sleep_forever()


async def test_actor_nursery_runs_children_to_completion():
    """A nursery without errors waits for its children and raises nothing."""
    done: list[int] = []

    async def work() -> None:
        await trio.lowlevel.checkpoint()
        done.append(1)

    with trio.fail_after(5):
        async with open_actor_nursery() as nursery:
            nursery.start_soon(work)
    assert done == [1]


async def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("error", [
    ConnectionRefusedError("refused"),
    TimeoutError(),
    ConnectionResetError("reset"),
], ids=["refused", "asyncio-timeout", "reset"])
async def test_call_translates_connection_errors(error):
    """Connection-level driver errors cross into trio as BackendUnavailable of that backend."""
    with trio.fail_after(5):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                await _aio.call("postgres", 1.0, _raise, error)
    assert caught.value.backend == "postgres"
    assert caught.value.__cause__ is error


async def test_call_past_its_deadline_is_backend_unavailable():
    """A call slower than its timeout is abandoned and reported BackendUnavailable."""
    with trio.fail_after(5):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                await _aio.call("redis", 0.05, asyncio.sleep, 10)
    assert caught.value.backend == "redis"


async def test_call_returns_the_value_and_lets_other_errors_through():
    """A call returns its coroutine's value; a non-connection error passes unchanged."""
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    with trio.fail_after(5):
        async with trio_asyncio.open_loop():
            assert await _aio.call("redis", 1.0, add, 2, b=3) == 5
            with pytest.raises(KeyError):
                await _aio.call("redis", 1.0, _raise, KeyError("k"))


async def test_redis_call_reads_a_connection_torn_down_under_it_as_unavailable():
    """redis-py writing on a connection dropped under it (writer None) is BackendUnavailable;
    the same error raised by our own code passes unchanged."""
    dropped = redis.asyncio.Connection()  # never connected: no writer, as once disconnected
    with trio.fail_after(5):
        async with trio_asyncio.open_loop():
            with pytest.raises(BackendUnavailable) as caught:
                await _aio.redis_call(1.0, dropped._send_packed_command, [b"PING\r\n"])
            with pytest.raises(AttributeError):
                await _aio.redis_call(1.0, _raise, AttributeError("ours"))
    assert caught.value.backend == "redis"
    assert isinstance(caught.value.__cause__, AttributeError)


def test_every_error_is_a_flashflow_error_carrying_a_message():
    """Each public error derives from FlashFlowError and carries its data and a message."""
    errors = [InvalidInput("bad", field="userId"), SaleNotFound(),
              SaleNotActive(started=False), SaleNotActive(started=True), SoldOut(),
              AlreadyPurchased(), Overloaded("ledger"), BackendUnavailable("redis")]
    assert all(isinstance(e, FlashFlowError) and e.message == str(e) and e.message
               for e in errors)
    assert errors[0].field == "userId"
    assert "not started" in errors[2].message and errors[2].started is False
    assert "ended" in errors[3].message and errors[3].started is True
    assert (errors[6].actor, errors[7].backend) == ("ledger", "redis")


async def test_a_slot_is_either_withdrawn_or_taken_up_never_both():
    """withdraw() wins only before take(), and take() only before withdraw() or an answer."""
    withdrawn: Slot[int] = Slot()
    assert withdrawn.withdraw(ValueError("gone"))
    assert not withdrawn.take()
    with pytest.raises(ValueError):
        await withdrawn.wait()
    taken: Slot[int] = Slot()
    assert taken.take()
    assert not taken.withdraw(ValueError("too late"))
    taken.set(7)
    assert await taken.wait() == 7
    answered: Slot[int] = Slot()
    answered.set(1)
    assert not answered.take() and not answered.withdraw(ValueError("done"))
