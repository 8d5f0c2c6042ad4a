"""`piblade jobs`: list registered jobs, follow, cancel and retry runs."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from piblade.cli.common import InventoryOption, JsonOption, open_redis
from piblade.cli.output import console, print_json

app = typer.Typer(help="Registered jobs and their runs.", no_args_is_help=True)


@app.command("list")
def list_jobs(as_json: bool = JsonOption) -> None:
    """Show every registered job with its parameters."""
    from piblade.registry import REQUIRED, load_registry

    registry = load_registry()
    if as_json:
        print_json([
            {"name": s.name, "summary": s.summary, "fan_out": s.split is not None, "reduce": s.reduce is not None,
             "params": [{"name": p.name, "type": p.type_name, "default": None if p.default is REQUIRED else p.default,
                         "required": p.required, "bounds": p.describe_bounds(), "help": p.help} for p in s.params]}
            for s in registry
        ])
        return
    from rich.padding import Padding
    from rich.text import Text

    # Grids, so a line that wraps goes on under its own text (not back at column 0) in any width.
    for spec in registry:
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True)
        head.add_column()
        head.add_row(Text(f"{spec.name} —", style="bold"), Text(spec.summary))
        console.print(head)
        params = Table.grid(padding=(0, 1))
        params.add_column(no_wrap=True)
        params.add_column()
        for p in spec.params:
            default = "required" if p.required else f"default {p.default!r}"
            bounds = f", {p.describe_bounds()}" if p.describe_bounds() else ""
            params.add_row(Text(f"{p.name}:"), Text(f"{p.type_name} ({default}{bounds}) {p.help}"))
        console.print(Padding(params, (0, 0, 0, 4), expand=False))


@app.command("status")
def status(
    run_id: str = typer.Argument(None, help="A run id (or a task id); omit to list recent runs."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
) -> None:
    """Show recent runs, or one run (or task) in detail."""
    from piblade import dispatch, runs
    from piblade.cli.submit_cmd import render_status
    from piblade.context import resolve_cluster
    from piblade.errors import NotFound

    cluster = resolve_cluster(inventory)
    conn = open_redis(cluster)
    if run_id is None:
        statuses = [dispatch.run_status(conn, r.id, details=False) for r in runs.recent_runs(conn)]
        if as_json:
            print_json([s.to_dict() for s in statuses])
            return
        table = Table("run", "job", "state", "done", "failed", "total", "age", "output")
        for s in statuses:
            table.add_row(s.run.id, s.run.job, s.state, str(s.done), str(s.failed), str(s.run.total),
                          f"{time.time() - s.run.created:.0f}s", s.run.output or "")
        console.print(table)
        return
    try:
        st = dispatch.run_status(conn, run_id)
    except NotFound:
        info = dispatch.task_status(conn, run_id)
        if as_json:
            print_json(info)
        else:
            for key, value in info.items():
                if key == "traceback":
                    console.print(f"{key}:\n{value}", markup=False)
                else:
                    console.print(f"{key}: {value}", markup=False)
        return
    if as_json:
        print_json(st.to_dict())
    else:
        render_status(st, cluster)


@app.command("cancel")
def cancel(
    run_id: str = typer.Argument(...),
    running: bool = typer.Option(False, "--running", help="Also stop the tasks that have started "
                                 "(each stops at its next return to Python, between kernel chunks)."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
) -> None:
    """Cancel the tasks of a run that have not started yet (and with --running, stop those that have)."""
    from piblade import dispatch
    from piblade.context import resolve_cluster

    result = dispatch.cancel(open_redis(resolve_cluster(inventory)), run_id, running=running)
    if as_json:
        print_json({"run": run_id, **result})
        return
    line = f"run {run_id}: {result['canceled']} task(s) canceled"
    if result["stopping"]:
        line += f", {result['stopping']} running task(s) told to stop"
    if result["running"]:
        line += f", {result['running']} running will finish" + ("" if running else " (--running stops them)")
    console.print(line)


@app.command("retry")
def retry(run_id: str = typer.Argument(...), inventory: Path = InventoryOption) -> None:
    """Re-queue the failed tasks of a run."""
    from piblade import dispatch
    from piblade.context import resolve_cluster

    count = dispatch.retry(open_redis(resolve_cluster(inventory)), run_id)
    console.print(f"run {run_id}: {count} task(s) re-queued" if count else f"run {run_id}: nothing failed")
