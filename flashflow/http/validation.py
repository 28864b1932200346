"""Input validation for the HTTP front: every failure is an InvalidInput (400)."""

from __future__ import annotations

import re
from typing import Any

from actors.errors import InvalidInput

USER_ID_MIN = 3
USER_ID_MAX = 255
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
