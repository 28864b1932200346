"""The side-by-side scenarios: the two ceilings and Flash Flow's routes, each measured with
wrk against one worker count at every connection count, as the median of a few runs."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from flashflow.http import wire
from flashflow.settings import Settings
from flashflow.tokens import mint

from . import ceilings, lua, wrk
from .server import BenchServer, bench_sale, cpu_seconds

ASGI = "bare ASGI"
QUART = "bare quart-trio"
HEALTHZ = wire.HEALTHZ  # the scenario is named by its path
CURRENT = "GET /current"
BOUGHT = "purchase, every answer 201"
SOLD_OUT = "purchase, sold out (409)"
REPEATS = "purchase, 50 users over and over (409)"
CEILINGS = (ASGI, QUART)
#: Every scenario, in the order the report lists them.
SCENARIOS = (*CEILINGS, HEALTHZ, CURRENT, BOUGHT, SOLD_OUT, REPEATS)
#: The users of the repeat scenario, who bought once before it is measured.
REPEAT_BASE, REPEAT_USERS = "repeat", 50


@dataclass(frozen=True)
class Options:
    """How hard and how long to measure."""

    connections: tuple[int, ...] = (64, 200)
    threads: int = 2
    duration_s: float = 10.0
    warmup_s: float = 2.0
    runs: int = 3
    profile_dir: Path | None = None
    #: With a secret the server authenticates buyers and every purchase carries a token.
    auth_secret: str | None = field(default=None, repr=False)
    #: Tokens minted per wrk thread for a timed purchase run; past them, its users repeat.
    auth_pool: int = 20_000


@dataclass(frozen=True)
class Run:
    """One measured wrk run and the CPU it took.

    Attributes:
        generator_cpu: share of the whole machine's CPU that wrk used (1.0 = every core).
        server_cpu: share of the whole machine's CPU that the server's processes used.
    """

    result: wrk.WrkResult
    generator_cpu: float
    server_cpu: float


@dataclass(frozen=True)
class Measurement:
    """One scenario on one worker count at one connection count: each figure is the median
    of its runs' (``runs_per_s`` keeps every run's rate); answers and errors are summed.

    Attributes:
        peak_rss_mb: the server's largest resident memory (all its processes) so far.
    """

    scenario: str
    workers: int
    connections: int
    per_s: float
    p50_ms: float
    p99_ms: float
    runs_per_s: tuple[float, ...]
    requests: int
    answers: dict[str, int]
    socket_errors: dict[str, int]
    generator_cpu: float
    server_cpu: float
    peak_rss_mb: float
    profile: str | None = field(default=None)

    @classmethod
    def of(cls, scenario: str, workers: int, connections: int, runs: list[Run],
           peak_rss_mb: float, profile: str | None = None) -> Measurement:
        """The medians of ``runs`` (at least one)."""
        results = [r.result for r in runs]

        def mid(figure: str, of: list = results) -> float:
            return statistics.median(getattr(x, figure) for x in of)

        return cls(scenario=scenario, workers=workers, connections=connections,
                   per_s=mid("per_s"), p50_ms=mid("p50_ms"), p99_ms=mid("p99_ms"),
                   runs_per_s=tuple(x.per_s for x in results),
                   requests=sum(x.requests for x in results),
                   answers=_sum(x.answers for x in results),
                   socket_errors=_sum(x.socket_errors for x in results),
                   generator_cpu=mid("generator_cpu", runs), server_cpu=mid("server_cpu", runs),
                   peak_rss_mb=peak_rss_mb, profile=profile)


def _sum(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))


def measure(scenario: str, workers: int, server: BenchServer, path: str, script: str,
            options: Options, args: tuple[str, ...] | None = None) -> list[Measurement]:
    """Warm up, then run ``script`` against ``server`` ``options.runs`` times, at each
    connection count. ``args`` go to the script; by default a fresh user prefix per run
    (and, for :data:`lua.PURCHASE` with auth on, tokens minted for its users before the
    run's clock starts)."""
    cores = os.cpu_count() or 1
    measurements = []
    with tempfile.TemporaryDirectory(prefix="ffbench-tokens-") as tmp:

        def args_for(kind: str) -> tuple[str, ...]:
            if args is not None:
                return args
            prefix = f"{kind}{uuid.uuid4().hex[:6]}"
            if script != lua.PURCHASE:
                return (prefix,)
            return purchase_args(prefix, 0, options, Path(tmp), options.auth_pool)

        for connections in options.connections:
            once = partial(_wrk, server.url + path, script, connections, options.threads)
            if options.warmup_s > 0:
                once(options.warmup_s, args_for("w"))
            runs, profile = [], None
            for i in range(options.runs):
                run_args = args_for("m")
                profiler, path_ = (_profile(scenario, workers, connections, server, options)
                                   if i == 0 else (None, None))
                profile = profile or path_
                cpu_before, started = cpu_seconds(server.root), time.monotonic()
                result = once(options.duration_s, run_args)
                wall = time.monotonic() - started
                server_cpu = cpu_seconds(server.root) - cpu_before
                if profiler is not None:
                    profiler.wait(30)
                runs.append(Run(result, generator_cpu=result.cpu_s / (result.duration_s * cores),
                                server_cpu=server_cpu / (wall * cores)))
            measurements.append(Measurement.of(scenario, workers, connections, runs,
                                               server.sampler.peak_rss / 2**20, profile))
    return measurements


def _wrk(url: str, script: str, connections: int, threads: int, duration_s: float,
         args: tuple[str, ...]) -> wrk.WrkResult:
    return wrk.run(url, script, connections=connections, threads=threads,
                   duration_s=duration_s, args=args)


def purchase_args(prefix: str, quota: int, options: Options, directory: Path,
                  users: int) -> tuple[str, ...]:
    """:data:`lua.PURCHASE`'s arguments; with auth on, ``users`` tokens per thread are
    minted into ``directory``."""
    if options.auth_secret is None:
        return (prefix, str(quota))
    return (prefix, str(quota), lua.purchase_tokens(directory, options.auth_secret, prefix,
                                                    options.threads, users))


def _profile(scenario: str, workers: int, connections: int, server: BenchServer,
             options: Options) -> tuple[subprocess.Popen | None, str | None]:
    """Start py-spy on the server's processes for the first measured run, when asked to."""
    if options.profile_dir is None:
        return None, None
    options.profile_dir.mkdir(parents=True, exist_ok=True)
    name = f"{scenario.replace(' ', '-').replace('/', '')}-w{workers}-c{connections}.txt"
    path = options.profile_dir / name
    beside = Path(sys.executable).with_name("py-spy")
    command = [str(beside) if beside.exists() else "py-spy", "record",
               "--pid", str(server.process.pid), "--subprocesses", "--nonblocking",
               "--rate", "200", "--format", "raw",
               "--duration", f"{max(int(options.duration_s) - 1, 1)}", "--output", str(path)]
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return profiler, str(path)


def buy_each(url: str, users: Iterable[str], allowed: tuple[int, ...],
             auth_secret: str | None = None) -> None:
    """One purchase per user, one after another (with a token each when the server
    authenticates with ``auth_secret``); any answer not in ``allowed`` is fatal."""
    settings = Settings(auth_jwt_secret=auth_secret)
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in users:
            headers = ({"Authorization": f"Bearer {mint(settings, user)}"}
                       if auth_secret is not None else {})
            answer = client.post(wire.CURRENT_PURCHASE, json={"userId": user}, headers=headers)
            if answer.status_code not in allowed:
                raise RuntimeError(f"buying for {user}: {answer.status_code} {answer.text}")


@contextmanager
def _flashflow(admin_url: str, redis_url: str, stock: int, workers: int, log_dir: Path,
               auth_secret: str | None) -> Iterator[BenchServer]:
    with bench_sale(admin_url, redis_url, stock) as (scratch, _):
        server = BenchServer.start(scratch, workers, log_dir, auth_secret)
        try:
            yield server
        finally:
            server.stop()


def run_configuration(workers: int, admin_url: str, redis_url: str, options: Options,
                      log_dir: Path) -> list[Measurement]:
    """Both ceilings and every Flash Flow scenario with ``workers`` server processes."""
    results = []
    for name, scenario in (("asgi", ASGI), ("quart", QUART)):
        server = BenchServer.launch(ceilings.command(name, workers), dict(os.environ), log_dir,
                                    (ceilings.PATH,))
        try:
            results += measure(scenario, workers, server, ceilings.PATH, lua.GET, options)
        finally:
            server.stop()
    secret = options.auth_secret
    with _flashflow(admin_url, redis_url, 100, workers, log_dir, secret) as server:
        results += measure(HEALTHZ, workers, server, wire.HEALTHZ, lua.GET, options)
        results += measure(CURRENT, workers, server, wire.CURRENT, lua.GET, options)
        # Every unit sold, then one more ask: each worker may learn of the sell-out.
        buy_each(server.url, (f"sellout-{i}" for i in range(101)), (201, 409), secret)
        results += measure(SOLD_OUT, workers, server, "", lua.PURCHASE, options)
    # The largest stock a sale may hold: it cannot run out while measured. The repeats
    # come first: measured after the 201s, they would share the machine with what tens of
    # thousands of fresh purchases leave PostgreSQL to do (autovacuum, analyze).
    with _flashflow(admin_url, redis_url, 10_000_000, workers, log_dir, secret) as server:
        buy_each(server.url, lua.repeat_users(REPEAT_BASE, REPEAT_USERS), (201,), secret)
        args: tuple[str, ...] = (REPEAT_BASE, str(REPEAT_USERS))
        if secret is not None:
            args += (lua.repeat_tokens(log_dir, secret, REPEAT_BASE, REPEAT_USERS,
                                       options.threads),)
        results += measure(REPEATS, workers, server, "", lua.REPEAT, options, args=args)
        results += measure(BOUGHT, workers, server, "", lua.PURCHASE, options)
    return results
