"""The two ceilings Flash Flow is measured against, and the launcher that serves them.

A bare ASGI callable on hypercorn's trio worker is the server's own ceiling; a bare
quart-trio app with one JSON route is the framework's. Neither touches the actors, Redis or
PostgreSQL: whatever Flash Flow costs beyond them is its own. ``python
loadtests/bench/ceilings.py asgi|quart --port N --workers N`` serves one of them.

The launcher runs this file by its path, and hypercorn loads the app from it the same way,
so a ceiling's process imports neither its package nor anything of Flash Flow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

#: The one path both ceilings answer; its body is the one ``/healthz`` sends.
PATH = "/ceiling"
BODY = {"data": {"status": "ok"}}
_BODY_BYTES = json.dumps(BODY).encode()
_HEADERS = [(b"content-type", b"application/json"),
            (b"content-length", str(len(_BODY_BYTES)).encode())]


async def bare_asgi(scope: dict, receive: Any, send: Any) -> None:
    """Answer every HTTP request with the same JSON body; accept the lifespan protocol."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY_BYTES})


def bare_quart() -> Any:
    """A quart-trio app with one route that returns a dict, which Quart encodes as JSON."""
    from quart_trio import QuartTrio

    app = QuartTrio(__name__, static_folder=None)

    @app.get(PATH)
    async def ceiling() -> dict:
        return BODY

    return app


#: Each ceiling's name and what hypercorn evaluates in this module to get its app.
APPS = {"asgi": "bare_asgi", "quart": "bare_quart()"}


def serve(name: str, port: int, workers: int) -> int:
    """Serve the ceiling ``name`` on 127.0.0.1:``port`` with hypercorn's trio worker."""
    from hypercorn.config import Config
    from hypercorn.run import run

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.worker_class = "trio"
    # One worker runs in this process, as ``flashflow serve`` does; more share one socket.
    config.workers = 0 if workers == 1 else workers
    # As Flash Flow configures hypercorn: no access log, the same keep-alive.
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.application_path = f"{__file__}:{APPS[name]}"
    return run(config)


def main(argv: list[str] | None = None) -> int:
    """The launcher's command line."""
    p = argparse.ArgumentParser(prog="python loadtests/bench/ceilings.py")
    p.add_argument("name", choices=sorted(APPS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    return serve(args.name, args.port, args.workers)


def command(name: str, workers: int) -> Callable[[int], list[str]]:
    """The command line that serves the ceiling ``name`` on a given port."""
    return lambda port: [sys.executable, __file__, name, "--port", str(port),
                         "--workers", str(workers)]


if __name__ == "__main__":
    raise SystemExit(main())
