"""Settings.from_env: defaults, typed casts, errors naming the variable, and overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flashflow.settings import Settings, SettingsError


def test_empty_environment_gives_the_defaults():
    """With no FLASHFLOW_* variable, every field keeps its default."""
    settings = Settings.from_env({"PATH": "/bin", "PORT": "1"})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.workers >= 1
    assert settings.database_url is None and settings.redis_url is None
    assert settings.max_body_bytes == 4096 and settings.access_log is False


def test_values_are_cast_to_their_field_types():
    """Each variable is parsed into its field's type."""
    settings = Settings.from_env({
        "FLASHFLOW_DATABASE_URL": " postgresql://u@db:5432/ff ",
        "FLASHFLOW_REDIS_URL": "redis://cache:6379/1",
        "FLASHFLOW_HOST": "0.0.0.0",
        "FLASHFLOW_PORT": "9000",
        "FLASHFLOW_WORKERS": "4",
        "FLASHFLOW_DATA_DIR": "/var/lib/ff",
        "FLASHFLOW_KEY_PREFIX": "shop:",
        "FLASHFLOW_REDIS_TIMEOUT_S": "0.25",
        "FLASHFLOW_RETRY_AFTER_S": "3",
        "FLASHFLOW_ACCESS_LOG": " Yes ",
        "FLASHFLOW_LOG_LEVEL": "DEBUG",
    })
    assert settings.database_url == "postgresql://u@db:5432/ff"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.host == "0.0.0.0"
    assert settings.port == 9000 and settings.workers == 4 and settings.retry_after_s == 3
    assert settings.data_dir == Path("/var/lib/ff")
    assert settings.key_prefix == "shop:"
    assert settings.redis_timeout_s == 0.25 and isinstance(settings.redis_timeout_s, float)
    assert settings.access_log is True
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False),
])
def test_booleans_accept_the_usual_spellings(raw, expected):
    """true/false, yes/no, on/off and 1/0 are read as booleans, case-insensitively."""
    assert Settings.from_env({"FLASHFLOW_ACCESS_LOG": raw}).access_log is expected


def test_blank_url_means_unset_and_paths_expand_home(monkeypatch):
    """A blank URL reads as None; a leading ~ in a path is expanded."""
    monkeypatch.setenv("HOME", "/home/tester")
    settings = Settings.from_env({"FLASHFLOW_REDIS_URL": "   ",
                                  "FLASHFLOW_DATA_DIR": "~/flash"})
    assert settings.redis_url is None
    assert settings.data_dir == Path("/home/tester/flash")


@pytest.mark.parametrize(("name", "raw"), [
    ("FLASHFLOW_PORT", "abc"),
    ("FLASHFLOW_PORT", "70000"),
    ("FLASHFLOW_PORT", "-1"),
    ("FLASHFLOW_WORKERS", "0"),
    ("FLASHFLOW_GATE_INBOX_SIZE", "-5"),
    ("FLASHFLOW_MAX_BODY_BYTES", "4k"),
    ("FLASHFLOW_REDIS_TIMEOUT_S", "0"),
    ("FLASHFLOW_POSTGRES_TIMEOUT_S", "nan"),
    ("FLASHFLOW_GRACEFUL_TIMEOUT_S", "soon"),
    ("FLASHFLOW_ACCESS_LOG", "maybe"),
    ("FLASHFLOW_REDIS_URL", "localhost:6379"),
    ("FLASHFLOW_DATABASE_URL", "db.example.com"),
])
def test_malformed_value_raises_settings_error_naming_the_variable(name, raw):
    """A malformed variable raises SettingsError whose message names it and its value."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: raw})
    assert name in str(caught.value)
    assert repr(raw) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_port_zero_is_allowed_for_an_ephemeral_port():
    """FLASHFLOW_PORT=0 is valid: it asks for any free port."""
    assert Settings.from_env({"FLASHFLOW_PORT": "0"}).port == 0


def test_overrides_win_over_the_environment_and_none_is_ignored():
    """Keyword overrides replace environment values; an override of None changes nothing."""
    settings = Settings.from_env({"FLASHFLOW_PORT": "9000", "FLASHFLOW_HOST": "0.0.0.0"},
                                 port=9100, host=None, workers=2)
    assert (settings.port, settings.host, settings.workers) == (9100, "0.0.0.0", 2)


def test_override_does_not_hide_a_malformed_variable():
    """An override does not stop a malformed variable from being reported."""
    with pytest.raises(SettingsError, match="FLASHFLOW_PORT"):
        Settings.from_env({"FLASHFLOW_PORT": "abc"}, port=9000)


def test_process_environment_is_read_by_default(monkeypatch):
    """Without an explicit mapping, os.environ is read."""
    monkeypatch.setenv("FLASHFLOW_WORKERS", "3")
    monkeypatch.setenv("FLASHFLOW_LOG_LEVEL", "WARNING")
    settings = Settings.from_env()
    assert (settings.workers, settings.log_level) == (3, "WARNING")


def test_settings_are_frozen():
    """A built Settings cannot be changed."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_require_names_the_first_unset_variable():
    """require() returns the settings when the URLs are set, else names the missing variable."""
    ready = Settings(database_url="postgresql://db/ff", redis_url="redis://cache/0")
    assert ready.require("database_url", "redis_url") is ready
    with pytest.raises(SettingsError, match=r"^FLASHFLOW_REDIS_URL is not set$"):
        Settings(database_url="postgresql://db/ff").require("database_url", "redis_url")
    with pytest.raises(SettingsError, match=r"^FLASHFLOW_DATABASE_URL is not set$"):
        Settings().require("database_url")


