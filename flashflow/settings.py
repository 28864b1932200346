"""One frozen settings object, built once from the environment and passed explicitly."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

PREFIX = "FLASHFLOW_"


class SettingsError(ValueError):
    """A setting is malformed; the message names the environment variable."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def _optional_url(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if "://" not in raw:
        raise ValueError("must be a URL such as scheme://host:port/...")
    return raw


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _optional_path(raw: str) -> Path | None:
    return Path(raw.strip()).expanduser() if raw.strip() else None


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _items(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _items(raw))
    except ValueError as exc:
        raise ValueError(f"must be comma-separated addresses or CIDRs ({exc})") from None


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(item.rstrip("/") for item in _items(raw))
    for origin in origins:
        if "://" not in origin or origin.count("/") != 2:
            raise ValueError(f"{origin!r} is not an origin such as https://shop.example")
    return origins


#: Shortest HS256 secret accepted: the size of the hash output (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32

_CASTS: dict[str, Callable[[str], Any]] = {
    "int": _positive_int,
    "float": _positive_float,
    "port": _port,
    "url": _optional_url,
    "bool": _bool,
    "str": str,
    "path": lambda raw: Path(raw).expanduser(),
    "optional_str": _optional_str,
    "optional_path": _optional_path,
    "seconds": _seconds,
    "networks": _networks,
    "origins": _origins,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every knob of Flash Flow; each field is read from ``FLASHFLOW_<FIELD>``."""

    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    data_dir: Path = Path(".flashflow")
    key_prefix: str = "flashflow:"
    gate_inbox_size: int = 4096
    gate_batch_max: int = 512
    ledger_inbox_size: int = 4096
    ledger_batch_max: int = 256
    max_in_flight: int = 8192
    pg_pool_size: int = 4
    redis_timeout_s: float = 2.0
    postgres_timeout_s: float = 5.0
    catalog_refresh_s: float = 1.0
    sold_out_recheck_s: float = 1.0
    reconcile_interval_s: float = 5.0
    reservation_grace_s: float = 30.0
    retry_after_s: int = 1
    rate_limit_enabled: bool = True
    rate_user_per_s: float = 2.0
    rate_user_burst: int = 5
    rate_address_per_s: float = 200.0
    rate_address_burst: int = 400
    max_body_bytes: int = 4096
    graceful_timeout_s: float = 10.0
    access_log: bool = False
    log_level: str = "INFO"
    auth_jwt_secret: str | None = field(default=None, repr=False)
    auth_jwt_public_key_file: Path | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_leeway_s: float = 30.0
    metrics_token: str | None = field(default=None, repr=False)
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.auth_jwt_secret is not None and self.auth_jwt_public_key_file is not None:
            raise SettingsError("set FLASHFLOW_AUTH_JWT_SECRET or "
                                "FLASHFLOW_AUTH_JWT_PUBLIC_KEY_FILE, not both")
        if (self.auth_jwt_secret is not None
                and len(self.auth_jwt_secret.encode()) < MIN_SECRET_BYTES):
            raise SettingsError(f"FLASHFLOW_AUTH_JWT_SECRET must be at least "
                                f"{MIN_SECRET_BYTES} bytes")

    def to_env(self) -> dict[str, str]:
        """Every field as the ``FLASHFLOW_*`` variable that :meth:`from_env` reads back."""
        return {PREFIX + f.name.upper(): _env_text(getattr(self, f.name)) for f in fields(self)}

    @property
    def auth_enabled(self) -> bool:
        """Whether buyers must present a bearer token."""
        return self.auth_jwt_secret is not None or self.auth_jwt_public_key_file is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``FLASHFLOW_*`` variables; ``overrides`` win over the environment.

        Raises:
            SettingsError: a variable is malformed; the message names it.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if name in environ:
                cast = _CASTS[_kind(f.name, f.type)]
                try:
                    values[f.name] = cast(environ[name])
                except ValueError as exc:
                    raise SettingsError(f"{name}={environ[name]!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _kind(name: str, annotation: Any) -> str:
    text = str(annotation)
    if name.endswith("_url"):
        return "url"
    if name == "port":
        return "port"
    if name == "trusted_proxies":
        return "networks"
    if name == "cors_origins":
        return "origins"
    if name.endswith("_leeway_s"):
        return "seconds"
    if text.endswith("| None"):
        return "optional_path" if text.startswith("Path") else "optional_str"
    for kind in ("bool", "int", "float", "Path"):
        if text.startswith(kind):
            return "path" if kind == "Path" else kind
    return "str"
