"""What a plain ``pip install .`` brings is enough for every module the package ships."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tarfile
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


def test_the_sdist_carries_the_mit_licence(tmp_path):
    """LICENSE holds the MIT text pyproject.toml declares, and the sdist ships it and names
    it as a License-File in its metadata (the file a wheel's dist-info then carries)."""
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n")
    assert "Copyright (c) 2026 The Flash Flow authors" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in OWN:
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # In a process of its own: setuptools patches the interpreter it runs in.
    build = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    built = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=source,
                           capture_output=True, text=True, timeout=120, check=True)
    sdist = tmp_path / built.stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        root = sdist.name.removesuffix(".tar.gz")
        shipped = archive.extractfile(f"{root}/LICENSE").read().decode()
        metadata = archive.extractfile(f"{root}/PKG-INFO").read().decode()
    assert shipped == licence
    assert "\nLicense: MIT\n" in metadata and "\nLicense-File: LICENSE\n" in metadata
