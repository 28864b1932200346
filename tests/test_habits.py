"""The code's habits, checked with the tests: ruff's rules, and mypy's types on ``actors/``.

Both tools come with the test extra and take their settings from ``pyproject.toml``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The venv's scripts, beside the interpreter that runs the tests.
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run one of the venv's tools at the project's root; its output is kept for the message."""
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_ruff_finds_nothing():
    """``ruff check .`` passes with the rule sets selected in pyproject.toml."""
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_actors_type_check():
    """``mypy actors`` finds no type error."""
    result = run("mypy", "actors")
    assert result.returncode == 0, result.stdout + result.stderr
