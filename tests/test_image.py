"""Checks of the Dockerfile and requirements.lock, the image they build, that need no Docker
engine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from flashflow.settings import Settings

from .deployment import LOCK, ROOT, dockerfile_instructions
from .test_packaging import distributions, runtime_distributions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, read once for the module."""
    return dockerfile_instructions()


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    """requirements.lock as the version each distribution is pinned to."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name.strip())] = Version(version.strip())
    return pins


def test_the_python_base_image_is_pinned_and_fits_the_project(dockerfile):
    """The Dockerfile's base is an exact Python release on a named Debian, one that
    pyproject.toml's requires-python accepts and that requirements.lock was resolved for."""
    base = dockerfile[0]
    assert base[0] == "FROM"
    match = re.fullmatch(r"python:((\d+\.\d+)\.\d+)-slim-[a-z]+", base[1])
    assert match, base[1]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert Version(match[1]) in SpecifierSet(project["requires-python"])
    assert f"with Python {match[2]}\n" in LOCK.read_text(encoding="utf-8")


def test_dockerfile_builds_a_slim_non_root_image(dockerfile):
    """Slim base, `pip install`, a non-root user, a /readyz check, and `flashflow serve`."""
    instructions = dict(dockerfile)
    assert dockerfile[0][0] == "FROM" and "-slim" in dockerfile[0][1]
    install = next(n for n, (i, a) in enumerate(dockerfile) if i == "RUN" and "pip install" in a)
    users = [(n, a) for n, (i, a) in enumerate(dockerfile) if i == "USER"]
    assert len(users) == 1 and users[0][0] > install
    user = users[0][1]
    assert user not in {"root", "0"}
    assert any(i == "RUN" and "useradd" in a and user in a for i, a in dockerfile)
    assert "/readyz" in instructions["HEALTHCHECK"] and "urllib" in instructions["HEALTHCHECK"]
    assert instructions["CMD"] == '["flashflow", "serve"]'
    assert instructions["EXPOSE"] == "8000"
    env_text = " ".join(a for i, a in dockerfile if i == "ENV")
    env = dict(re.findall(r"(FLASHFLOW_[A-Z0-9_]+)=(\S+)", env_text))
    settings = Settings.from_env(env)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)


def test_dockerfile_copies_what_pip_install_reads(dockerfile):
    """The image gets pyproject.toml, its readme and licence, and every package setuptools
    installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    copied = " ".join(a for i, a in dockerfile if i == "COPY").split()
    assert "pyproject.toml" in copied and LOCK.name in copied
    assert project["project"]["readme"] in copied
    assert "LICENSE" in copied
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, package
        assert (ROOT / package / "__init__.py").is_file(), package


def test_the_image_installs_the_locked_runtime_without_extras(dockerfile):
    """The one `pip install` takes its versions from requirements.lock and installs the
    project without any extra: no embedded server, no test tool."""
    installs = [a for i, a in dockerfile if i == "RUN" and "pip install" in a]
    assert len(installs) == 1
    words = installs[0].split("&&")[0].split()
    constraint = words[words.index("--constraint") + 1]
    assert Path(constraint).name == LOCK.name
    assert words[-1] == "/src", "the project itself, with no [extra]"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert LOCK.name not in ignored


def test_the_lock_pins_every_runtime_dependency_within_its_range(lock):
    """requirements.lock pins each runtime dependency of pyproject.toml to a version its
    range accepts, and pins everything those dependencies require in turn."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in {LOCK.name}"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{name}=={lock[name]} is outside {requirement.specifier}; run `make lock`")
    assert runtime_distributions() - {"flashflow"} <= set(lock)


def test_the_lock_holds_no_extra(lock):
    """Neither the embedded servers nor the test tools are in the image's lock."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        own = {canonicalize_name(Requirement(r).name) for r in requirements} - {"flashflow"}
        assert not own & set(lock), (extra, sorted(own & set(lock)))
    assert not distributions(extras["embedded"]) - runtime_distributions() & set(lock)
