"""The documents under docs/ against the code they describe, so the two cannot drift."""

from __future__ import annotations

import copy
import re
import shlex
import sys
import uuid
from dataclasses import MISSING, Field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import yaml
from click.testing import CliRunner

from actors import WaitingRoom
from actors.places_sql import line_order
from flashflow.cli import main
from flashflow.http.metrics import (
    ACTOR_METRICS,
    BUILD_METRICS,
    PROCESS_METRICS,
    REQUEST_METRICS,
    SALE_METRICS,
)
from flashflow.http.wire import QUEUE_AUDIT, fill, queue_path, ticket_path
from flashflow.settings import NOT_SETTINGS, PREFIX, Settings, env_name

from .helpers import live_server, make_sale

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["fsd.md", "operations.md", "testing.md", "waiting-room.md"]
METRICS = {m[0] for m in (*REQUEST_METRICS, *ACTOR_METRICS, *SALE_METRICS, *BUILD_METRICS,
                          *PROCESS_METRICS)}
#: Defaults computed on the machine that runs, as operations.md words them.
FACTORY_DEFAULTS = {"workers": "CPUs available"}


def read(page: str) -> str:
    """The text of one page of docs/."""
    return (DOCS / page).read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``text``."""
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def default_text(f: Field) -> str:
    """A field's default as operations.md shows it."""
    if f.default is MISSING:
        assert f.name in FACTORY_DEFAULTS, f"{f.name}: say in operations.md what its default is"
        return FACTORY_DEFAULTS[f.name]
    value = f.default
    if value is None:
        return "unset"
    if value == ():
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def slug(heading: str) -> str:
    """The anchor a forge gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_setting_is_documented_with_its_default():
    """Each Settings field has a row in operations.md naming its variable and its default."""
    variables = {env_name(f) for f in fields(Settings)}
    cells = [(line, line.split("`")[1]) for line in read("operations.md").splitlines()
             if line.startswith("| `")]
    rows = [line for line, name in cells if name.startswith(PREFIX) or name in variables]
    by_name = {row.split("`")[1]: row for row in rows}
    for f in fields(Settings):
        name = env_name(f)
        assert name in by_name, f"{name} is missing from docs/operations.md"
        assert f"`{default_text(f)}`" in by_name[name], f"{name}: wrong default"
    assert len(rows) == len(fields(Settings)), "a documented variable is not a setting"


def test_every_variable_named_in_the_docs_is_a_setting():
    """No page names a FLASHFLOW_* variable that Settings does not read (the tests' own
    variables, which the start-up warning passes over too, aside)."""
    real = {env_name(f) for f in fields(Settings)} | NOT_SETTINGS
    for page in PAGES:
        named = set(re.findall(r"\bFLASHFLOW_[A-Z0-9_]*[A-Z0-9]", read(page)))
        assert named <= real, (page, sorted(named - real))


def test_metrics_list_matches_the_code():
    """operations.md lists every exported metric, and names no metric that does not exist."""
    text = read("operations.md")
    for name in METRICS:
        assert f"`{name}`" in text, f"{name} is missing from docs/operations.md"
    named = set(re.findall(r"`(flashflow_[a-z_]+)`", text))
    assert named <= METRICS, sorted(named - METRICS)


@pytest.mark.parametrize("page", PAGES)
def test_links_point_at_files_and_headings_that_exist(page):
    """Every relative link resolves to a file of the repository and, with #, to its heading."""
    for target in re.findall(r"\]\(([^)\s]+)\)", read(page)):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (DOCS / path).resolve() if path else DOCS / page
        assert file.is_file(), f"{page}: broken link {target}"
        if anchor:
            text = file.read_text(encoding="utf-8")
            headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page}: no heading #{anchor}"


