"""The edges of the ``flashflow`` command an operator touches: version, help, stray variables."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
from click.testing import CliRunner, Result

from flashflow.cli import main
from flashflow.database import execute, run_on_connection, with_database
from flashflow.http.wire import ADMIN_SALES
from flashflow.settings import NOT_SETTINGS, PREFIX, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s" * 32


@pytest.fixture(autouse=True)
def no_flashflow_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each command with only the FLASHFLOW_* variables its test gives it."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``flashflow ARGS`` with ``env`` added to the environment."""
    return CliRunner().invoke(main, list(args), env=env)


def warnings_of(result: Result) -> list[str]:
    """The messages of the warnings the command logged (as JSON lines, to stderr)."""
    return [json.loads(line)["message"] for line in result.stderr.splitlines()
            if line.startswith("{") and json.loads(line)["level"] == "WARNING"]


def test_version_comes_from_the_installed_package():
    """`flashflow --version` prints the version the package metadata holds."""
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"flashflow, version {version('flashflow')}\n"


def test_sale_help_points_at_the_admin_api():
    """`flashflow sale --help` no longer claims sales are out of HTTP's reach."""
    text = " ".join(invoke("sale", "--help").output.split())
    assert "not reachable over HTTP" not in text
    assert ADMIN_SALES in text


@pytest.mark.parametrize("name", ["seed", "migrate", "serve", "up", "token"])
def test_every_option_has_help(name):
    """Each option of the operators' commands says what it does in --help."""
    command = main.commands[name]
    missing = [p.name for p in command.params
               if isinstance(p, click.Option) and not p.help]
    assert missing == [], f"flashflow {name}: options without help: {missing}"
    assert invoke(name, "--help").exit_code == 0


def test_an_unknown_variable_is_warned_about_once_with_its_likely_name(monkeypatch):
    """A typo'd FLASHFLOW_* variable is named once at start, with the setting it resembles."""
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "set on purpose")
    result = invoke("token", "alice", env={
        "FLASHFLOW_AUTH_JWT_SECRET": SECRET, "FLASHFLOW_WORKER": "4",
        "FLASHFLOW_SOMETHING_ELSE": "1", "FLASHFLOW_METRICS_DIR": "/run/m"})
    assert result.exit_code == 0, result.output
    ignored = "is not a Flash Flow setting and is ignored"
    assert warnings_of(result) == [
        f"FLASHFLOW_METRICS_DIR {ignored}; did you mean PROMETHEUS_MULTIPROC_DIR?",
        f"FLASHFLOW_SOMETHING_ELSE {ignored}",
        f"FLASHFLOW_WORKER {ignored}; did you mean FLASHFLOW_WORKERS?",
    ]


def test_settings_and_the_tests_own_variables_are_not_warned_about(monkeypatch):
    """Real settings and the allow-listed variables pass silently, and so does a worker."""
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "set on purpose")
    result = invoke("token", "alice", env={"FLASHFLOW_AUTH_JWT_SECRET": SECRET,
                                           "FLASHFLOW_WORKERS": "2"})
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == []
    # A worker runs on the supervisor's environment, about which the supervisor warned.
    monkeypatch.setattr("flashflow.cli.trio.run", lambda *args: None)
    result = invoke("worker", "--fd", "3", env={"FLASHFLOW_WORKER": "4"})
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == []


def test_every_variable_the_repository_reads_is_a_setting_or_allow_listed():
    """A FLASHFLOW_* name read from the environment anywhere in the repository is either a
    setting or in NOT_SETTINGS, so no tool of ours sets off the start-up warning."""
    settings = {env_name(f) for f in fields(Settings)}
    read = set()
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        read |= set(re.findall(r"""environ(?:\.get\(|\[)\s*["'](FLASHFLOW_\w+)["']""",
                               path.read_text(encoding="utf-8")))
    assert "FLASHFLOW_FAULT_FIGURES_DIR" in read
    assert read <= settings | NOT_SETTINGS, sorted(read - settings - NOT_SETTINGS)


