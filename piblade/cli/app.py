"""Root of the `piblade` CLI. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType

import typer

from piblade import __version__
from piblade.cli.argparsing import setup_logging
from piblade.cli.boundary import report_error

app = typer.Typer(
    name="piblade",
    help="Run a Raspberry Pi cluster as a home NAS plus a job-processing blade.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"piblade {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what piblade does."),
) -> None:
    setup_logging(verbose)


#: How each command module attaches its commands to the root, in the order `piblade --help` lists them.
_ATTACH: tuple[tuple[str, Callable[[ModuleType], None]], ...] = (
    ("inventory_cmd", lambda m: app.add_typer(m.app, name="inventory")),
    ("jobs_cmd", lambda m: app.add_typer(m.app, name="jobs")),
    ("local_cmd", lambda m: app.add_typer(m.app, name="local")),
    ("nas_cmd", lambda m: app.add_typer(m.app, name="nas")),
    ("node_cmd", lambda m: app.add_typer(m.app, name="node")),
    ("runs_cmd", lambda m: app.add_typer(m.app, name="runs")),
    ("testbed_cmd", lambda m: app.add_typer(m.app, name="testbed")),
    ("submit_cmd", lambda m: m.register(app)),
    ("report_cmd", lambda m: m.register(app)),
    ("status_cmd", lambda m: m.register(app)),
    ("dashboard_cmd", lambda m: m.register(app)),
    ("provision_cmd", lambda m: m.register(app)),
    ("provision_cmd", lambda m: m.register_wheelhouse(app)),
    ("worker_cmd", lambda m: m.register(app)),
    ("agent_cmd", lambda m: m.register(app)),
    ("alerts_cmd", lambda m: m.register(app)),
    ("runs_cmd", lambda m: m.register_recorder(app)),
)

#: The module behind each top-level command (a unit test checks it against a full registration).
COMMAND_MODULES: dict[str, str] = {
    "agent": "agent_cmd", "alertd": "alerts_cmd", "alerts": "alerts_cmd", "dashboard": "dashboard_cmd",
    "inventory": "inventory_cmd", "jobs": "jobs_cmd", "local": "local_cmd", "nas": "nas_cmd", "node": "node_cmd",
    "provision": "provision_cmd", "recorder": "runs_cmd", "report": "report_cmd", "runs": "runs_cmd",
    "status": "status_cmd", "submit": "submit_cmd", "testbed": "testbed_cmd", "trust": "provision_cmd",
    "wheelhouse": "provision_cmd", "worker": "worker_cmd",
}


def _command_name(argv: list[str]) -> str | None:
    """The command a command line names: its first word that is not a root option (None without one)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _register(argv: list[str] | None = None) -> None:
    """Attach the command modules: only the one the command line names, else all of them.

    Every module costs its imports and Typer's work on its commands, so `piblade status`
    attaches status_cmd alone. The root's help, a typo's "did you mean" and a bare
    `piblade` need every command: they get them all.
    """
    only = COMMAND_MODULES.get(_command_name(argv) or "") if argv is not None else None
    for module, attach in _ATTACH:
        if only is None or module == only:
            attach(importlib.import_module(f"piblade.cli.{module}"))


def main() -> None:
    _register(sys.argv[1:])
    try:
        rc = app(standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 -- the one error boundary: every exit goes through it
        sys.exit(report_error(exc))
    sys.exit(rc if isinstance(rc, int) else 0)
