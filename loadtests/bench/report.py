"""The benchmark's results as a Markdown page and as JSON."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from .goals import goals, ratio
from .sale import SaleRun
from .scenarios import ASGI, QUART, SCENARIOS, Measurement, Options


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


def as_json(command: str, options: Options, workers: list[int],
            measurements: list[Measurement], sales: list[SaleRun]) -> dict[str, Any]:
    """Everything measured, as plain data for comparison between runs."""
    return {
        "command": command, "machine": machine(),
        "options": {k: (str(v) if v is not None and k == "profile_dir" else v)
                    for k, v in asdict(options).items() if k != "auth_secret"}
                   | {"auth": options.auth_secret is not None},
        "worker_configurations": workers,
        "measurements": [asdict(m) | {"vs_asgi": ratio(m, ASGI, measurements),
                                      "vs_quart": ratio(m, QUART, measurements)}
                         for m in ordered(measurements)],
        "sales": [asdict(s) | {"held": s.held} for s in sales],
        "goals": [asdict(g) for g in goals(measurements)],
        "sale_checks": [dict(zip(("check", "figure", "met"), t, strict=True))
                        for t in sale_checks(sales)],
    }


def ordered(measurements: list[Measurement]) -> list[Measurement]:
    """By worker count, then connection count, then the scenarios' own order."""
    return sorted(measurements, key=lambda m: (m.workers, m.connections,
                                               SCENARIOS.index(m.scenario)))


def answers(answers: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in answers.items())


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def sale_checks(sales: list[SaleRun]) -> list[tuple[str, str, bool]]:
    """What a whole sale must show, each with the figure that decides it."""
    rows = []
    for s in sales:
        growth = s.rss_peak_mb - s.rss_start_mb
        rows.append((f"memory flat across a whole sale ({s.workers}w)",
                     f"{s.rss_start_mb:.0f} → {s.rss_peak_mb:.0f} MB (+{growth:.0f})",
                     growth <= max(0.25 * s.rss_start_mb, 32)))
        rows.append((f"whole sale: invariants held ({s.workers}w)",
                     "held" if s.held else "BROKEN", s.held))
    return rows


def _met(met: bool | None) -> str:
    return "n/a" if met is None else "yes" if met else "**no**"


INTRO = (
    "Measured {m[date]} on {m[cpu]}, {m[cores]} cores, {m[memory_gib]} GiB, Python "
    "{m[python]}. The load generator is wrk ({o.threads} threads) on the same machine; each "
    "figure is the median of {o.runs} runs of {o.duration_s:g} s after {o.warmup_s:g} s of "
    "warm-up, with every run's rate beside it. Every request to a purchase path carries a "
    "user id of its own, except the repeats, which cycle through 50 users who bought before. "
    "The ceilings are a bare ASGI callable (the server's) and a bare quart-trio app with one "
    "JSON route (the framework's), both on hypercorn's trio worker, measured in the same run "
    "at the same worker and connection counts. CPU shares are of the whole machine (100% = "
    "every core busy); the server's share counts all of its processes. Each Flash Flow "
    "configuration runs against a database and key prefix of its own, with the per-address "
    "rate limit off (the whole crowd comes from one address here).")
SIDE_HEADER = ("| Scenario | Workers | Connections | Requests/s | p50 ms | p99 ms | vs bare ASGI "
               "| vs bare quart-trio | Runs, requests/s | Answers | wrk CPU | Server CPU "
               "| Peak RSS MB |")
SALE_INTRO = ("Distinct users, each asking once, until every one has an answer. Sold out: when "
              "Redis first read 0, and when PostgreSQL held the whole stock, from the first "
              "request.")
SALE_HEADER = ("| Workers | Stock | Users | Connections | Gate sold out s | All committed s "
               "| Run s | Answers/s | p50 ms | p99 ms | Answers | wrk CPU | Server CPU "
               "| RSS start → peak MB | Invariants |")
AUTH_INTRO = (" Buyer authentication is on: every purchase carries a bearer token minted "
              "for its user beforehand, and its users cycle through the tokens minted per "
              "wrk thread.")

GOALS_INTRO = ("Issue 13's goals, decided by this run's figures (reported, never asserted). "
               "\"next\" marks the goal past what Quart's request machinery allows.")


BEFORE_INTRO = ("The same scenarios in an earlier run ({date}, `{command}`), each beside this "
                "run's figure; ratios are to the ceilings of the run they come from.")
BEFORE_HEADER = ("| Scenario | Workers | Connections | Requests/s before | Requests/s now "
                 "| vs bare quart-trio before | now | vs bare ASGI before | now | p99 ms before "
                 "| now |")


def before_and_after(before: dict[str, Any], measurements: list[Measurement]) -> list[str]:
    """The section comparing ``measurements`` with an earlier run's JSON (``--before``)."""
    earlier = {(b["scenario"], b["workers"], b["connections"]): b for b in before["measurements"]}
    out = ["## Before and after", "",
           BEFORE_INTRO.format(date=before["machine"]["date"], command=before["command"]), "",
           BEFORE_HEADER, "| --- |" + " ---: |" * 10]
    for x in ordered(measurements):
        b = earlier.get((x.scenario, x.workers, x.connections))
        if b is None or x.scenario in (ASGI, QUART):
            continue
        out.append(f"| {x.scenario} | {x.workers} | {x.connections} | {b['per_s']:,.0f} | "
                   f"{x.per_s:,.0f} | {_times(b['vs_quart'])} | "
                   f"{_times(ratio(x, QUART, measurements))} | {_times(b['vs_asgi'])} | "
                   f"{_times(ratio(x, ASGI, measurements))} | {b['p99_ms']:.1f} | "
                   f"{x.p99_ms:.1f} |")
    return [*out, ""]


