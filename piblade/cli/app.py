"""Root of the `piblade` CLI. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import typer
from rich.markup import escape

from piblade import __version__, envvars
from piblade.cli.output import err_console
from piblade.errors import PibladeError

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
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


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


def _crash_log(exc: BaseException) -> Path | None:
    """Keep the traceback of an unexpected error in a file the user can attach to a bug report."""
    try:
        from piblade.state import private_dir, state_dir

        path = private_dir(state_dir()) / "crash.log"
        with path.open("a") as handle:
            handle.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def _click_exception_classes() -> tuple[type[BaseException], ...]:
    """Click's exception bases, whichever click the installed typer raises.

    typer 0.29 vendors click as ``typer._click`` and raises its classes, which are not
    ``click.exceptions.*``; older typers raise the real click's. A boundary that knew only one
    reported every usage error of the other as a crash, so both are looked up (either may be absent).
    """
    classes: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            exceptions = importlib.import_module(module)
        except ImportError:
            continue
        classes.append(exceptions.ClickException)
    return tuple(classes)


def _usage_line(exc: BaseException) -> str | None:
    """The command's usage, from the click context a usage error carries (None without one)."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return None
    try:
        usage = ctx.get_usage().strip()
        return f"{usage}  (see '{ctx.command_path} --help')"
    except Exception:  # noqa: BLE001 -- a usage line is a courtesy: never let it hide the error itself
        return None


def report_error(exc: BaseException) -> int:
    """Say what went wrong in the user's terms and return the exit code.

    piblade's own errors: one red line, the hint, exit 1. Usage errors (a command or option that
    does not exist, a missing or malformed argument): one line, the usage, exit 2. Anything else
    is a bug: the traceback goes to crash.log and the user is told where it is.
    """
    if isinstance(exc, PibladeError):
        err_console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}")
        return 1
    if isinstance(exc, typer.Exit):
        return exc.exit_code
    if isinstance(exc, typer.Abort):
        err_console.print("aborted")
        return 130
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, _click_exception_classes()):
        if type(exc).__name__ == "NoArgsIsHelpError":  # `piblade nas` alone: the help is the answer
            exc.show()  # type: ignore[attr-defined]
            return 2
        message = exc.format_message()  # type: ignore[attr-defined]
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        usage = _usage_line(exc)
        if usage:
            err_console.print(usage, markup=False, soft_wrap=True)
        return int(getattr(exc, "exit_code", 2))
    if type(exc).__name__ == "Exit" and isinstance(getattr(exc, "exit_code", None), int):  # click's own Exit
        return int(exc.exit_code)  # type: ignore[attr-defined]
    path = _crash_log(exc)
    err_console.print(f"[bold red]piblade crashed:[/] {type(exc).__name__}: {exc}")
    if path:
        err_console.print(f"the traceback is in {path}; please attach it to a bug report")
    if envvars.DEBUG.get():
        raise exc
    return 2


def main() -> None:
    _register(sys.argv[1:])
    try:
        rc = app(standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 -- the one error boundary: every exit goes through it
        sys.exit(report_error(exc))
    sys.exit(rc if isinstance(rc, int) else 0)
