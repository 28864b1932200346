"""Serve the HTTP front with Hypercorn's trio worker around a running actor tree."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .http import create_app
from .runtime import open_runtime
from .settings import Settings

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    """Hypercorn's configuration, taken from the settings."""
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = "-" if settings.access_log else None
    config.errorlog = "-"
    config.graceful_timeout = settings.graceful_timeout_s
    config.keep_alive_timeout = 75
    return config


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM: the trigger of a graceful shutdown."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            return


async def serve(settings: Settings, *,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the actor tree and serve HTTP until ``shutdown_trigger`` returns.

    ``task_status.started`` receives the bound addresses once the server listens.
    """
    async with open_runtime(settings) as runtime:
        app = create_app(runtime)
        await hypercorn_serve(app, hypercorn_config(settings),
                              shutdown_trigger=shutdown_trigger, task_status=task_status)
