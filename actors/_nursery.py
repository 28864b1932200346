"""A nursery for ``open_*`` context managers that does not leak ExceptionGroups.

Trio wraps every error that crosses a nursery in an ExceptionGroup. An actor's
``open_*`` is meant to raise a single error (say, BackendUnavailable at start-up, or the
caller's own exception from its body), so a group holding exactly one leaf is unwrapped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise an ExceptionGroup holding exactly one (non-Cancelled) error as that error."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and not isinstance(leaves[0], trio.Cancelled):
            # Out of its group, with the cause it was raised from (what an operator reads).
            raise leaves[0] from leaves[0].__cause__
        raise


@asynccontextmanager
async def open_actor_nursery() -> AsyncIterator[trio.Nursery]:
    """Open a nursery whose single error, if any, surfaces unwrapped."""
    with single_errors():
        async with trio.open_nursery() as nursery:
            yield nursery
