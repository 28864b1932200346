"""Passwords out of anything shown: the one helper that masks them in URLs and in free text.

The settings' ``repr``, start-up errors, the CLI's messages and every log line go through
:func:`redact`, so a ``postgresql://app:S3cretPw@db/ff`` is shown as
``postgresql://app:***@db/ff`` wherever it would be printed.
"""

from __future__ import annotations

import re

#: What a password is replaced with.
MASK = "***"

# The password of a URL's user information: from the colon after the user to the last "@"
# of the same word. Greedy on purpose: a password holding an unescaped "/", "?" or "@" is
# still masked whole, at worst along with some of the URL's path (a "@" in its options).
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s:/]*):\S+@",
                       re.IGNORECASE)
# The same at the start of a value that lacks its "scheme://" (a malformed setting).
_BARE = re.compile(r"^(?P<head>)(?P<user>[^\s:/]*):(?!//)\S+@")
# A password passed as a query option (libpq's and asyncpg's ``?password=``).
_QUERY = re.compile(r"(?P<head>[?&][a-z_]*password=)[^&#\s]*", re.IGNORECASE)
# What any of the above needs somewhere in the text.
_CLUE = re.compile(r"@|password=", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (user information or ``?password=``)
    replaced by :data:`MASK`; the scheme, user, hosts, path and other options are kept."""
    if not _CLUE.search(text):
        return text  # the common case, a log line naming no credentials, costs one scan
    for userinfo in (_USERINFO, _BARE):
        text = userinfo.sub(_masked_userinfo, text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def _masked_userinfo(match: re.Match[str]) -> str:
    return f"{match['head']}{match['user']}:{MASK}@"


__all__ = ["MASK", "redact"]
