"""What the commands parsed with argparse share: the parser, and the options every command has.

Those commands (:mod:`piblade.cli.entry` says which and why) keep the CLI's
conventions: the same option names, ``$PIBLADE_INVENTORY`` for ``-i``, usage
errors reported by the one error boundary, and a Typer registration that only
passes the arguments through, so ``piblade --help`` lists them with the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from piblade import envvars

if TYPE_CHECKING:
    import typer


class UsageError(Exception):
    """A command line argparse refused: shown as Typer's usage errors are, exit 2."""

    def __init__(self, message: str, usage: str, prog: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.prog = prog


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a refused command line raises :class:`UsageError` instead of printing and
    exiting, so it is reported like every other usage error (one line, the usage, exit 2)."""

    def __init__(self, **kwargs: Any) -> None:
        # An abbreviation that works today (--ret for --retries) would break when an option is added.
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage().strip(), self.prog)


def inventory_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not an inventory file")
    return path


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``-i/--inventory``, as every cluster command has them."""
    parser.add_argument("--json", dest="as_json", action="store_true", help="Print JSON for scripts.")
    # A string default goes through `type` only when -i is not given, and a bad one is a usage error.
    parser.add_argument(
        "-i", "--inventory", type=inventory_file, default=envvars.INVENTORY.get(),
        help=f"Inventory of the cluster to use (env {envvars.INVENTORY.name}; default: the local cluster).",
    )


def setup_logging(verbose: bool) -> None:
    """What the root ``-v`` sets up, for the Typer app and for the commands parsed without it."""
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def register_passthrough(app: typer.Typer, name: str, main: Callable[[Sequence[str]], int], help: str) -> None:
    """List ``name`` in the Typer app, handing its arguments, ``--help`` included, to ``main``."""
    import typer

    def passthrough(ctx: typer.Context) -> None:
        raise typer.Exit(main(ctx.args))

    # Typer reads the annotation at registration, where this module's postponed one would not resolve;
    # and the command belongs to the module whose parser it runs.
    passthrough.__annotations__["ctx"] = typer.Context
    passthrough.__module__ = main.__module__
    app.command(
        name=name, help=help, add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(passthrough)
