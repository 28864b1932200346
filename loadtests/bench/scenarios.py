"""The side-by-side scenarios: /healthz, purchases during the sale and after sell-out,
and the status read, each measured with wrk against one server configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flashflow.settings import Settings
from flashflow.tokens import mint

from . import lua, wrk
from .server import Backend, BenchServer, cpu_seconds

HEALTHZ = "/healthz"
SCENARIOS = ("healthz", "purchase during the sale", "purchase after sell-out", "status read")


@dataclass(frozen=True)
class Options:
    """How hard and how long to measure."""

    connections: int = 200
    threads: int = 2
    duration_s: float = 10.0
    warmup_s: float = 2.0
    profile_dir: Path | None = None
    #: With a secret the server authenticates buyers and the scripts send minted tokens.
    auth_secret: str | None = field(default=None, repr=False)
    #: Tokens minted per wrk thread for a timed run; past them, users repeat.
    auth_pool: int = 20_000


@dataclass(frozen=True)
class Measurement:
    """One scenario on one server configuration.

    Attributes:
        generator_cpu: share of the whole machine's CPU that wrk used (1.0 = every core).
        server_cpu: share of the whole machine's CPU that the server's processes used.
        peak_rss_mb: the server's largest resident memory (all its processes) so far.
    """

    scenario: str
    workers: int
    per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    answers: dict[str, int]
    socket_errors: dict[str, int]
    generator_cpu: float
    server_cpu: float
    peak_rss_mb: float
    profile: str | None = field(default=None)


def measure(scenario: str, workers: int, server: BenchServer, target: str, script: str,
            options: Options) -> Measurement:
    """Warm up, then measure ``script`` against ``server`` for ``options.duration_s``."""
    tag = uuid.uuid4().hex[:6]
    wrk.run(server.url + target, script, connections=options.connections,
            threads=options.threads, duration_s=options.warmup_s,
            args=script_args(f"w{tag}", 0, options, server.log_path.parent))
    profiler, profile = _profile(scenario, workers, server, options)
    cpu_before, started = cpu_seconds(server.root), time.monotonic()
    result = wrk.run(server.url + target, script, connections=options.connections,
                     threads=options.threads, duration_s=options.duration_s,
                     args=script_args(f"m{tag}", 0, options, server.log_path.parent))
    wall = time.monotonic() - started
    server_cpu = cpu_seconds(server.root) - cpu_before
    if profiler is not None:
        profiler.wait(30)
    cores = os.cpu_count() or 1
    return Measurement(
        scenario=scenario, workers=workers, per_s=result.per_s, p50_ms=result.p50_ms,
        p99_ms=result.p99_ms, requests=result.requests, answers=result.answers,
        socket_errors=result.socket_errors,
        generator_cpu=result.cpu_s / (result.duration_s * cores),
        server_cpu=server_cpu / (wall * cores),
        peak_rss_mb=server.sampler.peak_rss / 2**20, profile=profile)


def script_args(prefix: str, quota: int, options: Options, directory: Path,
                count: int | None = None) -> tuple[str, ...]:
    """The wrk script arguments: user prefix, quota, and with auth on the tokens' path."""
    if options.auth_secret is None:
        return (prefix, str(quota))
    template = wrk.token_files(directory, options.auth_secret, prefix, options.threads,
                               count or options.auth_pool)
    return (prefix, str(quota), template)


def _profile(scenario: str, workers: int, server: BenchServer,
             options: Options) -> tuple[subprocess.Popen | None, str | None]:
    """Start py-spy on the server's processes for the measured run, when asked to."""
    if options.profile_dir is None:
        return None, None
    options.profile_dir.mkdir(parents=True, exist_ok=True)
    name = f"{scenario.replace(' ', '-').replace('/', '')}-w{workers}.txt"
    path = options.profile_dir / name
    beside = Path(sys.executable).with_name("py-spy")
    command = [str(beside) if beside.exists() else "py-spy", "record", "--pid", str(server.process.pid), "--subprocesses",
               "--nonblocking", "--rate", "200", "--format", "raw", "--duration",
               f"{max(int(options.duration_s) - 1, 1)}", "--output", str(path)]
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return profiler, str(path)


def sell_out(url: str, stock: int, auth_secret: str | None = None) -> None:
    """Buy the whole stock with distinct users, then hear SOLD_OUT once."""
    settings = Settings(auth_jwt_secret=auth_secret)
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(stock + 1):
            user = f"sellout-{i}"
            headers = {"Authorization": f"Bearer {mint(settings, user)}"} if auth_secret else {}
            answer = client.post(f"{lua.PURCHASE_PATH}", json={"userId": user}, headers=headers)
            if answer.status_code not in (201, 409):
                raise RuntimeError(f"selling out: {answer.status_code} {answer.text}")


def run_configuration(workers: int | None, admin_url: str, redis_url: str, options: Options,
                      log_dir: Path) -> list[Measurement]:
    """Every scenario with ``workers`` server processes (None: the server's own default)."""
    count = workers or 1
    results = []
    sold_out = Backend(admin_url, redis_url).create(stock=100)
    try:
        server = BenchServer.start(sold_out, workers, log_dir, options.auth_secret)
        try:
            results.append(measure("healthz", count, server, HEALTHZ, lua.GET, options))
            sell_out(server.url, 100, options.auth_secret)
            results.append(measure("purchase after sell-out", count, server, "", lua.PURCHASE,
                                   options))
            results.append(measure("status read", count, server, "", lua.STATUS, options))
        finally:
            server.stop()
    finally:
        sold_out.drop()
    # The largest stock a sale may hold: it cannot run out while measured.
    on_sale = Backend(admin_url, redis_url).create(stock=10_000_000)
    try:
        server = BenchServer.start(on_sale, workers, log_dir, options.auth_secret)
        try:
            results.insert(1, measure("purchase during the sale", count, server, "",
                                      lua.PURCHASE, options))
        finally:
            server.stop()
    finally:
        on_sale.drop()
    return results
