"""`piblade local`: a real redis-server and workers on this machine, no Pis needed."""

from __future__ import annotations

from pathlib import Path

import typer

from piblade.cli.common import JsonOption
from piblade.cli.output import console, err_console, print_json

app = typer.Typer(help="The local cluster: redis-server and workers on this machine.", no_args_is_help=True)


@app.command("up")
def up(
    workers: int = typer.Option(2, "--workers", "-n", min=1, help="Worker processes."),
    queues: str = typer.Option("default", "--queues", "-q", help="Comma-separated queues."),
) -> None:
    """Start the local cluster (harmless when it already runs)."""
    from piblade import local

    paths = local.LocalPaths.default()
    with err_console.status("starting the local cluster") as spinner:
        config, started = local.up(
            workers, tuple(q for q in queues.split(",") if q), on_wait=lambda p: spinner.update(p)
        )
    if started:
        console.print(f"local cluster up: redis 127.0.0.1:{config.port}, {config.workers} worker(s), state in {paths.root}")
        if config.pg_port:
            console.print(f"run history: PostgreSQL on 127.0.0.1:{config.pg_port} (`piblade runs list`)")
    else:
        console.print(f"local cluster already running (pid {config.pid}, redis 127.0.0.1:{config.port})")


@app.command("down")
def down() -> None:
    """Stop the local cluster; running jobs finish first."""
    from piblade import local

    if local.down():
        console.print("local cluster stopped")
    else:
        console.print("no local cluster was running")


@app.command("status")
def status(as_json: bool = JsonOption) -> None:
    """Show the local cluster's processes, workers and queues."""
    from piblade import local

    info = local.status()
    if as_json:
        print_json(info)
    elif info.get("daemon") == "dead":
        console.print(
            f"local cluster: daemon dead, {len(info['leftovers'])} leftover process(es) still running"
            " — run `piblade local down`"
        )
    elif not info["running"]:
        console.print("local cluster: not running (start it with `piblade local up`)")
    else:
        console.print(f"local cluster: running (pid {info['pid']}), redis {info['redis']}, data in {info['data_dir']}")
        if "results" in info:
            console.print(f"  run history: {info['results']}, {info.get('records_waiting', 0)} record(s) waiting")
        for name, q in info.get("queues", {}).items():
            console.print(f"  queue {name}: {q['queued']} queued, {q['failed']} failed")
        for w in info.get("workers", []):
            console.print(f"  worker {w['name']}: {w['state']}" + (f" ({w['job']})" if w["job"] else ""))
    if not info["running"]:
        raise typer.Exit(3)


@app.command("run", hidden=True)
def run(root: Path = typer.Option(None, "--root", help="State directory of this cluster.")) -> None:
    """The daemon behind `local up` (internal)."""
    from piblade import local

    paths = local.LocalPaths(root) if root else local.LocalPaths.default()
    raise typer.Exit(local.Daemon(paths).run())
