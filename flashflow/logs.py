"""Structured logs: one JSON object a line for machines, a readable line for a terminal.

Every field passed through ``extra=`` (``correlation_id``, ``sale_id``, ``purchase_id``,
...) becomes a key of the JSON object, or a ``key=value`` pair in the readable format.
Every line names the process that wrote it (``pid``), so the lines of several workers
sharing one stderr can be told apart. Both formats mask the password of any URL a line
holds (:func:`flashflow.redaction.redact`). :class:`LineBudget` is the token bucket that
keeps a flood of requests from writing a line each.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
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
        """Return ``{"time", "level", "logger", "pid", "message", ...extras}`` as compact JSON."""
        event: dict[str, Any] = {
            "time": timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
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
        super().__init__("%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the classic line followed by the record's extras."""
        line = super().format(record)
        fields = extras(record)
        if fields:
            pairs = " ".join(f"{k}={v}" for k, v in fields.items())
            head, sep, rest = line.partition("\n")
            line = f"{head} [{pairs}]{sep}{rest}"
        return redact(line)


class LineBudget:
    """A token bucket of log lines, one per process: ``per_s`` lines a second, ``burst`` at once.

    A line that finds the bucket empty is not written but counted; the next line that finds
    a token again is preceded by one line saying how many were suppressed meanwhile. The
    caller runs on one thread (the process's trio loop), so there is no lock.
    """

    def __init__(self, per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._suppressed = 0

    def take(self) -> int | None:
        """Spend a token: None when the bucket is empty (the line is suppressed and counted),
        else the number of lines suppressed since the last one written (then reset)."""
        now = self._clock()
        refill = max(0.0, now - self._last) * self.per_s
        self._tokens = min(float(self.burst), self._tokens + refill)
        self._last = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    def log(self, logger: logging.Logger, level: int, msg: str, *args: Any,
            **kwargs: Any) -> None:
        """``logger.log(level, msg, *args, **kwargs)`` within the budget; a line the level
        would drop anyway spends nothing."""
        if not logger.isEnabledFor(level):
            return
        suppressed = self.take()
        if suppressed is None:
            return
        if suppressed:
            logger.log(level, "%d lines suppressed over the budget of %g a second",
                       suppressed, self.per_s, extra={"suppressed": suppressed})
        logger.log(level, msg, *args, **kwargs)


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
