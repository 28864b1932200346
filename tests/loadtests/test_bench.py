"""The benchmark harness: medians, ratios and goals from given figures, the ceilings, and a
quick run whose report has every row. Nothing here asserts how fast anything is."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from loadtests.bench import ceilings
from loadtests.bench.goals import GOAL_CONNECTIONS, GOAL_WORKERS, P99_CONNECTIONS, goals, ratio
from loadtests.bench.report import as_json, keep_other_sections, markdown
from loadtests.bench.scenarios import (
    ASGI,
    BOUGHT,
    CURRENT,
    HEALTHZ,
    QUART,
    REPEATS,
    SCENARIOS,
    SOLD_OUT,
    Measurement,
    Options,
    Run,
)
from loadtests.bench.wrk import WrkResult

ROOT = Path(__file__).resolve().parents[2]


def run(per_s: float, p99_ms: float = 10.0, answers: dict[str, int] | None = None) -> Run:
    """A run of 1 s that answered ``per_s`` requests."""
    result = WrkResult(requests=int(per_s), duration_s=1.0, p50_ms=1.0, p90_ms=p99_ms / 2,
                       p99_ms=p99_ms, max_ms=p99_ms, answers=answers or {"200": int(per_s)},
                       socket_errors={"read": 0}, won=[], cpu_s=0.1)
    return Run(result, generator_cpu=0.1, server_cpu=0.5)


def measured(scenario: str, per_s: float, workers: int = GOAL_WORKERS,
             connections: int = GOAL_CONNECTIONS, p99_ms: float = 10.0) -> Measurement:
    return Measurement.of(scenario, workers, connections, [run(per_s, p99_ms)], 50.0)


def test_a_measurement_is_the_median_of_its_runs():
    """Rate and latency are each their runs' median (an outlier drops); answers add up."""
    runs = [run(851, 900.0, {"200": 851}), run(2000, 40.0, {"200": 2000}),
            run(1900, 50.0, {"200": 1900, "503 UNAVAILABLE": 1})]
    m = Measurement.of(HEALTHZ, 1, 64, runs, 70.0)
    assert (m.per_s, m.p99_ms, m.runs_per_s) == (1900, 50.0, (851, 2000, 1900))
    assert m.answers == {"200": 4751, "503 UNAVAILABLE": 1}
    assert m.requests == 4751


def test_ratios_compare_the_same_workers_and_connections():
    """A scenario is divided by the ceiling measured at its own worker and connection counts."""
    ms = [measured(ASGI, 4000), measured(QUART, 2000), measured(CURRENT, 1800),
          measured(ASGI, 1000, workers=1), measured(CURRENT, 900, workers=1, connections=200)]
    assert ratio(ms[2], ASGI, ms) == pytest.approx(0.45)
    assert ratio(ms[2], QUART, ms) == pytest.approx(0.9)
    assert ratio(ms[4], ASGI, ms) is None, "no ceiling at 1 worker, 200 connections"


def test_goals_are_decided_at_their_thresholds():
    """Each goal holds at its threshold and fails just under it; p99 counts at 200 conns."""
    ms = [measured(ASGI, 1000), measured(QUART, 1000), measured(CURRENT, 900),
          measured(SOLD_OUT, 899), measured(REPEATS, 800), measured(HEALTHZ, 950),
          measured(BOUGHT, 599),
          measured(CURRENT, 1, connections=P99_CONNECTIONS, p99_ms=99.9),
          measured(SOLD_OUT, 1, connections=P99_CONNECTIONS, p99_ms=100.0)]
    met = {g.name: g.met for g in goals(ms)}
    assert len(met) == 10
    assert met[f"{CURRENT} ≥ 0.9x {QUART} (2 workers, 64 connections)"] is True
    assert met[f"{SOLD_OUT} ≥ 0.9x {QUART} (2 workers, 64 connections)"] is False
    assert met[f"{REPEATS} ≥ 0.9x {QUART} (2 workers, 64 connections)"] is False
    assert met[f"{HEALTHZ} ≥ 0.95x {QUART} (2 workers, 64 connections)"] is True
    assert met[f"{BOUGHT} ≥ 0.6x {QUART} (2 workers, 64 connections)"] is False
    assert met[f"next: {CURRENT} ≥ 0.8x {ASGI} (2 workers, 64 connections)"] is True
    assert met[f"next: {REPEATS} ≥ 0.8x {ASGI} (2 workers, 64 connections)"] is True
    assert met[f"p99 < 100 ms, {CURRENT} (2 workers, 200 connections)"] is True
    assert met[f"p99 < 100 ms, {SOLD_OUT} (2 workers, 200 connections)"] is False


def test_goals_not_measured_are_neither_met_nor_failed():
    """A run without 2 workers reports every goal as not measured."""
    ms = [measured(s, 100, workers=1) for s in SCENARIOS]
    assert {(g.figure, g.met) for g in goals(ms)} == {("not measured", None)}


def test_the_ceilings_import_nothing_of_flash_flow():
    """Loaded by path, as the launcher and hypercorn load it, a ceiling imports no actors."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='ceilings'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('actors', 'flashflow')]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code, ceilings.__file__], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


async def test_both_ceilings_answer_the_healthz_body():
    """The bare ASGI callable and the quart-trio route send /healthz's JSON body."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await ceilings.bare_asgi({"type": "http", "path": ceilings.PATH}, None, send)
    assert (sent[0]["status"], json.loads(sent[1]["body"])) == (200, ceilings.BODY)
    answer = await ceilings.bare_quart().test_client().get(ceilings.PATH)
    assert (answer.status_code, await answer.get_json()) == (200, ceilings.BODY)


