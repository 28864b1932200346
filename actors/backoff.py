"""Retry policies, declared once as data and carried out by stamina.

A policy says how long to wait between failed attempts: ``initial_s``, doubling after each
failure, capped at ``max_s``, plus a random jitter of up to ``jitter_s``. Under
``stamina.set_testing(True, attempts=N)`` the waits are zero and at most N attempts are
made, so a test can drive a policy to its end at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

import stamina

__all__ = ["Attempts", "Backoff"]


class Attempts(Protocol):
    """What :meth:`Backoff.forever` returns: stamina's attempts, for ``for`` or ``async for``."""

    def __iter__(self) -> Iterator[stamina.Attempt]: ...

    def __aiter__(self) -> AsyncIterator[stamina.Attempt]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait between attempts; see the module docstring."""

    initial_s: float
    max_s: float
    jitter_s: float = 0.0

    def forever(self, on: type[Exception] | tuple[type[Exception], ...]) -> Attempts:
        """Attempts at a block that go on until one succeeds, waiting as declared.

        Use as ``for attempt in policy.forever(Error): with attempt: ...`` (or
        ``async for`` under trio). An exception other than ``on`` ends the attempts at once.
        """
        return stamina.retry_context(on=on, attempts=None, timeout=None,
                                     wait_initial=self.initial_s, wait_max=self.max_s,
                                     wait_jitter=self.jitter_s)
