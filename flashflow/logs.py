"""Structured logs: one JSON object a line for machines, a readable line for a terminal.

Every field passed through ``extra=`` (``correlation_id``, ``sale_id``, ``purchase_id``,
...) becomes a key of the JSON object, or a ``key=value`` pair in the readable format.
Both formats mask the password of any URL a line holds (:func:`flashflow.redaction.redact`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from .redaction import redact
from .settings import Settings, SettingsError

#: Attributes every LogRecord has; anything else on a record came in through ``extra=``.
STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_MARK = "_flashflow_handler"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached to ``record`` with ``extra=``."""
    return {k: v for k, v in vars(record).items()
            if k not in STANDARD_ATTRS and not k.startswith("_")}


def timestamp(record: logging.LogRecord) -> str:
    """The record's creation time in ISO 8601 UTC with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``{"time", "level", "logger", "message", ...extras}`` as compact JSON."""
        event: dict[str, Any] = {
            "time": timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in extras(record).items():
            event.setdefault(key, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            event["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            event["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(event, default=str, separators=(",", ":"))


class ReadableFormatter(logging.Formatter):
    """Formats a record for a person at a terminal, extras as ``key=value`` pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the classic line followed by the record's extras."""
        line = super().format(record)
        fields = extras(record)
        if fields:
            pairs = " ".join(f"{k}={v}" for k, v in fields.items())
            head, sep, rest = line.partition("\n")
            line = f"{head} [{pairs}]{sep}{rest}"
        return redact(line)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def configure_logging(settings: Settings, *, stream: TextIO | None = None,
                      json_lines: bool | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr by default) at ``settings.log_level``.

    Args:
        settings: the level comes from ``settings.log_level``.
        stream: where the lines go; defaults to ``sys.stderr``.
        json_lines: force JSON (True) or the readable format (False); by default JSON
            unless ``stream`` is a terminal.

    Returns:
        The handler installed on the root logger; a second call replaces it.

    Raises:
        SettingsError: ``FLASHFLOW_LOG_LEVEL`` names no logging level.
    """
    level = logging.getLevelName(settings.log_level.strip().upper())
    if not isinstance(level, int):
        raise SettingsError(f"FLASHFLOW_LOG_LEVEL={settings.log_level!r}: "
                            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    stream = sys.stderr if stream is None else stream
    if json_lines is None:
        json_lines = not _is_tty(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else ReadableFormatter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