def markdown(command: str, options: Options, workers: list[int],
             measurements: list[Measurement], sales: list[SaleRun],
             before: dict[str, Any] | None = None) -> str:
    """The page written to ``docs/performance.md``; ``before`` is an earlier run's JSON to
    set beside this one."""
    m = machine()
    intro = INTRO.format(m=m, o=options) + (AUTH_INTRO if options.auth_secret else "")
    out = ["# Performance", "", intro, "", "## Side by side", "",
           SIDE_HEADER, "| --- |" + " ---: |" * 8 + " --- | ---: | ---: | ---: |"]
    for x in ordered(measurements):
        errors = sum(x.socket_errors.values())
        told = answers(x.answers) + (f", socket errors: {errors}" if errors else "")
        runs = ", ".join(f"{r:,.0f}" for r in x.runs_per_s)
        out.append(f"| {x.scenario} | {x.workers} | {x.connections} | {x.per_s:,.0f} | "
                   f"{x.p50_ms:.1f} | {x.p99_ms:.1f} | {_times(ratio(x, ASGI, measurements))} | "
                   f"{_times(ratio(x, QUART, measurements))} | {runs} | {told} | "
                   f"{x.generator_cpu:.0%} | {x.server_cpu:.0%} | {x.peak_rss_mb:.0f} |")
    out += ["", "## Goals", "", GOALS_INTRO, "", "| Goal | Figure | Met |", "| --- | --- | --- |"]
    out += [f"| {g.name} | {g.figure} | {_met(g.met)} |" for g in goals(measurements)]
    if sales:
        out += ["", "## A whole sale", "", SALE_INTRO, "", SALE_HEADER,
                "|" + " ---: |" * 10 + " --- | ---: | ---: | --- | --- |"]
        for s in sales:
            held = "held" if s.held else "BROKEN: " + "; ".join(
                f"{c.name} ({c.detail})" for c in s.invariants if not c.held)
            out.append(f"| {s.workers} | {s.stock:,} | {s.users:,} | {s.connections} | "
                       f"{_secs(s.gate_sold_out_s)} | {_secs(s.ledger_sold_out_s)} | "
                       f"{s.duration_s:.1f} | {s.purchases_per_s:,.0f} | {s.p50_ms:.1f} | "
                       f"{s.p99_ms:.1f} | {answers(s.answers)} | {s.generator_cpu:.0%} | "
                       f"{s.server_cpu:.0%} | {s.rss_start_mb:.0f} → {s.rss_peak_mb:.0f} | "
                       f"{held} |")
        out += ["", "| Check | Figure | Met |", "| --- | --- | --- |"]
        out += [f"| {t} | {f} | {_met(ok)} |" for t, f, ok in sale_checks(sales)]
    out.append("")
    if before is not None:
        out += before_and_after(before, measurements)
    out += ["## Command", "", "```sh", command, "```", "", HOW_TO]
    return "\n".join(out)


def keep_other_sections(page: str, existing: str) -> str:
    """``page`` followed by the sections of ``existing`` that it does not write itself.

    docs/performance.md also holds sections this benchmark does not write (the figures of
    the capacity benchmarks, ``python -m flashflow.capacity``, and a profile written by
    hand); a run rewrites its own sections and leaves those as they were.
    """
    ours = set(re.findall(r"^## (.+)$", page, flags=re.MULTILINE))
    kept = [s.rstrip("\n") for s in re.split(r"(?m)^(?=## )", existing)
            if s.startswith("## ") and s.split("\n", 1)[0][3:] not in ours]
    return "\n\n".join([page.rstrip("\n"), *kept]) + "\n"


def goal_lines(measurements: list[Measurement]) -> list[str]:
    """The goals as plain lines, for the terminal."""
    return [f"{_met(g.met).strip('*'):>4}  {g.name}: {g.figure}" for g in goals(measurements)]


HOW_TO = """## Running the load test and the benchmark

`python -m loadtests.bench` needs `wrk` (Debian package `wrk`) and a PostgreSQL role that may
create databases (`--database-url`, `--redis-url`; embedded servers when omitted). It writes
this page (`--doc`, `--no-doc`) and, with `--json PATH`, every figure for comparing runs;
`--workers N` and `--connections N` (both repeatable) pick what to measure (default 1 and 2
workers, 64 and 200 connections), `--runs`, `--duration-s` and `--warmup-s` how long;
`--quick` is 1 s runs, no warm-up and no whole sale, to try the harness in seconds, not for
figures. `--profile DIR` records py-spy profiles of each first run (which slow the server:
use them to find hot spots, not for figures). `--before PATH` sets the figures of an earlier
run's `--json` beside this run's ("Before and after"); a "Profile" section written by hand
is kept when the page is rewritten.

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