def test_the_page_has_a_row_per_measurement_and_every_goal():
    """The Markdown report lists each measurement with both ratios and each goal."""
    ms = [measured(s, 100 + i) for i, s in enumerate(SCENARIOS)]
    page = markdown("python -m loadtests.bench", Options(), [2], ms, [])
    rows = [line for line in page.splitlines() if line.startswith("| ") and " | 2 | 64 | " in line]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == list(SCENARIOS)
    assert f"| {HEALTHZ} | 2 | 64 | 102 | 1.0 | 10.0 | 1.02x | 1.01x | 102 |" in page
    assert sum(line.startswith("| ") and line.endswith(" |") for line in
               page.split("## Goals")[1].splitlines()) == 2 + len(goals(ms))


def test_a_new_page_keeps_the_sections_it_does_not_write():
    """Rewriting docs/performance.md replaces the benchmark's sections and keeps the others."""
    old = "# Performance\n\nold\n\n## Side by side\n\nold rows\n\n## Other\n\nkept\n"
    new = "# Performance\n\nnew\n\n## Side by side\n\nnew rows\n"
    assert keep_other_sections(new, old) == new + "\n## Other\n\nkept\n"
    assert keep_other_sections(new, "") == new


def test_an_earlier_run_is_set_beside_this_one_and_a_profile_section_is_kept():
    """With ``before``, each scenario's row shows both runs' rates, ratios and p99s; a
    hand-written Profile section of the page replaced stays."""
    earlier = [measured(s, 100.0, p99_ms=50.0) for s in SCENARIOS]
    before = as_json("python -m loadtests.bench --runs 1", Options(), [2], earlier, [])
    now = [measured(s, 200.0 if s in (ASGI, QUART) else 180.0) for s in SCENARIOS]
    old_page = "# Performance\n\n## Profile\n\npy-spy said so.\n\n## Command\n\nx\n"
    page = keep_other_sections(markdown("python -m loadtests.bench", Options(), [2], now, [],
                                        before), old_page)
    assert f"| {CURRENT} | 2 | 64 | 100 | 180 | 1.00x | 0.90x | 1.00x | 0.90x | 50.0 | 10.0 |" \
        in page
    section = page.split("## Before and after")[1].split("## ")[0]
    assert f"| {ASGI} |" not in section and "--runs 1" in section
    assert "## Profile\n\npy-spy said so." in page
    assert page.count("## Command") == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
async def test_a_quick_run_reports_every_row_from_its_measured_figures(services, tmp_path):
    """``--quick`` with 1 worker: every scenario measured 3 times, its rate the median of
    those runs, its ratios those rates divided, and only the answers the scenario means."""
    out, doc = tmp_path / "bench.json", tmp_path / "performance.md"
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, "-m", "loadtests.bench", "--quick", "--workers", "1",
             "--connections", "16", "--database-url", services.database_url,
             "--redis-url", services.redis_url, "--json", str(out), "--doc", str(doc)],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    data = json.loads(out.read_text())
    rows = {m["scenario"]: m for m in data["measurements"]}
    assert list(rows) == list(SCENARIOS), output
    expected = {ASGI: "200", QUART: "200", HEALTHZ: "200", CURRENT: "200", BOUGHT: "201",
                SOLD_OUT: "409 SOLD_OUT", REPEATS: "409 ALREADY_PURCHASED"}
    for name, m in rows.items():
        assert (m["workers"], m["connections"], len(m["runs_per_s"])) == (1, 16, 3)
        assert m["per_s"] == statistics.median(m["runs_per_s"]) > 0
        assert m["vs_asgi"] == pytest.approx(m["per_s"] / rows[ASGI]["per_s"])
        assert m["vs_quart"] == pytest.approx(m["per_s"] / rows[QUART]["per_s"])
        assert list(m["answers"]) == [expected[name]], (name, m["answers"])
        assert not any(m["socket_errors"].values()), (name, m["socket_errors"])
    assert {g["met"] for g in data["goals"]} == {None}, "2 workers were not measured"
    page = doc.read_text()
    for name, m in rows.items():
        assert f"| {name} | 1 | 16 | {m['per_s']:,.0f} |" in page
    assert "## Goals" in page and "## A whole sale" not in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
async def test_a_quick_run_with_auth_sends_a_token_with_every_purchase(services, tmp_path):
    """``--quick --auth``: the server authenticates buyers, and every purchase scenario is
    answered as it is without auth (201 or 409), never 401."""
    out = tmp_path / "bench.json"
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, "-m", "loadtests.bench", "--quick", "--auth", "--auth-pool", "2000",
             "--workers", "1", "--connections", "16", "--runs", "1",
             "--database-url", services.database_url, "--redis-url", services.redis_url,
             "--json", str(out), "--no-doc"],
            cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output
    data = json.loads(out.read_text())
    assert data["options"]["auth"] is True and "auth_secret" not in data["options"]
    rows = {m["scenario"]: m for m in data["measurements"]}
    assert list(rows) == list(SCENARIOS), output
    for name in (BOUGHT, SOLD_OUT, REPEATS):
        answers = rows[name]["answers"]
        assert answers and {key.split()[0] for key in answers} <= {"201", "409"}, (name, answers)
    assert "201" in rows[BOUGHT]["answers"], rows[BOUGHT]["answers"]
