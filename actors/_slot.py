"""A one-shot reply slot: how an actor answers a request (an Event plus a value)."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Slot(Generic[T]):
    """Carries exactly one value or one error from an actor back to its caller.

    Any number of tasks may wait on the same slot; all of them get the same outcome.
    """

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

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

    async def wait(self) -> T:
        """Wait for the answer and return it, or raise the error it carries."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
