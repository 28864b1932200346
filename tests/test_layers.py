"""The direction of imports: ``flashflow`` uses ``actors``; ``actors`` never imports the HTTP
front; ``loadtests`` speaks HTTP and reads the stores like a user, never through an actor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What ``loadtests`` may take from ``actors``: the Redis layout (keys and value formats,
#: plain data with no actor behind it), so that it reads the gate as the gate writes it.
LOADTESTS_MAY_IMPORT = {"actors.keys"}


def imports(package: str) -> dict[str, set[str]]:
    """File -> every module it imports from (absolute; relative imports resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        here = parts[:-1]  # the package of a module, and of an __init__ alike
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                names.add(module)
        found[str(path.relative_to(ROOT))] = names
    return found


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_actors_import_neither_the_application_nor_the_http_front():
    wrong = {path: sorted(n for n in names
                          if top(n) in {"flashflow", "loadtests", "tests", "quart", "quart_trio",
                                        "quart_schema", "hypercorn", "werkzeug"})
             for path, names in imports("actors").items()}
    assert not {p: n for p, n in wrong.items() if n}


def test_loadtests_reach_no_actor():
    wrong = {}
    for path, names in imports("loadtests").items():
        outside = {n for n in names if top(n) == "actors" and n not in LOADTESTS_MAY_IMPORT}
        if outside:
            wrong[path] = sorted(outside)
    assert not wrong


@pytest.mark.parametrize("package", ["actors", "flashflow", "loadtests"])
def test_the_checker_sees_every_module(package):
    """The checks above would pass vacuously on an empty tree."""
    found = imports(package)
    assert len(found) >= 5
    assert any(names for names in found.values())
