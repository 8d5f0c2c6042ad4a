"""Root of the `piblade` CLI. Each command group lives in its own module."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import typer

from piblade import __version__
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


def _register() -> None:
    """Attach the command groups. Imports stay light: heavy modules load inside commands."""
    from piblade.cli import (
        agent_cmd,
        dashboard_cmd,
        inventory_cmd,
        jobs_cmd,
        local_cmd,
        nas_cmd,
        provision_cmd,
        status_cmd,
        submit_cmd,
        testbed_cmd,
        worker_cmd,
    )

    app.add_typer(inventory_cmd.app, name="inventory")
    app.add_typer(jobs_cmd.app, name="jobs")
    app.add_typer(local_cmd.app, name="local")
    app.add_typer(nas_cmd.app, name="nas")
    app.add_typer(testbed_cmd.app, name="testbed")
    submit_cmd.register(app)
    status_cmd.register(app)
    dashboard_cmd.register(app)
    provision_cmd.register(app)
    provision_cmd.register_wheelhouse(app)
    worker_cmd.register(app)
    agent_cmd.register(app)


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


def main() -> None:
    _register()
    try:
        rc = app(standalone_mode=False)
    except PibladeError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: keep the traceback, say where
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        path = _crash_log(exc)
        err_console.print(f"[bold red]piblade crashed:[/] {type(exc).__name__}: {exc}")
        if path:
            err_console.print(f"the traceback is in {path}; please attach it to a bug report")
        if os.environ.get("PIBLADE_DEBUG"):
            raise
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)
