"""The settings tables, the code and docs/settings.md agree (the Datasette way: a test keeps docs honest)."""

from __future__ import annotations

import re
from pathlib import Path

from piblade import envvars
from piblade.envvars import ENV
from piblade.settingsdoc import render_markdown

ROOT = Path(__file__).resolve().parents[2]
#: PIBLADE_* names that are Python identifiers, not environment variables.
NOT_ENV = {"PIBLADE_ACL_RULES"}
NAME = re.compile(r"\bPIBLADE_[A-Z][A-Z0-9_]*\b")


def names_in_code() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    sources = [*ROOT.glob("piblade/**/*.py"), *ROOT.glob("piblade/**/*.j2"), *ROOT.glob("ansible/**/*.yml"),
               *ROOT.glob("ansible/**/*.j2")]
    for path in sources:
        if path.name == "envvars.py":
            continue
        for name in NAME.findall(path.read_text()):
            if name not in NOT_ENV:
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_environment_variable_in_the_code_is_declared() -> None:
    declared = {v.name for v in ENV}
    missing = {name: files for name, files in names_in_code().items() if name not in declared}
    assert not missing, f"declare these in piblade/envvars.py: {missing}"


def test_every_declared_variable_is_read_somewhere() -> None:
    unused = {v.name for v in ENV} - set(names_in_code()) - {v.name for v in ENV if _named_through_table(v)}
    assert not unused, f"declared but never read: {unused}"


def _named_through_table(var: envvars.EnvVar) -> bool:
    """Code that reads a variable as envvars.X instead of by its name."""
    attr = next(k for k, v in vars(envvars).items() if v is var)
    return any(f"envvars.{attr}" in p.read_text() for p in ROOT.glob("piblade/**/*.py"))


def test_each_variable_says_what_it_does_and_who_reads_it() -> None:
    assert len({v.name for v in ENV}) == len(ENV)
    for var in ENV:
        assert var.name.startswith("PIBLADE_") and var.help.strip() and var.read_by.strip(), var


def test_the_settings_document_is_rendered_from_the_tables() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert doc == render_markdown(), "run `python -m piblade.settingsdoc > docs/settings.md`"
