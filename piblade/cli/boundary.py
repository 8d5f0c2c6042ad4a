"""The CLI's one error boundary: every exit of every command goes through :func:`report_error`.

It lives apart from the Typer app so that the commands parsed without Typer
(:mod:`piblade.cli.entry`) share it: it never imports Typer or click itself,
it only recognises their exceptions when they are already loaded, since an
exception of a library nobody imported cannot have been raised.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from rich.markup import escape

from piblade import envvars
from piblade.cli.argparsing import UsageError
from piblade.cli.output import err_console
from piblade.errors import PibladeError


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
    """Click's exception bases, whichever click raised: those of the loaded modules only.

    typer 0.29 vendors click as ``typer._click`` and raises its classes, which are not
    ``click.exceptions.*``; older typers raise the real click's. A boundary that knew only one
    reported every usage error of the other as a crash, so both are looked up.
    """
    found = (sys.modules.get(name) for name in ("typer._click.exceptions", "click.exceptions"))
    return tuple(module.ClickException for module in found if module is not None)


def _is_click(exc: BaseException, name: str) -> bool:
    """``exc`` is Typer's or click's ``name`` exception (Exit, Abort), whichever raised it."""
    modules = ("typer.exceptions", "typer._click.exceptions", "click.exceptions")
    classes = (getattr(sys.modules.get(module), name, None) for module in modules)
    return any(isinstance(exc, cls) for cls in classes if isinstance(cls, type))


def _usage_line(exc: BaseException) -> str | None:
    """The command's usage, from the click context a usage error carries (None without one)."""
    ctx: Any = getattr(exc, "ctx", None)
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
    if isinstance(exc, UsageError):
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        line = exc.usage[:1].upper() + exc.usage[1:]  # argparse says "usage:", click "Usage:"
        err_console.print(f"{line}  (see '{exc.prog} --help')", markup=False, soft_wrap=True)
        return 2
    if _is_click(exc, "Exit"):
        return int(getattr(exc, "exit_code", 0))
    if _is_click(exc, "Abort"):
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
    path = _crash_log(exc)
    err_console.print(f"[bold red]piblade crashed:[/] {type(exc).__name__}: {exc}")
    if path:
        err_console.print(f"the traceback is in {path}; please attach it to a bug report")
    if envvars.DEBUG.get():
        raise exc
    return 2
