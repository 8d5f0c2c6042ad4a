"""`piblade agent`: publish this node's health to Redis every interval.

The options are parsed with argparse, not Typer, on purpose: Typer 0.29 builds
a pydantic adapter for every option, and pydantic alone adds ≈ 6 MiB to a
process whose whole budget is 35 MiB. ``python -m piblade agent`` takes a fast
path (``piblade/__main__.py``) straight to :func:`main` without loading the rest
of the CLI (≈ 32 MiB RSS); ``piblade agent`` through the full CLI works the same
but weighs what the full CLI weighs. Services should run the former.
"""

# No `from __future__ import annotations`: Typer must resolve `typer.Context` in
# register(), and typer is imported there only, to keep the fast path free of it.
import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from piblade.healthmodel import DEFAULT_MAX_TEMP

if TYPE_CHECKING:
    import typer

PROG = "piblade agent"


def _env(name: str, default: Any, convert: Callable[[str], Any]) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except (ValueError, argparse.ArgumentTypeError):
        raise SystemExit(f"{PROG}: error: ${name}: not a valid value: {raw!r}") from None


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


def _history(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Sample this node's health (psutil, Pi temperature and throttling) and publish it to Redis. "
        "Redis comes from $PIBLADE_REDIS_URL and $PIBLADE_REDIS_PASSWORD_FILE. "
        "Pi sensors can be pointed elsewhere with $PIBLADE_THERMAL_FILE, $PIBLADE_MODEL_FILE, $PIBLADE_VCGENCMD.",
    )
    parser.add_argument("--node", default=_env("PIBLADE_NODE", None, str),
                        help="Node name (env PIBLADE_NODE; default: this host's name).")
    parser.add_argument("--role", default=_env("PIBLADE_ROLE", "", str),
                        help="Roles shown by status, e.g. controller,workers (env PIBLADE_ROLE).")
    parser.add_argument("--interval", type=_positive, default=_env("PIBLADE_HEALTH_INTERVAL", 5.0, _positive),
                        help="Seconds between heartbeats (env PIBLADE_HEALTH_INTERVAL; default 5).")
    parser.add_argument("--max-temp", type=float, default=_env("PIBLADE_MAX_TEMP", DEFAULT_MAX_TEMP, float),
                        help=f"Pause work at this CPU temperature in C (env PIBLADE_MAX_TEMP; default {DEFAULT_MAX_TEMP:g}).")
    parser.add_argument("--mount", default=_env("PIBLADE_MOUNT", None, str),
                        help="Where the NAS share is mounted; its free space is reported (env PIBLADE_MOUNT).")
    parser.add_argument("--history", type=_history, default=_env("PIBLADE_HEALTH_HISTORY", None, _history),
                        help="Keep exactly this many history entries (env PIBLADE_HEALTH_HISTORY; "
                        "default: 24 hours' worth).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Log every heartbeat.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        logging.getLogger("redis").setLevel(logging.WARNING)

    from piblade.agent import Agent, AgentConfig
    from piblade.errors import PibladeError
    from piblade.redisconn import target_from_env

    try:
        target = target_from_env()
        if target is None:
            raise PibladeError(
                "no Redis to report to",
                hint="set PIBLADE_REDIS_URL and PIBLADE_REDIS_PASSWORD_FILE (the local cluster and provisioned nodes do)",
            )
    except PibladeError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        return 1
    config = AgentConfig(
        node=args.node or socket.gethostname(),
        role=args.role,
        interval=args.interval,
        max_temp=args.max_temp,
        mount=args.mount,
        history_len=args.history,
    )
    return Agent(config, target).run()


def register(app: "typer.Typer") -> None:
    import typer

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def agent(ctx: typer.Context) -> None:
        """Publish this node's health to Redis every interval (see `piblade agent --help`)."""
        raise typer.Exit(main(ctx.args))
