"""Checks of docker-compose.yml and the Dockerfile that need no Docker engine."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from flashflow.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
VARIABLE = re.compile(r"\bFLASHFLOW_[A-Z0-9_]+")
SETTING_VARIABLES = {PREFIX + f.name.upper() for f in fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as Compose gives it when the shell sets none of the names."""
    env = service.get("environment") or {}
    return {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def command(value: Any) -> str:
    """A compose command or healthcheck test as one string."""
    return " ".join(value) if isinstance(value, list) else str(value)


def test_compose_has_the_services_and_images(compose):
    """The stack is postgres:16, redis:7, the built app, its migrate step and a load test."""
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "app", "loadtest"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["app"]["build"] == "."
    assert services["migrate"]["image"] == services["app"]["image"]
    assert services["loadtest"]["image"].startswith("locustio/locust:")


def test_healthchecks_probe_each_server(compose):
    """Postgres answers pg_isready, Redis answers PING, the app answers /readyz."""
    services = compose["services"]
    assert "pg_isready" in command(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in command(services["redis"]["healthcheck"]["test"])
    app_check = command(services["app"]["healthcheck"]["test"])
    assert "/readyz" in app_check and "urllib" in app_check
    assert "curl" not in app_check


def test_start_order_waits_for_health_and_migrations(compose):
    """The app waits for healthy servers and a finished migrate; migrate waits for Postgres."""
    services = compose["services"]
    assert services["app"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["loadtest"]["depends_on"]["app"] == {"condition": "service_healthy"}


def test_migrate_then_seed_and_serve(compose):
    """The one-shot step migrates then seeds only an empty database; the app serves."""
    services = compose["services"]
    steps = command(services["migrate"]["command"])
    assert "flashflow migrate && flashflow seed --if-empty" in steps
    assert command(services["app"]["command"]) == "flashflow serve"


def test_app_listens_on_the_published_port(compose):
    """The app binds 0.0.0.0:8000 inside, published as 8000, and its settings parse."""
    app = compose["services"]["app"]
    settings = Settings.from_env(environment(app))
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert app["ports"] == ["8000:8000"]
    assert f"127.0.0.1:{settings.port}/readyz" in command(app["healthcheck"]["test"])
    assert settings.database_url.startswith("postgresql://")
    assert "@postgres:5432/" in settings.database_url
    assert settings.redis_url.startswith("redis://redis:6379")


def test_loadtest_runs_locust_headless_under_its_profile(compose):
    """The load test is opt-in and runs the project's locustfile headless against the app."""
    loadtest = compose["services"]["loadtest"]
    assert loadtest["profiles"] == ["loadtest"]
    run = command(loadtest.get("entrypoint", [])) + " " + command(loadtest.get("command", []))
    assert "locust -f loadtests/locustfile.py --headless --host http://app:8000" in run
    assert any(v.startswith("./loadtests:") for v in loadtest["volumes"])
    locustfile = (ROOT / "loadtests" / "locustfile.py").read_text(encoding="utf-8")
    for name in (k for k in loadtest["environment"] if k.startswith("LOCUST_")):
        assert f'env_var="{name}"' in locustfile, f"{name} is not an option of the locustfile"


def test_every_flashflow_variable_is_a_setting(compose):
    """Each FLASHFLOW_* name in the compose file and the Dockerfile is a Settings field."""
    text = COMPOSE.read_text(encoding="utf-8") + DOCKERFILE.read_text(encoding="utf-8")
    used = set(VARIABLE.findall(text))
    assert used, "no FLASHFLOW_* variable found"
    assert used <= SETTING_VARIABLES, sorted(used - SETTING_VARIABLES)
    for service in compose["services"].values():
        Settings.from_env(environment(service))


def test_dockerfile_builds_a_slim_non_root_image(dockerfile):
    """Slim base, `pip install`, a non-root user, a /readyz check, and `flashflow serve`."""
    instructions = dict(dockerfile)
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
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
    assert "pyproject.toml" in copied
    assert project["project"]["readme"] in copied
    assert "LICENSE" in copied
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, package
        assert (ROOT / package / "__init__.py").is_file(), package
