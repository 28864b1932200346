"""The HTTP front of Flash Flow.

``create_app`` is imported on first use, so that :mod:`flashflow.http.wire` (the API's
paths and bodies) can be imported, by the load tests say, without the actors behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
