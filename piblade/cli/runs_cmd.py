"""`piblade runs`: run history from the results database, kept after Redis forgot the runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from piblade.cli.common import InventoryOption, JsonOption
from piblade.cli.output import console, print_json

if TYPE_CHECKING:
    from piblade.history import AttemptRow, RunSummary

app = typer.Typer(help="Run history, kept in the cluster's PostgreSQL.", no_args_is_help=True)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%m-%d %H:%M:%S", time.localtime(epoch))


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _temp(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@app.command("list")
def list_runs(
    job: str = typer.Option(None, "--job", "-j", help="Only runs of this job."),
    since: str = typer.Option(None, "--since", help="Only runs submitted since an age (12h, 7d) or a date."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10000, help="At most this many runs, newest first."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
) -> None:
    """List recorded runs, newest first."""
    from piblade import resultsdb
    from piblade.context import resolve_cluster
    from piblade.history import parse_since

    after = parse_since(since, time.time()) if since else None
    cluster = resolve_cluster(inventory)
    with resultsdb.connect(cluster.results_target()) as db:
        found = resultsdb.list_runs(db, job=job, since=after, limit=limit)
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    if not found:
        console.print("no runs recorded" + (f" for job {job}" if job else "") + (f" since {since}" if since else ""))
        return
    table = Table(box=None, pad_edge=False)
    for name, justify in (("RUN", "left"), ("JOB", "left"), ("SUBMITTED", "left"), ("STATE", "left"),
                          ("TASKS", "right"), ("SECONDS", "right"), ("MAX °C", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in found:
        table.add_row(run.id, run.job, _when(run.submitted), run.state, f"{run.done}/{run.expected}",
                      _secs(run.seconds), _temp(run.max_temp_c))
    console.print(table)


@app.command("show")
def show_run(
    run_id: str = typer.Argument(..., help="A run id, as `piblade runs list` shows it."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
) -> None:
    """One recorded run with every attempt of its tasks: where, when, how hot, and why it failed."""
    from piblade import resultsdb
    from piblade.context import resolve_cluster
    from piblade.errors import NotFound

    cluster = resolve_cluster(inventory)
    with resultsdb.connect(cluster.results_target()) as db:
        found = resultsdb.show_run(db, run_id)
    if found is None:
        raise NotFound(f"no run {run_id!r} in the run history", hint="`piblade runs list` shows recorded runs")
    run, attempts = found
    if as_json:
        print_json({**run.to_dict(), "attempts": [a.to_dict() for a in attempts]})
        return
    _render(run, attempts)


def _render(run: RunSummary, attempts: list[AttemptRow]) -> None:
    from piblade.healthmodel import decode_throttled

    params = " ".join(f"{k}={v}" for k, v in sorted(run.params.items()))
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    for label, value in (
        ("run", f"{run.id}  {run.job}  {params}"),
        ("state", (f"{run.state}: {run.done}/{run.expected} tasks done, {run.failed} failed, "
                  f"{run.attempts} attempts")),
        ("submitted", f"{_when(run.submitted)}  started {_when(run.started)}  ended {_when(run.ended)}"),
        ("took", f"{_secs(run.seconds)} s on {', '.join(run.nodes) or '-'}, "
                 + (f"max {run.max_temp_c:.1f} °C" if run.max_temp_c is not None else "no temperature readings")),
        ("piblade", run.piblade or "-"),
    ):
        head.add_row(label, value)
    console.print(head)
    table = Table(box=None, pad_edge=False)
    for name, justify in (("TASK", "left"), ("TRY", "right"), ("STATE", "left"), ("WORKER", "left"),
                          ("SECONDS", "right"), ("MAX °C", "right"), ("THROTTLED", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    errors = []
    for a in attempts:
        flags = ", ".join(decode_throttled(a.throttled).labels()) if a.throttled else "-"
        table.add_row(a.task_id.removeprefix(run.id + "-"), str(a.attempt), a.state, a.worker,
                      _secs(a.seconds), _temp(a.max_temp_c), flags)
        if a.error:
            errors.append((a, a.error))
    console.print(table)
    for a, error in errors:
        console.print(f"[bold]{a.task_id} try {a.attempt}[/bold] ({a.state}):")
        for line in error.splitlines():
            console.print(f"  {line}", markup=False)


def register_recorder(root: typer.Typer) -> None:
    @root.command(hidden=True)
    def recorder(
        batch: int = typer.Option(5000, "--batch", min=1, max=100_000, help="Records per COPY."),
        inventory: Path = InventoryOption,
    ) -> None:
        """Drain the run records waiting in Redis into the results database (a service: runs until stopped)."""
        import logging
        import signal
        import threading

        from piblade import recorder as rec
        from piblade.context import resolve_cluster

        logging.getLogger("piblade").setLevel(logging.INFO)
        cluster = resolve_cluster(inventory)
        config = rec.RecorderConfig(cluster.redis_target(), cluster.results_target(), batch)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        raise typer.Exit(rec.run(config, stop))
