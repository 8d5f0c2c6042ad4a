"""`piblade status`: every node's health, running jobs and pauses; the queues; the NAS share.

Parsed with argparse, not Typer, for its start-up time (:mod:`piblade.cli.entry`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from piblade.cli.argparsing import ArgumentParser, add_common, register_passthrough
from piblade.cli.output import console, print_json
from piblade.healthmodel import READINGS, Level, human_bytes, reading

if TYPE_CHECKING:
    import typer
    from rich.console import Group
    from rich.table import Table

    from piblade.clusterstatus import ClusterStatus, NodeStatus


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never seen"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"last seen {seconds / size:.0f}{unit} ago"
    return f"last seen {seconds:.0f}s ago"


_COLOUR = {Level.WARN: "yellow", Level.BAD: "red"}


def _coloured(text: str, level: Level, bold_bad: bool = False) -> str:
    colour = _COLOUR.get(level)
    if colour is None:
        return text
    if bold_bad and level is Level.BAD:
        colour = f"bold {colour}"
    return f"[{colour}]{text}[/]"


def _reading(node: NodeStatus, key: str) -> str:
    r = reading(key)
    value = node.reading(r)
    return _coloured(r.text(value), r.level(value))


def _temp(node: NodeStatus) -> str:
    if node.temp_c is None:
        return "-"
    return _coloured(f"{node.temp_c:.1f}°C", node.temp_level, bold_bad=True)


def _throttling(node: NodeStatus) -> str:
    flags = node.flags
    if flags is None:
        return "-"
    labels = node.throttling
    if not labels:
        return "[green]ok[/]"
    return ", ".join(f"[yellow]{label}[/]" if label.endswith("since boot") else f"[red]{label}[/]" for label in labels)


_LEFT = ("node", "role", "state", "throttling", "paused")


def _nodes_table(status: ClusterStatus, compact: bool) -> Table:
    """The node table; ``compact`` is for a narrow terminal (80 columns): one space between columns and
    no inner rules, roles and throttling flags wrap at their commas, a pause's reason goes below the
    table (:func:`render`), and no header or node name is ever cut."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    title = f"cluster {status.name}" if status.name else "nodes"
    style = {"box": box.SIMPLE_HEAD, "show_edge": False, "padding": 0} if compact else {}
    nodes = Table(title=title, title_justify="left", **style)  # type: ignore[arg-type]
    # Every reading of the health model gets a column: the percentages always, the
    # others (a fan, say) only when some node reports them.
    shown = [r for r in READINGS if r.bar or any(n.reading(r) is not None for n in status.nodes)]
    columns = ["node", "role", "state", "temp", "throttling", *(r.label.lower() for r in shown), "jobs"]
    if not compact:
        columns.append("paused")
    words = {
        "node": [n.name for n in status.nodes],
        "role": [w for n in status.nodes for w in (n.role or "-").split(",")],
        "throttling": [label + "," for n in status.nodes for label in n.throttling],
        "state": ["paused"] if any(n.paused for n in status.nodes) else [],
    }
    for column in columns:
        longest = max((len(w) for w in words.get(column, ()) if w), default=0)
        nodes.add_column(
            column,
            justify="left" if column in _LEFT else "right",
            no_wrap=column not in ("role", "state", "throttling", "paused"),
            min_width=max(len(column), longest) if compact else None,
        )
    joiner = ", " if compact else ","
    for node in status.nodes:
        if not node.up:
            state = f"[bold red]down[/] [dim]({ago(node.seen_ago)})[/]"
        elif compact and node.paused:
            state = "[bold yellow]paused[/]"
        else:
            state = "[green]up[/]"
        paused = [f"[bold yellow]paused: {escape(node.paused)}[/]" if node.paused else ""] if not compact else []
        nodes.add_row(
            escape(node.name),
            escape(joiner.join((node.role or "-").split(","))),
            state,
            _temp(node),
            _throttling(node),
            *(_reading(node, r.key) for r in shown),
            str(len(node.running_jobs)) if node.up or node.running_jobs else "-",
            *paused,
        )
    if not status.nodes:
        nodes.add_row("[dim]no node has sent a heartbeat yet[/]", *[""] * (len(columns) - 1))
    return nodes


