"""What a plain ``pip install .`` brings is enough for every module the package ships."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OWN = {"actors", "flashflow", "migrations"}


def _installed_by_default(requirement: str) -> str | None:
    """The distribution a requirement installs here without extras, or None."""
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
        return None
    return canonicalize_name(parsed.name)


def runtime_distributions() -> set[str]:
    """The runtime dependencies in pyproject.toml and, transitively, what they require."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = list(project["dependencies"])
    found: set[str] = set()
    while pending:
        name = _installed_by_default(pending.pop())
        if name is not None and name not in found:
            found.add(name)
            pending += requires(name) or []
    return found


def imported_modules() -> set[str]:
    """The top-level modules that the shipped packages import, theirs and the stdlib's aside."""
    modules: set[str] = set()
    for package in OWN:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - OWN - set(sys.stdlib_module_names)


def test_every_import_of_the_package_is_a_runtime_dependency():
    """No module under actors/ or flashflow/ needs a package that only the test extra installs."""
    providers = packages_distributions()
    runtime = runtime_distributions()
    missing = {module for module in imported_modules()
               if not {canonicalize_name(d) for d in providers.get(module, [])} & runtime}
    assert "httpx" in imported_modules()
    assert missing == set(), f"imported but not in [project] dependencies: {sorted(missing)}"
