"""`piblade submit`: validate, fan out, and optionally wait with a progress bar.

Parsed with argparse, not Typer, for its start-up time (:mod:`piblade.cli.entry`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.cli.argparsing import ArgumentParser, add_common, register_passthrough
from piblade.cli.output import console, err_console, print_json
from piblade.errors import BadParameter

if TYPE_CHECKING:
    import typer

    from piblade.context import ClusterContext


#: The largest file `--param KEY=@FILE` reads.
PARAM_FILE_MAX = 64 * 1024


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs; ``KEY=@FILE`` takes the value from a local text file (e.g. a long schema)."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadParameter(f"--param {pair!r} is not KEY=VALUE", hint="for example --param width=800")
        if key.strip() in params:
            raise BadParameter(f"--param {key.strip()!r} is given twice")
        params[key.strip()] = _from_file(key.strip(), value[1:]) if value.startswith("@") else value
    return params


def _from_file(key: str, name: str) -> str:
    path = Path(name).expanduser()
    try:
        if path.stat().st_size > PARAM_FILE_MAX:
            raise BadParameter(f"--param {key}=@{name}: the file is larger than {PARAM_FILE_MAX // 1024} KiB",
                               hint="a parameter file holds a value, such as a schema, not data")
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadParameter(f"--param {key}=@{name}: cannot read the file ({exc.__class__.__name__})",
                           hint="give the path of a local UTF-8 text file after the @") from None


def render_status(status: Any, cluster: ClusterContext) -> None:
    from piblade.dispatch import RunStatus

    assert isinstance(status, RunStatus)
    colour = {"finished": "green", "failed": "red"}.get(status.state, "yellow")
    took = f" in {status.seconds:.2f}s" if status.seconds is not None else ""
    console.print(
        f"run [bold]{status.run.id}[/] ({status.run.job}): [{colour}]{status.state}[/]{took} — "
        f"{status.done}/{status.run.total} tasks done, {status.failed} failed"
    )
    if status.nodes:
        console.print("ran on: " + ", ".join(f"{n} ({c})" for n, c in sorted(status.nodes.items())))
    for failure in status.failures:
        console.print(f"[red]task {failure.job_id} failed:[/] {failure.summary}")
        tail = failure.traceback.strip().splitlines()[-6:]
        console.print("\n".join("    " + line for line in tail), markup=False, highlight=False)
    if status.result is not None:
        console.print("result: " + json.dumps(status.result, sort_keys=True), markup=False)
    where = cluster.output_location(status.run.output)
    if where:
        console.print(f"output: {where}")


#: Where `submit --input DIR` puts DIR on the share: inputs/<DIR's name>/.
INPUTS_DIR = "inputs"


def resolve_over(
    cluster: ClusterContext, over: str | None, input_dir: Path | None, *, quiet: bool
) -> tuple[str, dict[str, int]]:
    """Upload ``input_dir`` (if given) and expand the glob on the share; return (pattern, {share path: size}).

    The share is the one `piblade nas` would use (see piblade.nas); the SMB
    session lives only for this call, in this process.
    """
    from piblade.cli.nas_cmd import human, transfer_progress
    from piblade.nas import open_share, pattern, transfer
    from piblade.nas.paths import join, pattern_parts

    base = ""
    if input_dir is not None:
        base = join(INPUTS_DIR, input_dir.resolve().name)
    full = join(base, over or "**")
    pattern_parts(full)  # refuse '..' before connecting
    with open_share(cluster) as share:
        if input_dir is not None:
            plan = transfer.plan_put(share, input_dir, base)
            with transfer_progress("upload", plan.bytes_to_copy, quiet or not plan.to_copy) as progress:
                report = transfer.run_put(share, plan, progress)
            if not quiet:
                err_console.print(f"uploaded {input_dir} to {base}/ on {share.description}: {report.copied} file(s) "
                                  f"({human(report.bytes)}), {report.skipped} already there", markup=False)
        sizes = {e.path: e.size for e in pattern.expand(share, full)}
    if not quiet:
        err_console.print(f"{full}: {len(sizes)} file(s) on the share", markup=False)
    return full, sizes


def check_share_inputs(cluster: ClusterContext, spec: Any, params: dict[str, Any]) -> None:
    """Refuse a run whose input files are not on the share, when the share can be reached from here.

    When it cannot (no NAS address known, the NAS down), say so and go on: the
    workers, which have their own mount, are the final judges.
    """
    from piblade.errors import PibladeError
    from piblade.inputs import check_inputs, input_paths

    if not input_paths(spec, params):
        return
    from piblade.nas import open_share

    try:
        with open_share(cluster) as share:
            check_inputs(share, spec, params)
    except BadParameter:
        raise
    except PibladeError as exc:
        from rich.markup import escape

        err_console.print(f"[yellow]warning:[/] could not check the input file(s) on the share "
                          f"({escape(exc.message)}); submitting anyway", highlight=False)


#: How long `submit --wait` waits for the run history to have every task before it makes the report.
HISTORY_WAIT = 20.0


def make_report(cluster: ClusterContext, run_id: str, *, quiet: bool) -> str | None:
    """The run's report page, made when the run ends; a run that worked is not failed by its report."""
    from piblade.errors import PibladeError
    from piblade.report.make import write_report

    try:
        return write_report(cluster, run_id, wait=HISTORY_WAIT)
    except (PibladeError, OSError) as exc:
        if not quiet:
            from rich.markup import escape

            message = exc.message if isinstance(exc, PibladeError) else f"{exc.__class__.__name__}: {exc}"
            hint = exc.hint if isinstance(exc, PibladeError) else None
            err_console.print(f"[yellow]warning:[/] no report for this run: {escape(message)}"
                              + (f" ({escape(hint)})" if hint else ""), highlight=False)
        return None


