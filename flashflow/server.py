"""Serve the HTTP front with Hypercorn's trio worker around a running actor tree."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .gc_passes import full_passes_on_a_clock
from .http import create_app
from .http.fast import EXTENSION, fast_path
from .runtime import open_runtime
from .settings import LISTEN_BACKLOG, Settings

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings, binds: list[str] | None = None) -> Config:
    """Hypercorn's configuration, taken from the settings (``binds`` overrides host:port)."""
    config = Config()
    config.bind = binds or [f"{settings.host}:{settings.port}"]
    # Hypercorn logs through our loggers, so its lines take the same format as ours.
    config.accesslog = logging.getLogger("hypercorn.access") if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.graceful_timeout_s
    config.keep_alive_timeout = 75
    # Hypercorn listens again on the socket it is handed, with its own backlog (100).
    config.backlog = LISTEN_BACKLOG
    return config


def finish_responses_shielded(app: Any, timeout_s: float) -> Any:
    """Wrap an ASGI app so that the message completing a response is sent shielded.

    Quart-Trio cancels its per-request nursery as soon as the response is sent, while
    Hypercorn uses that very send to start the connection's keep-alive timer; unshielded,
    the timer is cancelled and an idle keep-alive connection is never closed, neither at
    ``keep_alive_timeout`` nor at shutdown. The shield is bounded by ``timeout_s``.
    """

    async def shielded(scope: dict, receive: Any, send: Any) -> None:
        async def send_final_shielded(message: dict) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout_s):
                    await send(message)
            else:
                await send(message)

        await app(scope, receive, send_final_shielded)

    return shielded


#: An answer given before its request's body arrived waits for the rest, up to this many
#: bytes and seconds, so the client reads it and can reuse the connection; past either
#: bound the answer says ``Connection: close``.
DRAIN_MAX_BYTES = 1 << 20
DRAIN_TIMEOUT_S = 5.0


def drain_unread_bodies(app: Any, max_bytes: int = DRAIN_MAX_BYTES,
                        timeout_s: float = DRAIN_TIMEOUT_S) -> Any:
    """Wrap an ASGI app so that an early answer (a 413, say) is sent after the request body.

    Hypercorn closes a connection whose request body was not read to its end once the answer
    is sent. A client still sending its body then gets a reset instead of the answer
    ("Server disconnected without sending a response"). Quart keeps receiving (and
    discarding) the body while the answer is pending, so holding the answer's start until
    the body is in lets both ends finish the exchange cleanly.
    """

    async def drained(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        complete, settled = trio.Event(), trio.Event()
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    complete.set()
            else:
                complete.set()
            if complete.is_set() or received > max_bytes:
                settled.set()
            return message

        async def send_after_body(message: dict) -> None:
            if message["type"] == "http.response.start" and not complete.is_set():
                with trio.move_on_after(timeout_s):
                    await settled.wait()
                if not complete.is_set():
                    message = {**message,
                               "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, counting_receive, send_after_body)

    return drained


def asgi_app(app: Any, settings: Settings) -> Any:
    """The application as Hypercorn serves it, with the wrappers above.

    With ``settings.fast_path`` (the default), the fast path answers the hot routes in front
    of them all: it reads every body it answers, and cancels nothing.
    """
    served = finish_responses_shielded(drain_unread_bodies(app), settings.graceful_timeout_s)
    if not settings.fast_path:
        return served
    return fast_path(served, app.extensions[EXTENSION], settings.max_body_bytes)


async def serve(settings: Settings, *, binds: list[str] | None = None,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the actor tree and serve HTTP until ``shutdown_trigger`` returns; the garbage
    collector's full passes run on a clock meanwhile (:mod:`.gc_passes`).

    ``task_status.started`` receives the bound addresses once the server listens.
    """
    async with open_runtime(settings) as runtime, full_passes_on_a_clock():
        app = create_app(runtime)

        async def stop_then_end_streams() -> None:
            # Purchases in flight drain within the graceful timeout; live streams would
            # hold it to the end, so they are ended as soon as the stop begins.
            await (shutdown_trigger or trio.sleep_forever)()
            runtime.feed.close_streams()

        await hypercorn_serve(asgi_app(app, settings), hypercorn_config(settings, binds),
                              shutdown_trigger=stop_then_end_streams, task_status=task_status)


async def serve_until_signalled(settings: Settings,
                                on_ready: Callable[[list[str]], None] = lambda binds: None,
                                binds: list[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; a second signal stops at once."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second %s; stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                    log.info("received %s; shutting down gracefully", signal.Signals(signum).name)
                    stop.set()

            async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve(settings, binds=binds, shutdown_trigger=stop.wait,
                            task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            on_ready(await nursery.start(serve_then_stop))
