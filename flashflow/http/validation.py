"""Input validation for the HTTP front: every failure is an InvalidInput (400)."""

from __future__ import annotations

import re
from typing import Any

from actors.errors import InvalidInput

USER_ID_MIN = 3
USER_ID_MAX = 255
#: The bounds of ``flash_sales``' columns (migration 0001), said before the database says them.
PRODUCT_NAME_MAX = 200
STOCK_MAX = 2**31 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def user_id(value: Any) -> str:
    """Return the trimmed user id, or raise InvalidInput saying what is wrong."""
    return text(value, "userId", USER_ID_MIN, USER_ID_MAX)


def product_name(value: Any) -> str:
    """Return the trimmed product name, or raise InvalidInput saying what is wrong."""
    return text(value, "productName", 1, PRODUCT_NAME_MAX)


def text(value: Any, name: str, shortest: int, longest: int) -> str:
    """Return ``value`` trimmed: a string of ``shortest`` to ``longest`` characters after
    trimming, without control characters; else raise InvalidInput naming the field."""
    if value is None:
        raise InvalidInput(f"{name} is required.", field=name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string.", field=name)
    trimmed = value.strip()
    if not trimmed:
        raise InvalidInput(f"{name} must not be empty.", field=name)
    if _CONTROL.search(trimmed):
        raise InvalidInput(f"{name} must not contain control characters.", field=name)
    if len(trimmed) < shortest:
        raise InvalidInput(f"{name} must be at least {shortest} characters.", field=name)
    if len(trimmed) > longest:
        raise InvalidInput(f"{name} must be at most {longest} characters.", field=name)
    return trimmed