def test_metrics_dir_is_read_from_prometheus_own_variable():
    """metrics_dir comes from PROMETHEUS_MULTIPROC_DIR, the name prometheus-client reads."""
    assert Settings.from_env({}).metrics_dir is None
    assert Settings.from_env({"PROMETHEUS_MULTIPROC_DIR": " "}).metrics_dir is None
    settings = Settings.from_env({"PROMETHEUS_MULTIPROC_DIR": "/run/ff-metrics",
                                  "FLASHFLOW_METRICS_DIR": "/ignored"})
    assert settings.metrics_dir == Path("/run/ff-metrics")


def test_to_env_round_trips_through_from_env():
    """The variables to_env() gives a worker build the very same settings back."""
    settings = Settings(database_url="postgresql://db/ff", host="0.0.0.0", port=0, workers=3,
                        data_dir=Path("/var/lib/ff"), redis_timeout_s=0.25,
                        rate_limit_enabled=False, access_log=True, log_level="DEBUG",
                        metrics_dir=Path("/run/ff-metrics"), admin_token="t0ken")
    env = settings.to_env()
    assert env["FLASHFLOW_LOG_LEVEL"] == "DEBUG" and "FLASHFLOW_REDIS_URL" not in env
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/ff-metrics"
    assert Settings.from_env(env) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_process_env_holds_these_settings_and_nothing_else_of_the_parents():
    """A child's environment from process_env() reads back the settings alone: the parent's
    other variables pass, its FLASHFLOW_* and setting variables do not."""
    settings = Settings(database_url="postgresql://db/ff", workers=2)
    parent = {"PATH": "/bin", "FLASHFLOW_ADMIN_TOKEN": "parent", "FLASHFLOW_TYPO": "1",
              "PROMETHEUS_MULTIPROC_DIR": "/run/parent"}
    env = settings.process_env(parent)
    assert env == {"PATH": "/bin", **settings.to_env()}
    assert Settings.from_env(env) == settings


def test_cli_fails_once_naming_the_unset_url(monkeypatch):
    """A command that needs a URL that is unset stops with one error naming the variable."""
    from click.testing import CliRunner

    from flashflow.cli import main

    for name in ("FLASHFLOW_DATABASE_URL", "FLASHFLOW_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    for args, missing in ((["migrate"], "FLASHFLOW_DATABASE_URL"),
                          (["sale", "list"], "FLASHFLOW_DATABASE_URL"),
                          (["serve", "--database-url", "postgresql://db/ff"],
                           "FLASHFLOW_REDIS_URL")):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count(f"{missing} is not set") == 1, (args, result.output)


