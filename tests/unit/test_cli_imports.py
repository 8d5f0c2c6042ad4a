"""The CLI imports only what a command uses: `piblade submit` and `piblade status` start without the heavy modules.

Each command runs as a real process (the installed entry point's `main`) in an
empty state directory, so it gets as far as it can without a cluster (parsing,
the job registry, validation, finding the cluster) and stops at "no cluster to
talk to"; the modules it imported on the way are then read from ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from piblade.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]

#: What no submit or status needs: numerics, SSH, SMB, the database, notifications, the web app, psutil.
HEAVY = ("numba", "numpy", "paramiko", "fabric", "smbprotocol", "smbclient", "psycopg", "apprise", "starlette",
         "psutil", "PIL", "yaml")

#: Run the CLI as the console script does, and write the imported modules' names where the test reads them.
RUN_CLI = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sorted(sys.modules))))
sys.argv = ["piblade", *sys.argv[1:]]
from piblade.cli.entry import main
main()
"""


def cli_modules(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIBLADE_")}
    env.update(PIBLADE_STATE_DIR=str(tmp_path / "state"), MODULES_OUT=str(out), COLUMNS="100")
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return done, set(out.read_text().split())


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("argv", [["submit", "noop", "-p", "count=1", "--wait"], ["-v", "status"]])
def test_submit_and_status_reach_the_cluster_without_the_heavy_modules(tmp_path: Path, argv: list[str]) -> None:
    done, modules = cli_modules(tmp_path, *argv)
    assert done.returncode == 1, done.stderr
    assert "no cluster to talk to" in done.stderr  # it got past parsing, the registry and validation
    assert "jobs.mandelbrot" in modules or argv[-1] == "status"  # every job module was read for submit
    assert sorted(top_level(modules) & set(HEAVY)) == []
    assert sorted(top_level(modules) & {"typer", "pydantic", "click"}) == []  # parsed without Typer
    command = argv[0] if argv[0] != "-v" else argv[1]
    others = {f"piblade.cli.{m}" for m in cli_app.COMMAND_MODULES.values()} - {f"piblade.cli.{command}_cmd"}
    assert sorted(modules & others) == []  # only the named command's module was attached


def test_a_bad_parameter_is_refused_before_any_job_module_imports_numpy(tmp_path: Path) -> None:
    done, modules = cli_modules(tmp_path, "submit", "mandelbrot", "-p", "tiles=0")
    assert done.returncode == 1
    assert "tiles" in done.stderr
    assert "numpy" not in modules


def test_the_root_help_still_lists_every_command(tmp_path: Path) -> None:
    done, modules = cli_modules(tmp_path, "--help")
    assert done.returncode == 0
    for name in ("submit", "status", "nas", "testbed", "alerts", "wheelhouse"):
        assert f" {name} " in done.stdout
    assert {f"piblade.cli.{m}" for m in cli_app.COMMAND_MODULES.values()} <= modules


def test_a_typo_still_gets_its_suggestion(tmp_path: Path) -> None:
    done, _ = cli_modules(tmp_path, "stauts")
    assert done.returncode == 2
    assert "Did you mean 'status'?" in done.stderr


def test_the_command_table_names_the_module_of_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """COMMAND_MODULES is written by hand: a command added to a module but not to the table would run
    only after the full registration, so the table must match what registering everything attaches."""
    root = typer.Typer()
    monkeypatch.setattr(cli_app, "app", root)
    cli_app._register()
    found: dict[str, str] = {}
    for command in root.registered_commands:
        assert command.callback is not None
        found[command.name or command.callback.__name__] = command.callback.__module__
    for group in root.registered_groups:
        callbacks = [c.callback for c in group.typer_instance.registered_commands if c.callback is not None]
        assert group.name is not None and callbacks
        found[group.name] = callbacks[0].__module__
    assert {name: f"piblade.cli.{module}" for name, module in cli_app.COMMAND_MODULES.items()} == found


@pytest.mark.parametrize(("argv", "name"), [
    (["status"], "status"), (["-v", "submit", "noop"], "submit"), (["--verbose", "nas", "ls"], "nas"),
    (["--help"], None), ([], None),
])
def test_the_command_is_the_first_word_that_is_not_a_root_option(argv: list[str], name: str | None) -> None:
    assert cli_app._command_name(argv) == name