def render(status: ClusterStatus) -> Group:
    from rich.console import Group
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    nodes = _nodes_table(status, compact=False)
    wide = Measurement.get(console, console.options.update_width(10_000), nodes).maximum
    compact = wide > console.width
    if compact:
        nodes = _nodes_table(status, compact=True)
    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "queued", "started", "failed", "workers"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in status.queues:
        failed = f"[red]{q.failed}[/]" if q.failed else "0"
        workers = f"[yellow]{q.workers}[/]" if q.workers == 0 else str(q.workers)
        queues.add_row(escape(q.name), str(q.queued), str(q.started), failed, workers)
    parts: list[Table | str] = [nodes]
    if compact:
        parts += [f"[bold yellow]paused:[/] {escape(n.name)} ({escape(n.paused)})" for n in status.nodes
                  if n.paused and n.up]
    parts.append(queues)
    share = status.share
    if share is not None:
        parts.append(
            f"NAS share {escape(share.path)} (seen from {escape(share.node)}): "
            f"{human_bytes(share.free)} free of {human_bytes(share.total)} "
            f"({_coloured(f'{share.percent:.0f}%', share.level)} used)"
        )
    if status.down:
        parts.append(f"[bold red]down:[/] {escape(', '.join(status.down))}")
    if len(status.versions) > 1:
        parts.append(
            "[bold yellow]workers run different piblade versions:[/] "
            + "; ".join(f"{escape(v)} on {escape(', '.join(names))}" for v, names in status.versions.items())
            + " [dim](an upgrade is under way, or a node missed one: `piblade provision` brings them all level)[/]"
        )
    lost = status.lost_workers
    if lost:
        parts.append(
            f"[bold red]lost worker processes:[/] {escape(', '.join(lost))} "
            "[dim](their supervisor started new ones; a task they held goes back to the queue within about 40 s)[/]"
        )
    return Group(*parts)


HELP = ("Show every node (up/down, temperature, throttling, CPU, memory, disk, jobs), queues and the NAS share. "
        "Exits 1 when a node of the inventory (-i) is down.")


def _every(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value >= 0.2:
        raise argparse.ArgumentTypeError(f"must be at least 0.2 seconds, not {text!r}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="piblade status", usage="%(prog)s [OPTIONS]", description=HELP)
    parser.add_argument("-w", "--watch", action="store_true", help="Refresh in place until Ctrl-C.")
    parser.add_argument("--every", type=_every, default=2.0, help="Seconds between refreshes with --watch "
                        "(at least 0.2; default 2).")
    add_common(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """`piblade status`, parsed without Typer (see :mod:`piblade.cli.entry`)."""
    args = build_parser().parse_args(argv)
    from piblade.clusterstatus import gather
    from piblade.context import resolve_cluster
    from piblade.redisconn import connect

    where = resolve_cluster(args.inventory)
    cluster = where.inventory
    conn = connect(where.redis_target())
    snapshot = gather(conn, cluster)
    if not args.watch:
        if args.as_json:
            print_json(snapshot.to_dict())
        else:
            console.print(render(snapshot))
        return 1 if snapshot.down else 0
    try:
        if args.as_json:  # one JSON document per line, for scripts that follow along
            while True:
                sys.stdout.write(json.dumps(snapshot.to_dict(), sort_keys=True, default=str) + "\n")
                sys.stdout.flush()
                time.sleep(args.every)
                snapshot = gather(conn, cluster)
        from rich.live import Live

        with Live(render(snapshot), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(args.every)
                snapshot = gather(conn, cluster)
                live.update(render(snapshot), refresh=True)
    except KeyboardInterrupt:
        pass
    return 1 if snapshot.down else 0


def register(app: typer.Typer) -> None:
    register_passthrough(app, "status", main, HELP)
