"""Cross-origin calls from the browser, for the origins in ``FLASHFLOW_CORS_ORIGINS`` only.

With no origin listed (the default) nothing is added: browsers then allow the API to the
page's own origin alone. A listed origin gets the CORS headers on every answer and its
preflights answered; any other origin gets neither.
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

ALLOWED_METHODS = "GET, POST"
ALLOWED_HEADERS = "Authorization, Content-Type"
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE_S = 600


def install_cors(app: QuartTrio, origins: tuple[str, ...]) -> None:
    """Answer preflights and add CORS headers for ``origins``; do nothing when empty."""
    if not origins:
        return
    allowed = frozenset(origins)

    @app.before_request
    async def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        response = Response(b"", status=204)
        if request.headers.get("Origin") in allowed:
            response.headers.update({
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            })
        return response

    @app.after_request
    async def allow_origin(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response
