"""Checks of docker-compose.yml and what it reads that need no Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from flashflow.cpus import available_cpus
from flashflow.settings import PREFIX, Settings, env_name
from flashflow.supervisor import stop_deadline_s

from .deployment import COMPOSE, DOCKERFILE, ROOT, dockerfile_instructions

ENV_EXAMPLE = ROOT / ".env.example"
VARIABLE = re.compile(r"\bFLASHFLOW_[A-Z0-9_]+")
SETTING_VARIABLES = {PREFIX + f.name.upper() for f in fields(Settings)}
#: Compose's interpolation: ``$$``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` and
#: their forms without the colon.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
#: The services that run once and exit; every other one runs until stopped.
ONE_SHOT = {"migrate", "loadtest"}
#: The settings the stack may not run without.
REQUIRED_SETTINGS = {"admin_token", "metrics_token"}


class Refused(Exception):
    """Compose would refuse the file: a required variable is unset or empty."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its variables replaced as Compose replaces them from ``env``."""
    def one(match: re.Match[str]) -> str:
        name, how, word = match.groups()
        if name is None:
            return "$"
        value = env.get(name)
        missing = value is None or (how is not None and how.startswith(":") and not value)
        if how is not None and how.endswith("?") and missing:
            raise Refused(name, word)
        if how is not None and how.endswith("-") and missing:
            return word
        return value or ""
    return INTERPOLATION.sub(one, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """The compose document with every string interpolated from ``env``."""
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` assignments of an env file, comments aside."""
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def filled() -> dict[str, str]:
    """The variables of .env.example, each given a value as an operator would."""
    return {name: value or f"{name.lower()}-{os.urandom(16).hex()}"
            for name, value in env_file(ENV_EXAMPLE).items()}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The compose file as written, before interpolation."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    """The values an operator put in .env."""
    return filled()


@pytest.fixture(scope="module")
def compose(raw, secrets) -> dict[str, Any]:
    """The compose file as Compose runs it with a filled-in .env and nothing in the shell."""
    return resolve(raw, secrets)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, as strings."""
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def command(value: Any) -> str:
    """A compose command or healthcheck test as one string."""
    return " ".join(value) if isinstance(value, list) else str(value)


def seconds(duration: str) -> float:
    """A Compose duration (``1m30s``, ``20s``, ``500ms``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_has_the_services_and_images(raw):
    """The stack is PostgreSQL 16, Redis 7, the built app, its migrate step and a load test."""
    services = raw["services"]
    assert set(services) == {"postgres", "redis", "migrate", "app", "loadtest"}
    assert services["postgres"]["image"].startswith("postgres:16.")
    assert services["redis"]["image"].startswith("redis:7.")
    assert services["app"]["build"] == "."
    assert services["migrate"]["image"] == services["app"]["image"]
    assert services["loadtest"]["image"].startswith("locustio/locust:")


def test_every_pulled_image_is_pinned_to_an_exact_version(raw):
    """Each image pulled (not the one built here) names an exact release, no moving tag."""
    pulled = {name: s["image"] for name, s in raw["services"].items() if "build" not in s
              and s.get("image") != raw["services"]["app"]["image"]}
    assert set(pulled) == {"postgres", "redis", "loadtest"}
    for name, image in pulled.items():
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?", image), f"{name}: {image}"
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", pulled["redis"])
    assert re.fullmatch(r"locustio/locust:\d+\.\d+\.\d+", pulled["loadtest"])


def test_long_running_services_restart_and_one_shots_do_not(raw):
    """PostgreSQL, Redis and the app come back after a crash or a reboot; migrate and the
    load test run once."""
    for name, service in raw["services"].items():
        assert "restart" in service, f"{name} has no restart policy"
        expected = {"no"} if name in ONE_SHOT else {"unless-stopped", "always"}
        assert service["restart"] in expected, (name, service["restart"])


def test_secrets_come_from_the_env_file_and_are_required(raw):
    """No password or token is written in the compose file: each is a variable that Compose
    refuses to run without, and .env.example lists exactly those, empty."""
    text = COMPOSE.read_text(encoding="utf-8")
    used = {m[1]: m[2] for m in INTERPOLATION.finditer(text) if m[1]}
    required = {name for name, how in used.items() if how == ":?"}
    optional = {name for name, how in used.items() if how == ":-"}
    assert required | optional == set(used), "each variable is either required or defaulted"
    settings = {f.name: env_name(f) for f in fields(Settings)}
    assert {settings[name] for name in REQUIRED_SETTINGS} <= required
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD"} <= required
    example = env_file(ENV_EXAMPLE)
    assert {name for name, value in example.items() if not value} == required
    assert set(example) == required, "every assignment in .env.example is a required secret"
    shown = re.findall(r"^# ?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert optional <= set(shown), "every optional variable is shown, commented out"
    # A password or token is a variable, as the whole of a value or a URL's password.
    secret = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]*\}")
    for service in raw["services"].values():
        for name, value in environment(service).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|AUTH", name):
                assert secret.fullmatch(value), name
            for password in re.findall(r"://[^/@]*?:([^@]*)@", value):
                assert secret.fullmatch(password), name


@pytest.mark.parametrize("missing", sorted(v for v, value in env_file(ENV_EXAMPLE).items()
                                           if not value))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_a_secret(raw, missing, how):
    """With one secret unset or left empty as .env.example has it, Compose stops, naming it."""
    env = filled()
    if how == "unset":
        del env[missing]
    else:
        env[missing] = ""
    with pytest.raises(Refused) as refused:
        resolve(raw, env)
    assert refused.value.name == missing
    assert ".env.example" in str(refused.value)


def test_the_app_gets_its_tokens_and_the_servers_passwords(compose, secrets):
    """The app runs with the admin and metrics tokens set, and with the passwords that
    PostgreSQL and Redis were started with in its URLs."""
    services = compose["services"]
    settings = Settings.from_env(environment(services["app"]))
    assert settings.admin_token == secrets["FLASHFLOW_ADMIN_TOKEN"]
    assert settings.metrics_token == secrets["FLASHFLOW_METRICS_TOKEN"]
    postgres_password = environment(services["postgres"])["POSTGRES_PASSWORD"]
    redis_password = environment(services["redis"])["REDISCLI_AUTH"]
    assert postgres_password == secrets["POSTGRES_PASSWORD"]
    for service in ("app", "migrate"):
        urls = Settings.from_env(environment(services[service]))
        assert f":{postgres_password}@postgres:5432/" in urls.database_url
        assert urls.redis_url == f"redis://:{redis_password}@redis:6379/0"
    # The server reads its password from the environment redis-cli reads it from too.
    assert '--requirepass "$REDISCLI_AUTH"' in command(services["redis"]["command"])
    assert command(services["redis"]["healthcheck"]["test"]) == "CMD redis-cli ping"


def test_env_files_stay_out_of_git_and_the_image():
    """.env is ignored by git and by the build context; .env.example is committed."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    def ignored(name: str) -> bool:
        return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", name],
                              timeout=30).returncode == 0
    assert ignored(".env") and not ignored(".env.example")
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_the_stop_grace_period_outlasts_the_drain(raw, compose):
    """Compose waits longer before its SIGKILL than the app takes to stop: the graceful
    timeout (its default, which the file leaves alone), then the time its workers get to
    close before the supervisor kills them."""
    app = compose["services"]["app"]
    settings = Settings.from_env(environment(app))
    graceful = next(f for f in fields(Settings) if f.name == "graceful_timeout_s")
    assert settings.graceful_timeout_s == graceful.default
    assert seconds(app["stop_grace_period"]) > stop_deadline_s(settings)
    assert stop_deadline_s(settings) > settings.graceful_timeout_s


def test_the_worker_count_follows_the_container_cpu_quota(compose):
    """Neither file fixes FLASHFLOW_WORKERS, so serve starts one worker per CPU of the
    container's quota, which is how Settings counts them by default."""
    workers = next(f for f in fields(Settings) if f.name == "workers")
    assert workers.default_factory is available_cpus
    dockerfile = dockerfile_instructions()
    for service in compose["services"].values():
        assert env_name(workers) not in environment(service)
    assert env_name(workers) not in " ".join(a for i, a in dockerfile if i == "ENV")


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
    assert settings.redis_url.startswith("redis://:") and "@redis:6379/" in settings.redis_url


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


def docker_compose() -> list[str] | None:
    """The `docker compose` command, when the plugin answers without a Docker engine."""
    if shutil.which("docker") is None:
        return None
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ["docker", "compose"] if done.returncode == 0 else None


@pytest.mark.skipif(docker_compose() is None, reason="no `docker compose` plugin")
@pytest.mark.parametrize("complete", [True, False])
def test_docker_compose_config_accepts_the_file(tmp_path, complete):
    """`docker compose config` (which needs no engine) accepts the file with a filled-in
    .env, and refuses it while a secret is empty."""
    secrets = filled()
    if not complete:
        secrets["FLASHFLOW_METRICS_TOKEN"] = ""
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    done = subprocess.run([*docker_compose(), "--file", str(COMPOSE), "--env-file", str(dotenv),
                           "--profile", "loadtest", "config", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=60)
    if complete:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode != 0 and "FLASHFLOW_METRICS_TOKEN" in done.stderr