def test_cli_log_level_travels_in_the_settings_not_the_environment(monkeypatch):
    """--log-level reaches the command's settings and leaves os.environ alone."""
    import os

    import click
    from click.testing import CliRunner

    from flashflow.cli import main

    monkeypatch.delenv("FLASHFLOW_LOG_LEVEL", raising=False)
    seen: list[Settings] = []

    @main.command("_probe", hidden=True)
    @click.pass_obj
    def probe(settings: Settings) -> None:
        seen.append(settings)

    try:
        result = CliRunner().invoke(main, ["--log-level", "WARNING", "_probe"])
    finally:
        main.commands.pop("_probe")
    assert result.exit_code == 0, result.output
    assert [s.log_level for s in seen] == ["WARNING"]
    assert "FLASHFLOW_LOG_LEVEL" not in os.environ


def test_an_empty_admin_token_turns_the_admin_api_off():
    """FLASHFLOW_ADMIN_TOKEN read as-is, and an empty or blank one is no token at all."""
    assert Settings.from_env({"FLASHFLOW_ADMIN_TOKEN": "abc"}).admin_token == "abc"
    assert Settings.from_env({"FLASHFLOW_ADMIN_TOKEN": "  "}).admin_token is None
    assert "abc" not in repr(Settings(admin_token="abc")), "the token never reaches a log"
def test_auth_and_proxy_settings_are_parsed():
    """Token keys, trusted proxies (addresses and CIDRs) and CORS origins are read and typed."""
    import ipaddress

    settings = Settings.from_env({
        "FLASHFLOW_AUTH_JWT_SECRET": "s" * 32, "FLASHFLOW_AUTH_JWT_ISSUER": " ",
        "FLASHFLOW_AUTH_JWT_AUDIENCE": "shop", "FLASHFLOW_AUTH_JWT_LEEWAY_S": "0",
        "FLASHFLOW_TRUSTED_PROXIES": "10.0.0.1, 172.16.0.0/12,2001:db8::/32",
        "FLASHFLOW_CORS_ORIGINS": "https://shop.example/, http://localhost:3000",
    })
    assert settings.auth_enabled and settings.auth_jwt_issuer is None
    assert settings.auth_jwt_audience == "shop" and settings.auth_jwt_leeway_s == 0
    assert settings.trusted_proxies == tuple(ipaddress.ip_network(n) for n in (
        "10.0.0.1/32", "172.16.0.0/12", "2001:db8::/32"))
    assert settings.cors_origins == ("https://shop.example", "http://localhost:3000")
    assert "s" * 32 not in repr(settings)


@pytest.mark.parametrize(("env", "needle"), [
    ({"FLASHFLOW_TRUSTED_PROXIES": "10.0.0.0/8, proxy.internal"}, "FLASHFLOW_TRUSTED_PROXIES"),
    ({"FLASHFLOW_CORS_ORIGINS": "shop.example"}, "FLASHFLOW_CORS_ORIGINS"),
    ({"FLASHFLOW_AUTH_JWT_LEEWAY_S": "-1"}, "FLASHFLOW_AUTH_JWT_LEEWAY_S"),
    ({"FLASHFLOW_AUTH_JWT_SECRET": "short"}, "at least 32 bytes"),
    ({"FLASHFLOW_AUTH_JWT_SECRET": "s" * 32, "FLASHFLOW_AUTH_JWT_PUBLIC_KEY_FILE": "/k.pem"},
     "not both"),
])
def test_malformed_auth_settings_name_the_variable(env, needle):
    """A bad proxy list, origin, leeway or secret, or two keys at once, is a SettingsError."""
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_to_env_round_trips_auth_and_proxy_settings(tmp_path):
    """Settings written out as FLASHFLOW_* variables read back equal, unset and tuples too."""
    import ipaddress

    settings = Settings(database_url="postgresql://u@db/ff", data_dir=tmp_path,
                        auth_jwt_secret="s" * 32, auth_jwt_leeway_s=0.0,
                        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
                        cors_origins=("https://a.example", "https://b.example"))
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()
