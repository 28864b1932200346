"""One frozen settings object, built once from the environment and passed explicitly."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Self

from actors import (
    FeedConfig,
    GateConfig,
    HoldsConfig,
    LedgerConfig,
    LimiterConfig,
    SerializerConfig,
)
from actors.keys import KEY_PREFIX
from actors.lines import LinesConfig
from actors.redis_url import parse_redis_url

from .cpus import available_cpus
from .redaction import redact

PREFIX = "FLASHFLOW_"
#: ``FLASHFLOW_*`` variables that are no setting, read on purpose by the test suite (the
#: servers it runs against) and the fault tests (where their figures go). The one list:
#: the start-up warning about unknown variables and the docs' test pass them over.
NOT_SETTINGS = frozenset({
    "FLASHFLOW_TEST_DATABASE_URL",
    "FLASHFLOW_TEST_REDIS_URL",
    "FLASHFLOW_FAULT_FIGURES_DIR",
})
#: The variable prometheus-client itself reads when first imported; its name is not ours.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: The fields a running server cannot do without: ``serve`` and each worker require them.
SERVICE_URLS = ("database_url", "redis_url")
#: Connections the kernel queues for the server before it accepts them. A stampede connects
#: all at once; past this queue a client's SYN is dropped and retried 1, 3, 7, 15 s later.
LISTEN_BACKLOG = 2048


class SettingsError(ValueError):
    """A setting is malformed; the message names the environment variable."""


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
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


def _optional_redis_url(raw: str) -> str | None:
    url = _optional_url(raw)
    if url is not None:
        parse_redis_url(url)
    return url


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
    "count": _count,
    "float": _positive_float,
    "port": _port,
    "url": _optional_url,
    "redis_url": _optional_redis_url,
    "bool": _bool,
    "str": str,
    "optional_str": _optional_str,
    "path": lambda raw: Path(raw).expanduser(),
    "optional_path": _optional_path,
    "seconds": _seconds,
    "networks": _networks,
    "origins": _origins,
}


def _secret() -> Any:
    """A token's field: never shown, neither in ``repr`` nor in an error about its value."""
    return field(default=None, repr=False, metadata={"secret": True})


