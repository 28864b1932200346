"""The buyer's web page: static HTML, CSS and JavaScript shipped in ``flashflow/static``.

There is no build step. Only the files named in :data:`FILES` are served, read once from
the package, so no request path ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from quart import Response
from quart_schema import hide
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

#: file name -> content type
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_static() -> dict[str, bytes]:
    """Read every served file from the package."""
    # Next to the modules, in a wheel as in a checkout (an editable install may make
    # ``flashflow`` a namespace package, which importlib.resources cannot read).
    folder = Path(__file__).resolve().parent.parent / "static"
    return {name: (folder / name).read_bytes() for name in FILES}


def install_page(app: QuartTrio) -> None:
    """Serve the page at ``/`` and its assets under ``/static/``."""
    files = load_static()

    def serve(name: str) -> Response:
        return Response(files[name], status=200, content_type=FILES[name], headers=HEADERS)

    @app.get("/")
    @hide  # the page and its assets are not part of the API
    async def index() -> Response:
        return serve("index.html")

    @app.get("/static/<name>")
    @hide
    async def static_file(name: str) -> Response:
        if name not in files:
            raise NotFound()
        return serve(name)
