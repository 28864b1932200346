"""Tests of the structured log format."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid

import pytest

from flashflow.logs import LineBudget, configure_logging
from flashflow.settings import Settings, SettingsError

from .helpers import TtyStream

pytestmark = pytest.mark.usefixtures("restore_root_logger")


def test_json_lines_parse_and_carry_extras():
    """Off a terminal each event is one JSON line with time, level, logger, message and extras."""
    stream = io.StringIO()
    configure_logging(Settings(log_level="debug"), stream=stream)
    purchase_id = uuid.uuid4()
    log = logging.getLogger("flashflow.test")
    log.info("bought %s", "one", extra={"correlation_id": "c-1", "sale_id": "s-1",
                                        "purchase_id": purchase_id})
    log.debug("line\nbreak", extra={"user_id": "evil\n{\"level\":\"ERROR\"}"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "flashflow.test"
    assert first["pid"] == second["pid"] == os.getpid()
    assert first["message"] == "bought one"
    assert first["time"].endswith("Z")
    assert (first["correlation_id"], first["sale_id"]) == ("c-1", "s-1")
    assert first["purchase_id"] == str(purchase_id)
    assert second["message"] == "line\nbreak"
    assert second["level"] == "DEBUG"


def test_exceptions_travel_inside_the_json_line():
    """A logged exception stays inside its one JSON line, traceback included."""
    stream = io.StringIO()
    configure_logging(Settings(), stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("flashflow.test").exception("failed", extra={"sale_id": "s-2"})
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["level"] == "ERROR"
    assert "RuntimeError: boom" in event["exception"]
    assert event["sale_id"] == "s-2"


def test_terminal_output_is_readable_with_extras():
    """On a terminal the line is plain text, with extras as key=value pairs."""
    stream = TtyStream()
    configure_logging(Settings(), stream=stream)
    logging.getLogger("flashflow.test").warning("slow", extra={"correlation_id": "c-9"})
    text = stream.getvalue()
    assert "WARNING" in text and f"flashflow.test[{os.getpid()}]: slow" in text
    assert "correlation_id=c-9" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_level_filters_and_reconfiguring_replaces_the_handler():
    """Records below the level are dropped, and a second call does not duplicate lines."""
    first = io.StringIO()
    configure_logging(Settings(), stream=first)
    second = io.StringIO()
    configure_logging(Settings(log_level="WARNING"), stream=second)
    log = logging.getLogger("flashflow.test")
    log.info("hidden")
    log.warning("shown")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["shown"]


def test_unknown_level_names_the_variable():
    """A log level that is not a level is a SettingsError naming FLASHFLOW_LOG_LEVEL."""
    with pytest.raises(SettingsError, match="FLASHFLOW_LOG_LEVEL"):
        configure_logging(Settings(log_level="LOUD"), stream=io.StringIO())


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_budget_suppresses_a_flood_and_says_how_much_it_hid(caplog):
    """Past its burst a budget writes nothing; once refilled, one line counts what it hid."""
    clock = Ticks()
    budget = LineBudget(per_s=2.0, burst=3, clock=clock)
    log = logging.getLogger("flashflow.test")
    with caplog.at_level(logging.INFO, logger="flashflow.test"):
        for i in range(10):
            budget.log(log, logging.INFO, "line %d", i)
        assert [r.getMessage() for r in caplog.records] == ["line 0", "line 1", "line 2"]
        clock.now = 0.5  # one token back
        budget.log(log, logging.INFO, "line %d", 10)
        budget.log(log, logging.INFO, "line %d", 11)
        clock.now = 10.0
        budget.log(log, logging.INFO, "line %d", 12)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[3:] == ["7 lines suppressed over the budget of 2 a second", "line 10",
                            "1 lines suppressed over the budget of 2 a second", "line 12"]
    assert caplog.records[3].suppressed == 7


def test_a_line_budget_spends_nothing_on_lines_the_level_drops(caplog):
    """A line below the logger's level neither spends a token nor counts as suppressed."""
    budget = LineBudget(per_s=1.0, burst=1, clock=Ticks())
    log = logging.getLogger("flashflow.test")
    with caplog.at_level(logging.WARNING, logger="flashflow.test"):
        for _ in range(5):
            budget.log(log, logging.INFO, "hidden")
        budget.log(log, logging.WARNING, "shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]