def test_documented_commands_exist_with_their_options():
    """Each `flashflow ...` line in the docs' shell examples names real commands and options."""
    lines: list[str] = []
    for page in PAGES:
        for block in blocks(read(page), "sh"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if line.startswith("flashflow "):
                    lines.append(line)
    assert lines, "no flashflow command found in the docs"
    runner = CliRunner()
    for line in lines:
        # --help is eager: options are still checked, but nothing runs.
        result = runner.invoke(main, [*shlex.split(line)[1:], "--help"], env={})
        assert result.exit_code == 0, f"{line!r}: {result.output}"


def test_yaml_examples_parse_and_mermaid_diagrams_are_there():
    """The YAML examples are valid YAML, and fsd.md draws the flow, model and status machine."""
    for page in PAGES:
        for block in blocks(read(page), "yaml"):
            assert yaml.safe_load(block)
    diagrams = " ".join(b.split("\n", 1)[0] for b in blocks(read("fsd.md"), "mermaid"))
    for kind in ("sequenceDiagram", "flowchart", "erDiagram", "stateDiagram-v2"):
        assert kind in diagrams, kind


#: The check of a line's order that waiting-room.md gives its readers, as they would copy it.
(DOC_CHECK,) = blocks(read("waiting-room.md"), "python")


async def audited_line(settings: Settings, early: int, late: int) -> tuple[dict, str]:
    """A live line of ``early`` tickets taken before the opening and ``late`` after it, run
    until all are admitted: its audit body, and what the doc's program printed when run, as a
    reader would, on the audit's address."""
    sale = await make_sale(settings.database_url, starts_in=timedelta(seconds=2),
                           waiting_room=WaitingRoom(opens_before_s=3600, admit_per_s=20.0,
                                                    window_s=60))
    async with live_server(settings) as server:
        client = server.client
        tickets = [(await client.post(queue_path(sale.id), json={"userId": f"early{i}"}))
                   .json()["data"]["ticket"] for i in range(early)]
        while datetime.now(UTC) < sale.start_time + timedelta(seconds=0.3):
            await trio.sleep(0.1)
        tickets += [(await client.post(queue_path(sale.id), json={"userId": f"late{i}"}))
                    .json()["data"]["ticket"] for i in range(late)]
        for ticket in tickets:
            while (await client.get(ticket_path(sale.id, ticket))).json()["data"][
                    "status"] != "admitted":
                await trio.sleep(0.1)
        address = server.base_url + fill(QUEUE_AUDIT, sale.id)
        ran = await trio.run_process([sys.executable, "-c", DOC_CHECK, address],
                                     capture_stdout=True, capture_stderr=True, check=False)
        audit = (await client.get(fill(QUEUE_AUDIT, sale.id))).json()["data"]
    assert ran.returncode == 0, ran.stderr.decode()
    return audit, ran.stdout.decode()



async def test_the_waiting_rooms_order_check_holds_on_a_live_line_and_catches_tampering(
        settings):
    """The program in waiting-room.md, run on a live line's audit address, says the order
    holds and agrees with the server's order; given the audit with two early tickets swapped,
    with another seed, or admitted out of order, it refuses."""
    with trio.fail_after(60):
        audit, said = await audited_line(settings, early=8, late=3)
    assert said == "the order holds: 11 tickets\n"
    check = {"__name__": "waiting_room_doc"}
    exec(DOC_CHECK, check)
    order = check["check"](audit)
    seed = bytes.fromhex(audit["seed"])
    early = [uuid.UUID(t["ticket"]) for t in audit["tickets"] if t["early"]]
    assert [uuid.UUID(t) for t in order[:8]] == line_order(seed, early)
    assert order[8:] == [t["ticket"] for t in audit["tickets"] if not t["early"]]
    swapped, reseeded, rushed = (copy.deepcopy(audit) for _ in range(3))
    first, second = (t for t in swapped["tickets"] if t["early"] and t["position"] <= 2)
    first["position"], second["position"] = second["position"], first["position"]
    reseeded["seed"] = bytes(32).hex()
    min(rushed["tickets"], key=lambda t: t["position"])["admittedAt"] = "2999-01-01T00:00:00Z"
    for tampered in (swapped, reseeded, rushed):
        with pytest.raises(AssertionError):
            check["check"](tampered)
