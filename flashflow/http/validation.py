"""Input validation for the HTTP front: every failure is an InvalidInput (400).

A user id is one rule, used by the purchase body, the status read, a token's ``sub`` and
the OpenAPI document: trimmed, NFC-normalised, 3 to 255 characters, and free of every
character that could hide or disguise what it says (:data:`REFUSED_CATEGORIES`).
"""

from __future__ import annotations

import sys
import unicodedata
import uuid
from functools import cache
from typing import Any

from actors.errors import InvalidInput

USER_ID_MIN = 3
USER_ID_MAX = 255
#: The bounds of ``flash_sales``' columns (migration 0001), said before the database says them.
PRODUCT_NAME_MAX = 200
STOCK_MAX = 2**31 - 1

#: Unicode general categories a user id (or a product name) may not hold, and how a message
#: names them.
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
    return text(value, "userId", USER_ID_MIN, USER_ID_MAX)


def product_name(value: Any) -> str:
    """Return the trimmed, NFC-normalised product name, or raise InvalidInput."""
    return text(value, "productName", 1, PRODUCT_NAME_MAX)


def text(value: Any, name: str, shortest: int, longest: int) -> str:
    """Return ``value`` NFC-normalised and trimmed: ``shortest`` to ``longest`` characters,
    none of :data:`REFUSED_CATEGORIES`; else raise InvalidInput naming the field."""
    if value is None:
        raise InvalidInput(f"{name} is required.", field=name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string.", field=name)
    trimmed = unicodedata.normalize("NFC", value).strip()
    if not trimmed:
        raise InvalidInput(f"{name} must not be empty.", field=name)
    for char in trimmed:
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            raise InvalidInput(
                f"{name} must not contain control, invisible or unassigned characters "
                f"(U+{ord(char):04X} is {REFUSED_CATEGORIES[category]}).", field=name)
    if len(trimmed) < shortest:
        raise InvalidInput(f"{name} must be at least {shortest} characters.", field=name)
    if len(trimmed) > longest:
        raise InvalidInput(f"{name} must be at most {longest} characters.", field=name)
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


def sale_id(raw: str | None) -> uuid.UUID | None:
    """The sale id of a path (None: the current sale), or InvalidInput (400) if not a UUID."""
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidInput("The sale id must be a UUID.", field="id") from None
