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
    if value is None:
        raise InvalidInput("userId is required.", field="userId")
    if not isinstance(value, str):
        raise InvalidInput("userId must be a string.", field="userId")
    trimmed = value.strip()
    if not trimmed:
        raise InvalidInput("userId must not be empty.", field="userId")
    if _CONTROL.search(trimmed):
        raise InvalidInput("userId must not contain control characters.", field="userId")
    if len(trimmed) < USER_ID_MIN:
        raise InvalidInput(f"userId must be at least {USER_ID_MIN} characters.", field="userId")
    if len(trimmed) > USER_ID_MAX:
        raise InvalidInput(f"userId must be at most {USER_ID_MAX} characters.", field="userId")
    return trimmed


def product_name(value: Any) -> str:
    """Return the trimmed product name, or raise InvalidInput saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidInput("productName must be a string.", field="productName")
    trimmed = value.strip()
    if not trimmed:
        raise InvalidInput("productName must not be empty.", field="productName")
    if _CONTROL.search(trimmed):
        raise InvalidInput("productName must not contain control characters.",
                           field="productName")
    if len(trimmed) > PRODUCT_NAME_MAX:
        raise InvalidInput(f"productName must be at most {PRODUCT_NAME_MAX} characters.",
                           field="productName")
    return trimmed
