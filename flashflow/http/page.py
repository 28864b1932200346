"""The buyer's web page: static HTML, CSS and JavaScript shipped in ``flashflow/static``.

There is no build step. Only the files named in :data:`FILES` are served, read once from
the package, so no request path ever reaches the file system. The one thing the page learns
from the server's settings rides in ``index.html``: where ``flashflow up``'s demo payment
route is (:data:`DEMO_PAY_TAG`), when it exists; the page shows a Pay button only then.
A waiting room's proof of work is solved in a Web Worker, ``proof-worker.js``, which the
policy allows from this origin only.
"""

from __future__ import annotations

import html
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
    "holds.js": "text/javascript; charset=utf-8",
    "line.js": "text/javascript; charset=utf-8",
    "proof-worker.js": "text/javascript; charset=utf-8",
    "token.js": "text/javascript; charset=utf-8",
}

#: The tag of index.html whose content the server fills with the demo payment route's
#: pattern (``wire.DEMO_PAY``) when it serves that route; left empty, the page has no Pay.
DEMO_PAY_TAG = b'<meta name="flashflow-demo-pay" content="">'

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; worker-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_static(demo_pay: str | None = None) -> dict[str, bytes]:
    """Read every served file from the package; ``demo_pay``: the demo payment route's
    pattern, to tell the page (None: there is no such route)."""
    # Next to the modules, in a wheel as in a checkout (an editable install may make
    # ``flashflow`` a namespace package, which importlib.resources cannot read).
    folder = Path(__file__).resolve().parent.parent / "static"
    files = {name: (folder / name).read_bytes() for name in FILES}
    if DEMO_PAY_TAG not in files["index.html"]:
        raise RuntimeError(f"index.html lost its tag {DEMO_PAY_TAG.decode()}")
    if demo_pay is not None:
        filled = DEMO_PAY_TAG.replace(b'content=""',
                                      f'content="{html.escape(demo_pay)}"'.encode())
        files["index.html"] = files["index.html"].replace(DEMO_PAY_TAG, filled)
    return files


def install_page(app: QuartTrio, demo_pay: str | None = None) -> None:
    """Serve the page at ``/`` and its assets under ``/static/`` (``demo_pay``: see
    :func:`load_static`)."""
    files = load_static(demo_pay)

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
