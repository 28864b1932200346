"""The benchmark's results as a Markdown page and as JSON."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from .sale import SaleRun
from .scenarios import SCENARIOS, Measurement, Options


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), model)
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory_gib, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def as_json(command: str, options: Options, workers: list[int | None],
            measurements: list[Measurement], sales: list[SaleRun]) -> dict[str, Any]:
    """Everything measured, as plain data for comparison between runs."""
    return {
        "command": command, "machine": machine(),
        "options": {k: (str(v) if v is not None and k == "profile_dir" else v)
                    for k, v in asdict(options).items()},
        "worker_configurations": [w if w is not None else "n/a" for w in workers],
        "measurements": [asdict(m) | {"vs_healthz": _ratio(m, measurements)}
                         for m in measurements],
        "sales": [asdict(s) | {"held": s.held} for s in sales],
        "targets": [dict(zip(("target", "figure", "met"), t)) for t in targets(measurements,
                                                                                sales)],
    }


def _ratio(m: Measurement, measurements: list[Measurement]) -> float | None:
    ceiling = next((x.per_s for x in measurements
                    if x.workers == m.workers and x.scenario == "healthz"), None)
    return m.per_s / ceiling if ceiling else None


def _answers(answers: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in answers.items())


def targets(measurements: list[Measurement], sales: list[SaleRun]) -> list[tuple[str, str, bool]]:
    """The issue's targets, each with the figure that decides it."""
    rows = []
    for m in measurements:
        ratio = _ratio(m, measurements) or 0
        if m.scenario == "purchase during the sale":
            rows.append((f"sale on ≥ 80% of /healthz ({m.workers}w)", f"{ratio:.0%}", ratio >= .8))
        if m.scenario == "purchase after sell-out":
            rows.append((f"sold out ≥ 95% of /healthz ({m.workers}w)", f"{ratio:.0%}",
                         ratio >= .95))
        rows.append((f"p99 < 100 ms, {m.scenario} ({m.workers}w)", f"{m.p99_ms:.1f} ms",
                     m.p99_ms < 100))
    worker_counts = sorted({m.workers for m in measurements})
    if len(worker_counts) > 1:
        low, high = worker_counts[0], worker_counts[-1]
        for scenario in SCENARIOS:
            a = next((m for m in measurements if m.workers == low and m.scenario == scenario), None)
            b = next((m for m in measurements if m.workers == high and m.scenario == scenario),
                     None)
            if a and b and a.per_s:
                rows.append((f"{high} workers ≥ 1.7x {low}, {scenario}",
                             f"{b.per_s / a.per_s:.2f}x", b.per_s / a.per_s >= 1.7))
    else:
        rows.append(("2 workers ≥ 1.7x 1 worker", "n/a: `flashflow serve` has no --workers", False))
    for s in sales:
        growth = s.rss_peak_mb - s.rss_start_mb
        rows.append((f"memory flat across a whole sale ({s.workers}w)",
                     f"{s.rss_start_mb:.0f} → {s.rss_peak_mb:.0f} MB (+{growth:.0f})",
                     growth <= max(0.25 * s.rss_start_mb, 32)))
        rows.append((f"whole sale: invariants held ({s.workers}w)",
                     "held" if s.held else "BROKEN", s.held))
    return rows


INTRO = (
    "Measured {m[date]} on {m[cpu]}, {m[cores]} cores, {m[memory_gib]} GiB, Python "
    "{m[python]}. The load generator is wrk ({o.threads} threads, {o.connections} connections, "
    "{o.duration_s:g} s per scenario after {o.warmup_s:g} s of warm-up) on the same machine; "
    "every request to a purchase path carries a user id of its own. CPU shares are of the "
    "whole machine (100% = every core busy); the server's share counts all of its processes. "
    "Each configuration runs against a database and key prefix of its own, with the "
    "per-address rate limit off (the whole crowd comes from one address here).")
SIDE_HEADER = ("| Scenario | Workers | Requests/s | p50 ms | p99 ms | vs /healthz | Answers "
               "| wrk CPU | Server CPU | Peak RSS MB |")
NO_WORKERS_ROW = ("| every scenario | one per core | n/a | n/a | n/a | n/a | "
                  "`flashflow serve` has no `--workers` | | | |")
