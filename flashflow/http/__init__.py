"""The HTTP front of Flash Flow."""

from .app import create_app

__all__ = ["create_app"]
