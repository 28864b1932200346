"""The documents under docs/ against the code they describe, so the two cannot drift."""

from __future__ import annotations

import re
import shlex
from dataclasses import MISSING, Field, fields
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flashflow.cli import main
from flashflow.http.metrics import (
    ACTOR_METRICS,
    BUILD_METRICS,
    PROCESS_METRICS,
    REQUEST_METRICS,
    SALE_METRICS,
)
from flashflow.settings import NOT_SETTINGS, PREFIX, Settings, env_name

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["fsd.md", "operations.md", "testing.md"]
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
