"""Secrets stay secret: URL passwords and tokens are masked wherever they are shown."""

from __future__ import annotations

import io
import json
import logging

import pytest
from click.testing import CliRunner

from flashflow import settings as settings_module
from flashflow.cli import main
from flashflow.logs import configure_logging
from flashflow.redaction import MASK, redact
from flashflow.settings import Settings, SettingsError

from .helpers import TtyStream

PASSWORD = "S3cretPw"
TOKENS = {"admin_token": "adm1n-t0ken", "metrics_token": "m3trics-t0ken",
          "auth_jwt_secret": "jwt-s3cret-" + "x" * 32}


@pytest.mark.parametrize(("shown", "masked"), [
    (f"postgresql://app:{PASSWORD}@db:5432/ff", "postgresql://app:***@db:5432/ff"),
    (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
    (f"redis+sentinel://app:{PASSWORD}@s1:26379,s2/main/0",
     "redis+sentinel://app:***@s1:26379,s2/main/0"),
    (f"PostgreSQL at postgresql://app:p@ss/{PASSWORD}?@db/ff: refused",
     "PostgreSQL at postgresql://app:***@db/ff: refused"),
    (f"postgresql://db/ff?user=app&password={PASSWORD}&sslmode=require",
     "postgresql://db/ff?user=app&password=***&sslmode=require"),
    (f"app:{PASSWORD}@db/ff", "app:***@db/ff"),
])
def test_redact_masks_the_password_and_keeps_the_rest(shown, masked):
    """The password of a URL (user information, ?password=, a missing scheme) is masked."""
    assert redact(shown) == masked
    assert MASK in masked


@pytest.mark.parametrize("plain", [
    "postgresql://app@db:5432/ff", "redis://cache:6379/0", "mail alice@example.com at 10:30",
    "bought one", "",
])
def test_redact_leaves_text_without_a_password_alone(plain):
    """A URL without a password, and text that only looks like one, are unchanged."""
    assert redact(plain) == plain


def test_settings_repr_masks_url_passwords_and_omits_tokens():
    """repr (and str) of the settings show no URL password and no token."""
    settings = Settings(database_url=f"postgresql://app:{PASSWORD}@db/ff",
                        redis_url=f"redis://:{PASSWORD}@cache:6379/0", **TOKENS)
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert PASSWORD not in shown
        assert "postgresql://app:***@db/ff" in shown and "redis://:***@cache:6379/0" in shown
        for token in TOKENS.values():
            assert token not in shown
    assert repr(Settings()).startswith("Settings(database_url=None, redis_url=None, host=")


def test_a_malformed_url_setting_is_named_without_its_password():
    """The start-up error about a malformed URL names the variable, not the password."""
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"FLASHFLOW_DATABASE_URL": f"app:{PASSWORD}@db/ff"})
    assert str(raised.value).startswith("FLASHFLOW_DATABASE_URL='app:***@db/ff': ")
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"FLASHFLOW_REDIS_URL": f"redis+cluster://app:{PASSWORD}@n1/3"})
    assert PASSWORD not in str(raised.value) and "FLASHFLOW_REDIS_URL" in str(raised.value)


def test_a_malformed_token_is_named_without_its_value(monkeypatch):
    """Were a token's value ever refused, the error would name its variable only."""

    def refuse(raw: str) -> str:
        raise ValueError("refused")

    monkeypatch.setitem(settings_module._CASTS, "optional_str", refuse)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"FLASHFLOW_ADMIN_TOKEN": TOKENS["admin_token"]})
    assert str(raised.value) == "FLASHFLOW_ADMIN_TOKEN: refused"


@pytest.mark.parametrize("stream_type", [io.StringIO, TtyStream], ids=["json", "readable"])
def test_logs_mask_passwords_in_messages_extras_and_tracebacks(restore_root_logger,
                                                               stream_type):
    """Neither log format lets a URL password or a token through, wherever it travels."""
    stream = stream_type()
    settings = Settings(database_url=f"postgresql://app:{PASSWORD}@db/ff", **TOKENS)
    configure_logging(settings, stream=stream)
    log = logging.getLogger("flashflow.test")
    log.warning("starting on %s", settings)
    log.warning("PostgreSQL at %s is down", settings.database_url,
                extra={"url": f"redis://:{PASSWORD}@cache:6379/0"})
    try:
        raise ConnectionError(f"cannot reach postgresql://app:{PASSWORD}@db/ff")
    except ConnectionError:
        log.exception("start failed")
    text = stream.getvalue()
    assert PASSWORD not in text
    for token in TOKENS.values():
        assert token not in text
    assert text.count("app:***@db/ff") >= 3 and "redis://:***@cache:6379/0" in text
    if stream_type is io.StringIO:
        assert len([json.loads(line) for line in text.splitlines()]) == 3


def test_a_failed_start_names_postgresql_without_its_password(restore_root_logger):
    """`flashflow migrate` against an unreachable PostgreSQL shows the URL, masked."""
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:1/ff"
    result = CliRunner().invoke(main, ["migrate", "--database-url", url])
    assert result.exit_code == 1, result.output
    assert "PostgreSQL at postgresql://app:***@127.0.0.1:1/ff" in result.output
    assert PASSWORD not in result.output