def env_name(f: Field) -> str:
    """The environment variable a settings field is read from."""
    return f.metadata.get("env", PREFIX + f.name.upper())


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every knob of Flash Flow; each field is read from ``FLASHFLOW_<FIELD>``.

    ``metrics_dir`` is the exception: it is ``PROMETHEUS_MULTIPROC_DIR``, the variable
    prometheus-client reads by that name. The defaults here are the actors' too: their
    configurations are built by the ``*_config`` methods below and hold none of their own.
    """

    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    #: One per CPU the container's quota (or else the machine) lets this process use.
    workers: int = field(default_factory=available_cpus)
    data_dir: Path = Path(".flashflow")
    key_prefix: str = KEY_PREFIX
    gate_inbox_size: int = 4096
    gate_batch_max: int = 512
    ledger_inbox_size: int = 4096
    ledger_batch_max: int = 256
    max_in_flight: int = 8192
    pg_pool_size: int = 4
    #: asyncpg's prepared-statement cache; 0 behind PgBouncer in transaction pooling mode.
    pg_statement_cache_size: int = field(default=100, metadata={"kind": "count"})
    redis_timeout_s: float = 2.0
    postgres_timeout_s: float = 5.0
    catalog_refresh_s: float = 1.0
    doubt_poll_s: float = 0.05
    purchase_wait_s: float = 6.0
    reconcile_interval_s: float = 5.0
    #: How often each process looks for holds past their end (PostgreSQL lapses each once).
    hold_sweep_s: float = 0.25
    #: How long an ended hold may wait to reach the gate before any process tells it again.
    hold_gate_retry_s: float = 5.0
    #: How often the buyers' streams read their standing when nothing here changed it.
    hold_watch_s: float = 1.0
    reservation_grace_s: float = 30.0
    #: How often each process moves the waiting rooms' lines on (PostgreSQL admits each once).
    line_tick_s: float = 0.2
    #: How often a waiting ticket's stream is told where the line stands.
    line_update_s: float = 10.0
    #: Leading zero bits of sha256 a join's proof of work must show; 0: no proof asked.
    line_proof_bits: int = field(default=0, metadata={"kind": "count"})
    #: The key admission tokens are signed with; unset, one kept in PostgreSQL for every
    #: process and host.
    admission_secret: str | None = _secret()
    retry_after_s: int = 1
    rate_limit_enabled: bool = True
    rate_user_per_s: float = 2.0
    rate_user_burst: int = 5
    rate_address_per_s: float = 200.0
    rate_address_burst: int = 400
    max_body_bytes: int = 4096
    graceful_timeout_s: float = 10.0
    access_log: bool = False
    #: Answer the hot routes in a thin ASGI layer in front of Quart (flashflow/http/fast.py).
    fast_path: bool = True
    #: The demo payment route of ``flashflow up`` (which turns it on): it confirms any hold
    #: whose purchase id it is given, unpaid and without a token. Never on in production.
    demo_payments: bool = False
    log_level: str = "INFO"
    #: The bearer token of the admin API; unset (or empty), the admin API is off (404).
    admin_token: str | None = _secret()
    metrics_dir: Path | None = field(default=None, metadata={"env": METRICS_DIR_VARIABLE})
    auth_jwt_secret: str | None = _secret()
    auth_jwt_public_key_file: Path | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwt_leeway_s: float = 30.0
    metrics_token: str | None = _secret()
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

    def __repr__(self) -> str:
        # URLs are shown with their passwords masked, the tokens not at all.
        shown = ", ".join(f"{f.name}={redact(repr(getattr(self, f.name)))}"
                          for f in fields(self) if f.repr)
        return f"{type(self).__name__}({shown})"

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
            name = env_name(f)
            if name in environ:
                cast = _CASTS[f.metadata.get("kind") or _kind(f.name, f.type)]
                try:
                    values[f.name] = cast(environ[name])
                except ValueError as exc:
                    given = "" if f.metadata.get("secret") else f"={redact(repr(environ[name]))}"
                    raise SettingsError(f"{name}{given}: {exc}") from None
        return cls(**values).override(**overrides)

    def override(self, **overrides: Any) -> Self:
        """These settings with ``overrides`` applied; an override of None changes nothing."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self

    def require(self, *names: str) -> Self:
        """These settings, once every field in ``names`` (the URLs a command needs) is set.

        Raises:
            SettingsError: a named field is unset; the message names its variable.
        """
        for f in fields(self):
            if f.name in names and not getattr(self, f.name):
                raise SettingsError(f"{env_name(f)} is not set")
        return self

    def to_env(self) -> dict[str, str]:
        """The variables that :meth:`from_env` reads back into these same settings.

        The supervisor hands them to each worker process, so a worker runs on exactly the
        settings the command was given, options included.
        """
        # An unset field is left out rather than written empty: prometheus-client takes an
        # empty PROMETHEUS_MULTIPROC_DIR for the current directory.
        return {env_name(f): _render(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}

    def process_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment of a process that is to run on exactly these settings.

        ``environ`` (default this process's) without a single ``FLASHFLOW_*`` variable nor
        any other a setting is read from, then :meth:`to_env`: whatever the parent's own
        environment holds, the child reads back these settings and nothing else.
        """
        environ = os.environ if environ is None else environ
        read = {env_name(f) for f in fields(self)}
        kept = {k: v for k, v in environ.items() if not k.startswith(PREFIX) and k not in read}
        return {**kept, **self.to_env()}

    # The actors' configurations. Each takes settings whose URLs are set (see require()).

    def ledger_config(self) -> LedgerConfig:
        """The ledger's configuration."""
        return LedgerConfig(
            database_url=self.database_url,
            pool_size=self.pg_pool_size, statement_cache_size=self.pg_statement_cache_size,
            inbox_size=self.ledger_inbox_size, batch_max=self.ledger_batch_max,
            timeout_s=self.postgres_timeout_s)

    def gate_config(self) -> GateConfig:
        """The stock gate's configuration."""
        return GateConfig(
            redis_url=self.redis_url, key_prefix=self.key_prefix,
            inbox_size=self.gate_inbox_size, batch_max=self.gate_batch_max,
            timeout_s=self.redis_timeout_s, doubt_poll_s=self.doubt_poll_s,
            wait_s=self.purchase_wait_s)

    def feed_config(self) -> FeedConfig:
        """The stock feed's configuration."""
        return FeedConfig(redis_url=self.redis_url,
                          key_prefix=self.key_prefix, timeout_s=self.redis_timeout_s)

    def limiter_config(self) -> LimiterConfig:
        """The rate limiter's configuration; its inbox and batches are the gate's sizes."""
        return LimiterConfig(
            redis_url=self.redis_url, key_prefix=self.key_prefix,
            user_per_s=self.rate_user_per_s, user_burst=self.rate_user_burst,
            address_per_s=self.rate_address_per_s, address_burst=self.rate_address_burst,
            inbox_size=self.gate_inbox_size, batch_max=self.gate_batch_max,
            timeout_s=self.redis_timeout_s)

    def holds_config(self) -> HoldsConfig:
        """The holds actor's configuration."""
        return HoldsConfig(sweep_s=self.hold_sweep_s, gate_retry_s=self.hold_gate_retry_s,
                           watch_s=self.hold_watch_s)

    def lines_config(self) -> LinesConfig:
        """The lines actor's configuration."""
        return LinesConfig(tick_s=self.line_tick_s)

    def serializer_config(self) -> SerializerConfig:
        """The purchase path's configuration."""
        return SerializerConfig(
            max_in_flight=self.max_in_flight, wait_s=self.purchase_wait_s,
            poll_s=self.doubt_poll_s, release_retry_s=self.reservation_grace_s,
            drain_timeout_s=self.graceful_timeout_s)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``FLASHFLOW_*`` variables of ``environ`` that no setting reads (nor the tests, see
    :data:`NOT_SETTINGS`), each with the variable it most likely meant, or None."""
    # Matched on the part after the prefix, which every name shares: FLASHFLOW_WORKER is
    # close to WORKERS, and FLASHFLOW_METRICS_DIR to metrics_dir, whose variable is
    # prometheus-client's own.
    meant = {f.name.upper(): env_name(f) for f in fields(Settings)}
    known = set(meant.values()) | NOT_SETTINGS
    unknown = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in known:
            close = difflib.get_close_matches(name.removeprefix(PREFIX), meant, n=1)
            unknown.append((name, meant[close[0]] if close else None))
    return unknown


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _kind(name: str, annotation: Any) -> str:
    text = str(annotation)
    if name == "redis_url":
        return "redis_url"
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
    if text.startswith("Path"):
        return "optional_path" if "None" in text else "path"
    for kind in ("bool", "int", "float"):
        if text.startswith(kind):
            return kind
    return "optional_str" if "None" in text else "str"