SALE_INTRO = ("Distinct users, each asking once, until every one has an answer. Sold out: when "
              "Redis first read 0, and when PostgreSQL held the whole stock, from the first "
              "request.")
SALE_HEADER = ("| Workers | Stock | Users | Connections | Gate sold out s | All committed s "
               "| Run s | Answers/s | p50 ms | p99 ms | Answers | wrk CPU | Server CPU "
               "| RSS start → peak MB | Invariants |")


def markdown(command: str, options: Options, workers: list[int | None],
             measurements: list[Measurement], sales: list[SaleRun]) -> str:
    """The page written to ``docs/performance.md``."""
    m = machine()
    out = ["# Performance", "", INTRO.format(m=m, o=options), "", "## Side by side", "",
           SIDE_HEADER, "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for x in measurements:
        ratio = _ratio(x, measurements)
        errors = sum(x.socket_errors.values())
        answers = _answers(x.answers) + (f", socket errors: {errors}" if errors else "")
        out.append(f"| {x.scenario} | {x.workers} | {x.per_s:,.0f} | {x.p50_ms:.1f} | "
                   f"{x.p99_ms:.1f} | {ratio:.0%} | {answers} | {x.generator_cpu:.0%} | "
                   f"{x.server_cpu:.0%} | {x.peak_rss_mb:.0f} |")
    if None in workers:
        out.append(NO_WORKERS_ROW)
    out += ["", "## A whole sale", "", SALE_INTRO, "", SALE_HEADER,
            "|" + " ---: |" * 10 + " --- | ---: | ---: | --- | --- |"]
    for s in sales:
        held = "held" if s.held else "BROKEN: " + "; ".join(
            f"{c.name} ({c.detail})" for c in s.invariants if not c.held)
        out.append(f"| {s.workers} | {s.stock:,} | {s.users:,} | {s.connections} | "
                   f"{_secs(s.gate_sold_out_s)} | {_secs(s.ledger_sold_out_s)} | "
                   f"{s.duration_s:.1f} | {s.purchases_per_s:,.0f} | {s.p50_ms:.1f} | "
                   f"{s.p99_ms:.1f} | {_answers(s.answers)} | {s.generator_cpu:.0%} | "
                   f"{s.server_cpu:.0%} | {s.rss_start_mb:.0f} → {s.rss_peak_mb:.0f} | {held} |")
    out += ["", "## Targets", "", "| Target | Figure | Met |", "| --- | --- | --- |"]
    out += [f"| {t} | {f} | {'yes' if ok else '**no**'} |" for t, f, ok in
            targets(measurements, sales)]
    out += ["", "## Command", "", "```sh", command, "```", "", HOW_TO]
    return "\n".join(out)


HOW_TO = """## Running the load test and the benchmark

`python -m loadtests.bench` needs `wrk` (Debian package `wrk`) and a PostgreSQL role that may
create databases (`--database-url`, `--redis-url`; embedded servers when omitted). It writes
this page (`--doc`, `--no-doc`) and, with `--json PATH`, every figure for comparing runs;
`--workers N` (repeatable) picks the worker counts, `--profile DIR` records py-spy profiles
(which slow the server: use them to find hot spots, not for figures).

`python -m loadtests` runs the locust stampede headless and then checks, from every response
the clients recorded and from PostgreSQL and Redis directly: no overselling, one purchase per
user, repeats answered `ALREADY_PURCHASED`, every 201 a row with the same purchase id and no
row nobody was told about, the gate's stock and buyers equal to the ledger's, losers answered
`409 SOLD_OUT` and never a 5xx or a dropped connection, and status reads that agree with the
ledger. It prints a table and exits 1 when an invariant breaks:

```sh
python -m loadtests                              # starts `flashflow up` on embedded servers
python -m loadtests --host http://127.0.0.1:8000 --database-url postgresql://... \\
    --redis-url redis://... --key-prefix flashflow: --stock 500   # a fresh sale of 500
python -m loadtests --ramp-s 5 --peak-s 20 --cool-s 5 --peak-users 300 --attempts 4
locust -f loadtests/locustfile.py --host http://127.0.0.1:8000  # the web UI, to watch
```
"""


def _secs(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"
