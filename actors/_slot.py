"""A one-shot reply slot: how an actor answers a request (an Event plus a value)."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Slot(Generic[T]):
    """Carries exactly one value or one error from an actor back to its caller.

    Any number of tasks may wait on the same slot; all of them get the same outcome.

    A caller that stops waiting may withdraw its request, and an actor takes a request up
    before acting on it; the two are decided in one step each, so exactly one of them wins:
    a withdrawn request is never acted on, and a request taken up is never withdrawn.
    """

    __slots__ = ("_error", "_event", "_taken", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._taken = False

    @property
    def done(self) -> bool:
        """Whether the slot has been answered."""
        return self._event.is_set()

    def set(self, value: T) -> None:
        """Answer with a value; a second answer is ignored so a racing fail cannot win."""
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        """Answer with an error that every waiter will raise."""
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def take(self) -> bool:
        """Take the request up (the actor is about to act on it); False if it was withdrawn."""
        if self._event.is_set():
            return False
        self._taken = True
        return True

    def withdraw(self, error: BaseException) -> bool:
        """Fail the slot with ``error`` unless the actor took it up; True when withdrawn."""
        if self._taken or self._event.is_set():
            return False
        self.fail(error)
        return True

    async def wait(self) -> T:
        """Wait for the answer and return it, or raise the error it carries."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