HELP = ("Submit a job; a fan-out job becomes one task per tile/part (or per file with --over), "
        "enqueued in one batch.")


def _input_dir(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"directory {text!r} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="piblade submit", usage="%(prog)s [OPTIONS] JOB", description=HELP)
    parser.add_argument("job", metavar="JOB", help="Registered job name (see `piblade jobs list`).")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="KEY=VALUE, repeatable.")
    parser.add_argument("-q", "--queue", default="default", help="Queue to put the tasks on (default: default).")
    parser.add_argument("--timeout", type=int, default=None, help="Seconds each task may run (default: the job's).")
    parser.add_argument("--retries", type=int, default=0, help="Re-run a failed or lost task up to N times.")
    parser.add_argument("-w", "--wait", dest="wait_", action="store_true",
                        help="Wait, show progress, print the result.")
    parser.add_argument("--over", default=None, help="Run once per file on the share matching this glob "
                        "(e.g. 'photos/**/*.jpg'); the job's `path` is set to each file.")
    parser.add_argument("--input", dest="input_dir", type=_input_dir, default=None,
                        help="Upload this local directory to inputs/<its name>/ on the share first; --over is then "
                        "relative to it (default: every file in it).")
    add_common(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """`piblade submit`, parsed without Typer (see :mod:`piblade.cli.entry`)."""
    args = build_parser().parse_args(argv)
    return submit(args.job, args.param, args.queue, args.timeout, args.retries, args.wait_, args.over,
                  args.input_dir, args.as_json, args.inventory)


def submit(job: str, param: list[str], queue: str, timeout: int | None, retries: int, wait_: bool, over: str | None,
           input_dir: Path | None, as_json: bool, inventory: Path | None) -> int:
    """Validate, enqueue and (with ``wait_``) follow a run; the exit code says whether it went well."""
    from piblade import dispatch
    from piblade.context import resolve_cluster
    from piblade.redisconn import connect
    from piblade.registry import load_registry

    registry = load_registry()
    params = parse_params(param)
    cluster = resolve_cluster(inventory)
    if over is not None or input_dir is not None:
        # Refuse a job that cannot run over files before uploading or touching Redis.
        dispatch.check_over(registry, job, params)
        conn = connect(cluster.redis_target())
        pattern, sizes = resolve_over(cluster, over, input_dir, quiet=as_json)
        record = dispatch.submit_over(conn, registry, job, params, list(sizes), pattern=pattern, sizes=sizes,
                                      queue=queue, timeout=timeout, retries=retries)
    else:
        # Validate before touching Redis: a bad parameter never needs a running cluster.
        spec = registry.get(job)
        validated = spec.validate(params)
        spec.plan(validated)
        check_share_inputs(cluster, spec, validated)
        conn = connect(cluster.redis_target())
        record = dispatch.submit(conn, registry, job, params, queue=queue, timeout=timeout, retries=retries)
    if dispatch.workers_on(conn, queue) == 0:
        err_console.print(f"[yellow]warning:[/] no worker listens on queue {queue!r}; the tasks wait until one does")
    if not wait_:
        if as_json:
            print_json({"run": record.id, "job": record.job, "tasks": record.total, "queue": record.queue,
                        "params": record.params, "output": record.output or None})
        else:
            console.print(f"submitted run [bold]{record.id}[/]: {record.job}, {record.total} task(s) on queue {queue!r}")
            console.print(f"follow it with `piblade jobs status {record.id}`")
        return 0
    started = time.monotonic()
    if as_json:
        status = dispatch.wait(conn, record.id)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn(f"[bold]{record.job}[/] {record.id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        ) as progress:
            bar = progress.add_task("run", total=record.total, failed=0, rate="")

            def show(snapshot: dispatch.RunStatus) -> None:
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(bar, completed=snapshot.done, failed=snapshot.failed,
                                rate=f"{snapshot.done / elapsed:.1f} tasks/s")

            status = dispatch.wait(conn, record.id, on_progress=show)
    where = make_report(cluster, record.id, quiet=as_json) if status.finished else None
    if as_json:
        print_json({**status.to_dict(), "report": where})
    else:
        render_status(status, cluster)
        if where:
            console.print(f"report: {where}", markup=False, highlight=False, soft_wrap=True)
    return 0 if status.ok else 1


def register(app: typer.Typer) -> None:
    register_passthrough(app, "submit", main, HELP)
