"""`piblade worker`: run warm worker processes on this node.

The options are parsed with argparse, not Typer, for the reason the agent's
are (``agent_cmd``): every worker process is a fork of the supervisor, so
whatever the supervisor imports stays in memory for as long as the node runs.
The full CLI (Typer, click, rich, pydantic and every command module) is
≈ 13 MiB of it that no task uses. ``python -m piblade worker`` takes a fast path
(``piblade/__main__.py``) straight to :func:`main`; ``piblade worker`` through
the full CLI works the same but weighs more. The worker unit runs the former.
"""

# No `from __future__ import annotations`: Typer must resolve `typer.Context` in
# register(), and typer is imported there only, to keep the fast path free of it.
import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    from piblade.redisconn import RedisTarget
    from piblade.worker import WorkerConfig

PROG = "piblade worker"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run piblade workers: warm the jobs' Numba kernels once, then serve registered jobs only. "
        "Redis comes from $PIBLADE_REDIS_URL and $PIBLADE_REDIS_PASSWORD_FILE.",
    )
    parser.add_argument("--queues", "-q", default="default", help="Comma-separated queues, in priority order.")
    parser.add_argument("--processes", "-p", type=_count, default=0,
                        help="Worker processes (0: as many as this node's memory allows, at most one per core; "
                        "see `piblade_worker_processes` in docs/settings.md).")
    parser.add_argument("--threads", type=_count, default=0, help="Numba threads per process (0: cores / processes).")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("PIBLADE_DATA_DIR") or None,
                        help="Shared data root, the NAS mount on a Pi (env PIBLADE_DATA_DIR).")
    parser.add_argument("--node", default=os.environ.get("PIBLADE_NODE") or None,
                        help="Node name reported with results (env PIBLADE_NODE; default: this host's name).")
    parser.add_argument("--burst", action="store_true", help="Exit when the queues are empty.")
    parser.add_argument("--warm", default=None,
                        help="Comma-separated jobs whose kernels to compile before serving (default: every job).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Log what the workers do.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from piblade.errors import PibladeError

    try:
        config, target = _config(args)
    except PibladeError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        return 1
    from piblade.worker import run_workers

    return run_workers(config, target)


def _config(args: argparse.Namespace) -> tuple["WorkerConfig", "RedisTarget"]:
    from piblade.errors import PibladeError
    from piblade.redisconn import target_from_env
    from piblade.worker import WorkerConfig, default_processes

    target = target_from_env()
    if target is None:
        raise PibladeError(
            "no Redis to work for",
            hint="set PIBLADE_REDIS_URL and PIBLADE_REDIS_PASSWORD_FILE (the local cluster and provisioned nodes do)",
        )
    names = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    if not names:
        raise PibladeError("--queues names no queue")
    warm = tuple(w.strip() for w in args.warm.split(",") if w.strip()) if args.warm else None
    config = WorkerConfig(
        queues=names,
        processes=args.processes or default_processes(),
        data_root=Path(args.data_dir or Path.cwd() / "piblade-data").resolve(),
        node=args.node or socket.gethostname(),
        threads=args.threads,
        burst=args.burst,
        warm=warm,
    )
    return config, target


def register(app: "typer.Typer") -> None:
    import typer

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def worker(ctx: typer.Context) -> None:
        """Run piblade workers: warm the Numba kernels once, then serve registered jobs (see `piblade worker --help`)."""
        raise typer.Exit(main(ctx.args))