def test_up_without_the_embedded_extra_says_what_to_install(monkeypatch, tmp_path):
    """`flashflow up` with a URL unset and the embedded wheels missing stops with a usage error
    naming the extra to install, before it starts anything."""
    monkeypatch.setitem(sys.modules, "flashflow.embedded", None)
    monkeypatch.delattr("flashflow.embedded", raising=False)
    result = invoke("up", "--data-dir", str(tmp_path),
                    env={"FLASHFLOW_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2, result.output
    assert "pip install 'flashflow[embedded]'" in result.output
    assert not any(tmp_path.iterdir())


def test_a_server_that_cannot_start_says_why_in_one_line(services, database_url):
    """No traceback: which store, what it said, what to do, and no password."""
    empty = f"ff_empty_{uuid.uuid4().hex[:8]}"
    run_on_connection(services.database_url, execute, f'CREATE DATABASE "{empty}"')
    try:
        # The servers trust loopback, so a password is ignored, but it must never be shown.
        url = urlsplit(with_database(services.database_url, empty))
        unmigrated = url._replace(
            netloc=f"{url.username or 'postgres'}:S3cret@{url.hostname}:{url.port}").geturl()
        result = invoke("serve", "--workers", "1", "--port", "0", "--database-url", unmigrated,
                        "--redis-url", services.redis_url)
    finally:
        run_on_connection(services.database_url, execute,
                          f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
    assert result.exit_code == 1, result.output
    assert "could not start: PostgreSQL at" in result.output
    assert "(apply the migrations first: flashflow migrate)" in result.output
    assert "Traceback" not in result.output and "S3cret" not in result.output
    down = invoke("serve", "--workers", "1", "--port", "0", "--database-url", database_url,
                  "--redis-url", "redis://127.0.0.1:1/0")
    assert down.exit_code == 1, down.output
    assert "could not start: Redis at redis://127.0.0.1:1/0: ConnectionError" in down.output
    assert "Traceback" not in down.output


def test_sale_create_with_a_hold_window_prints_it_and_refuses_one_out_of_range(database_url):
    """`sale create --hold-seconds 30` writes a sale with holds and prints holdSeconds; 0 and
    86401 are refused with the option named, and write nothing; without it, no holdSeconds."""
    window = ["--database-url", database_url, "--stock", "5",
              "--start", "2030-01-01T10:00:00Z", "--end", "2030-01-01T11:00:00Z"]
    held = invoke("sale", "create", "--product", "Held", "--hold-seconds", "30", *window)
    plain = invoke("sale", "create", "--product", "Plain", *window)
    refused = [invoke("sale", "create", "--product", "Refused", "--hold-seconds", value, *window)
               for value in ("0", "86401", "1.5", "ten")]
    assert held.exit_code == 0, held.output
    printed = json.loads(held.stdout)
    assert printed["holdSeconds"] == 30 and printed["productName"] == "Held"
    assert plain.exit_code == 0, plain.output
    assert "holdSeconds" not in json.loads(plain.stdout)
    for result in refused:
        assert result.exit_code == 2, result.output
        assert "--hold-seconds" in result.output
    listed = invoke("sale", "list", "--database-url", database_url)
    rows = sorted((s["productName"], s.get("holdSeconds"))
                  for s in map(json.loads, listed.stdout.splitlines()))
    assert rows == [("Held", 30), ("Plain", None)]


def test_sale_create_with_a_per_user_limit_writes_and_prints_it(database_url):
    """`sale create --per-user-limit 4` writes the limit and prints perUserLimit; 0, 101, 1.5
    and a word are refused with the option named and write nothing; without it the limit is
    1 and nothing is printed for it."""
    window = ["--database-url", database_url, "--stock", "20",
              "--start", "2030-01-01T10:00:00Z", "--end", "2030-01-01T11:00:00Z"]
    several = invoke("sale", "create", "--product", "Several", "--per-user-limit", "4", *window)
    plain = invoke("sale", "create", "--product", "Plain", *window)
    refused = [invoke("sale", "create", "--product", "Refused", "--per-user-limit", value,
                      *window) for value in ("0", "101", "1.5", "four")]
    assert several.exit_code == 0, several.output
    assert json.loads(several.stdout)["perUserLimit"] == 4
    assert plain.exit_code == 0, plain.output
    assert "perUserLimit" not in json.loads(plain.stdout)
    for result in refused:
        assert result.exit_code == 2, result.output
        assert "--per-user-limit" in result.output
    rows = run_on_connection(database_url, _limits)
    assert rows == [("Plain", 1), ("Several", 4)]


async def _limits(conn) -> list[tuple[str, int]]:
    rows = await conn.fetch("SELECT product_name, per_user_limit FROM flash_sales "
                            "ORDER BY product_name")
    return [(r["product_name"], r["per_user_limit"]) for r in rows]


def test_sale_create_with_a_waiting_room_writes_and_prints_it(database_url):
    """`sale create --waiting-room` writes a room with the defaults (600 s, 10 a second, 120 s)
    or the options given, prints waitingRoom, and gives the sale its line; out-of-range
    values, and a room's option without --waiting-room, are refused with the option named
    and write nothing; without it, no waitingRoom."""
    window = ["--database-url", database_url, "--stock", "20",
              "--start", "2030-01-01T10:00:00Z", "--end", "2030-01-01T11:00:00Z"]
    lined = invoke("sale", "create", "--product", "Lined", "--waiting-room", *window)
    tuned = invoke("sale", "create", "--product", "Tuned", "--waiting-room",
                   "--line-opens-before", "3600", "--admit-per-second", "2.5",
                   "--admission-seconds", "45", *window)
    plain = invoke("sale", "create", "--product", "Plain", *window)
    refused = [(option, invoke("sale", "create", "--product", "Refused", "--waiting-room",
                               option, value, *window))
               for option, value in [("--line-opens-before", "-1"),
                                     ("--line-opens-before", "604801"),
                                     ("--admit-per-second", "0"),
                                     ("--admit-per-second", "100001"),
                                     ("--admit-per-second", "fast"),
                                     ("--admission-seconds", "0"),
                                     ("--admission-seconds", "86401"),
                                     ("--admission-seconds", "1.5")]]
    roomless = [(option, invoke("sale", "create", "--product", "Refused", option, value,
                                *window))
                for option, value in [("--line-opens-before", "60"),
                                      ("--admit-per-second", "10"),
                                      ("--admission-seconds", "120")]]
    assert lined.exit_code == 0, lined.output
    assert json.loads(lined.stdout)["waitingRoom"] == {
        "opensSecondsBefore": 600, "admitPerSecond": 10, "admissionSeconds": 120}
    assert tuned.exit_code == 0, tuned.output
    assert json.loads(tuned.stdout)["waitingRoom"] == {
        "opensSecondsBefore": 3600, "admitPerSecond": 2.5, "admissionSeconds": 45}
    assert plain.exit_code == 0, plain.output
    assert "waitingRoom" not in json.loads(plain.stdout)
    for option, result in [*refused, *roomless]:
        assert result.exit_code == 2, result.output
        assert option in result.output
    assert "--waiting-room" in roomless[0][1].output
    listed = [json.loads(line) for line in invoke(
        "sale", "list", "--database-url", database_url).stdout.splitlines()]
    assert sorted((s["productName"], s.get("waitingRoom", {}).get("admitPerSecond"))
                  for s in listed) == [("Lined", 10), ("Plain", None), ("Tuned", 2.5)]
    assert run_on_connection(database_url, _lines) == ["Lined", "Tuned"]


async def _lines(conn) -> list[str]:
    rows = await conn.fetch("SELECT product_name FROM lines JOIN flash_sales ON id = sale_id "
                            "ORDER BY product_name")
    return [r["product_name"] for r in rows]
