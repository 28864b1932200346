"""Crossing from trio into asyncio drivers, with a deadline and error translation.

Every Redis and PostgreSQL call goes through :func:`call`, so each one is bounded in
time and no driver exception escapes an actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio
import trio_asyncio

from .errors import BackendUnavailable

P = ParamSpec("P")
T = TypeVar("T")


async def call(
    backend: str,
    timeout_s: float,
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the asyncio coroutine function ``fn`` from trio, within ``timeout_s``.

    Raises:
        BackendUnavailable: the call timed out or failed with a connection-level error.
    """
    try:
        with trio.fail_after(timeout_s):
            return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    except trio.TooSlowError:
        raise BackendUnavailable(backend) from None
    except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
        raise BackendUnavailable(backend) from exc
