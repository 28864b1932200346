"""Input validation for the HTTP front: every failure is an InvalidInput (400).

A user id is one rule, used by the purchase body, the status read, a token's ``sub`` and
the OpenAPI document: trimmed, NFC-normalised, 3 to 255 characters, and free of every
character that could hide or disguise what it says (:data:`REFUSED_CATEGORIES`).
"""

from __future__ import annotations

import sys
import unicodedata
from functools import cache
from typing import Any

from actors.errors import InvalidInput

USER_ID_MIN = 3
USER_ID_MAX = 255

#: Unicode general categories a user id may not hold, and how a message names them.
REFUSED_CATEGORIES: dict[str, str] = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Co": "a private-use character",
    "Cs": "a surrogate",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def user_id(value: Any) -> str:
    """Return the trimmed, NFC-normalised user id, or raise InvalidInput saying what is wrong."""
    if value is None:
        raise InvalidInput("userId is required.", field="userId")
    if not isinstance(value, str):
        raise InvalidInput("userId must be a string.", field="userId")
    trimmed = unicodedata.normalize("NFC", value).strip()
    if not trimmed:
        raise InvalidInput("userId must not be empty.", field="userId")
    for char in trimmed:
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            raise InvalidInput(
                f"userId must not contain control, invisible or unassigned characters "
                f"(U+{ord(char):04X} is {REFUSED_CATEGORIES[category]}).", field="userId")
    if len(trimmed) < USER_ID_MIN:
        raise InvalidInput(f"userId must be at least {USER_ID_MIN} characters.", field="userId")
    if len(trimmed) > USER_ID_MAX:
        raise InvalidInput(f"userId must be at most {USER_ID_MAX} characters.", field="userId")
    return trimmed


def _escaped(code: int) -> str:
    # \\uXXXX reads the same in Python's re and ECMA-262; astral characters go in literally
    # (one code point each in Python and in an ECMA-262 pattern with the ``u`` flag).
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)


@cache
def refused_class() -> str:
    """A regex character class body matching every refused character, built from unicodedata."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in REFUSED_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "".join(_escaped(a) if a == b else f"{_escaped(a)}-{_escaped(b)}" for a, b in ranges)


@cache
def user_id_pattern() -> str:
    """The OpenAPI ``pattern`` of a user id: no refused character, no blank at either end."""
    refused = refused_class()
    return rf"^[^\s{refused}]([^{refused}]*[^\s{refused}])?$"
