"""Input validation for the HTTP front: every failure is an InvalidInput (400).

A user id is one rule, used by the purchase body, the status read, a token's ``sub`` and
the OpenAPI document: trimmed, NFC-normalised, 3 to 255 characters, and free of every
character that could hide or disguise what it says (:data:`REFUSED_CATEGORIES`).
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from actors.errors import InvalidInput

USER_ID_MIN = 3
USER_ID_MAX = 255
#: The bounds of ``flash_sales``' columns (migration 0001), said before the database says them.
PRODUCT_NAME_MAX = 200
STOCK_MAX = 2**31 - 1
#: The longest payment window a hold may have: a day (the column's check, migration 0003).
HOLD_SECONDS_MAX = 86_400
#: The most units one buyer may take in a sale (the column's check, migration 0004).
PER_USER_LIMIT_MAX = 100
#: How long before its sale a waiting room's line may open: a week (migration 0005).
LINE_OPENS_MAX_S = 604_800
#: The fastest a waiting room may admit, tickets a second (migration 0005).
ADMIT_PER_S_MAX = 100_000

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


#: The refused characters the OpenAPI pattern names, as code point ranges: every control
#: character (Cc), the line and paragraph separators (Zl, Zp), the surrogates (Cs) and the
#: Basic Multilingual Plane's private-use area (Co), and the invisible formatting characters
#: (Cf) that hide or reorder text: the soft hyphen, the Arabic letter mark, the Mongolian
#: vowel separator, zero-width characters and direction marks, bidi embeddings, overrides and
#: isolates, word joiners, the byte order mark and the interlinear annotation characters.
#: The other Cf and Co characters and the unassigned code points (Cn) would take a pattern of
#: some 35,000 characters: the document says them in words, and :func:`text` refuses them.
PATTERN_RANGES: tuple[tuple[int, int], ...] = (
    (0x00, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x61C, 0x61C), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0xD800, 0xF8FF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),
)


def _range(first: int, last: int) -> str:
    # \uXXXX reads the same in Python's re and ECMA-262.
    return f"\\u{first:04x}" if first == last else f"\\u{first:04x}-\\u{last:04x}"


def user_id_pattern() -> str:
    """The OpenAPI ``pattern`` of a user id: none of :data:`PATTERN_RANGES`, no blank at either
    end. Every string it refuses the server refuses too (or trims); the server refuses more."""
    refused = "".join(_range(first, last) for first, last in PATTERN_RANGES)
    return rf"^[^\s{refused}]([^{refused}]*[^\s{refused}])?$"


def user_id_rule() -> str:
    """The user id's rule in words, for the OpenAPI document."""
    categories = ", ".join(f"{name} ({kind})" for name, kind in REFUSED_CATEGORIES.items())
    return (f"{USER_ID_MIN} to {USER_ID_MAX} characters after trimming and NFC normalisation; "
            f"no character of the Unicode categories {categories}. The pattern names only the "
            "commonest of these characters; the server refuses them all.")


def purchase_id(raw: str) -> uuid.UUID:
    """The purchase id of a path, or InvalidInput (400) if not a UUID."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidInput("The purchase id must be a UUID.", field="purchaseId") from None


def ticket_id(raw: str) -> uuid.UUID:
    """The ticket id of a path, or InvalidInput (400) if not a UUID."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidInput("The ticket id must be a UUID.", field="ticket") from None


def sale_id(raw: str | None) -> uuid.UUID | None:
    """The sale id of a path (None: the current sale), or InvalidInput (400) if not a UUID."""
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidInput("The sale id must be a UUID.", field="id") from None
