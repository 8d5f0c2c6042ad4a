"""The `piblade` command's entry point: the hot commands start without Typer, the rest go through it.

`piblade status` and `piblade submit` are what people (and their scripts) run
most, so their start-up is what the CLI feels like. Typer 0.29 checks every
option that is not a flag with a pydantic ``TypeAdapter``, which costs
≈ 0.1 s of CPU per command before any work (more on a Pi). So these two parse
their own options with argparse (:mod:`piblade.cli.status_cmd`,
:mod:`piblade.cli.submit_cmd`: one declaration each, which Typer passes through
to), as the health agent and the worker already do for their memory's sake.
Everything else, the root's own options other than ``-v``, and the root help go
to the Typer app (:mod:`piblade.cli.app`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Commands whose module has ``main(argv) -> int`` parsing its own options.
FAST = {"status": "piblade.cli.status_cmd", "submit": "piblade.cli.submit_cmd"}
#: Root options a fast command may follow (``piblade -v status``).
VERBOSE = ("-v", "--verbose")


def fast_command(argv: Sequence[str]) -> tuple[str, list[str], bool] | None:
    """The fast command ``argv`` names, its own arguments and whether -v came first; None for Typer."""
    verbose = False
    for at, word in enumerate(argv):
        if word in VERBOSE:
            verbose = True
            continue
        if word in FAST:
            return word, list(argv[at + 1 :]), verbose
        return None
    return None


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["agent"]:
        # The health agent's RSS budget (35 MiB) has no room for Typer, pydantic and rich.
        from piblade.cli.agent_cmd import main as agent_main

        sys.exit(agent_main(argv[1:]))
    if argv[:1] == ["worker"]:
        # Each worker process is a fork of the supervisor: the full CLI would stay in all of them.
        from piblade.cli.worker_cmd import main as worker_main

        sys.exit(worker_main(argv[1:]))
    fast = fast_command(argv)
    if fast is None:
        from piblade.cli.app import main as typer_main

        typer_main()
        return
    name, args, verbose = fast
    from piblade.cli.argparsing import setup_logging
    from piblade.cli.boundary import report_error

    setup_logging(verbose)
    try:
        rc = importlib.import_module(FAST[name]).main(args)
    except BaseException as exc:  # noqa: BLE001 -- the one error boundary, as in the Typer app
        sys.exit(report_error(exc))
    sys.exit(rc)
