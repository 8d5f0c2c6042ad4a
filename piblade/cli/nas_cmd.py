"""`piblade nas`: the cluster's share from the controller — ls, put, get, rm, mkdir, df.

Which share, and where the password comes from, is documented in
:mod:`piblade.nas` (``--server``/env, else the inventory's nas node, else the
local cluster's data directory). There is deliberately no ``--password``.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from piblade.cli.common import InventoryOption, JsonOption
from piblade.cli.output import console, err_console, print_json
from piblade.healthmodel import human_bytes as human

app = typer.Typer(help="The NAS share: list, copy files and trees both ways, remove, disk usage.",
                  no_args_is_help=True)

ServerOption = typer.Option(None, "--server", help="SMB server HOST[:PORT] (default: the inventory's nas node).",
                            envvar="PIBLADE_SMB_SERVER", show_envvar=True)
ShareOption = typer.Option(None, "--share", help="Share name (default: the nas node's piblade_share, or 'piblade').",
                           envvar="PIBLADE_SMB_SHARE", show_envvar=True)
UserOption = typer.Option(None, "--user", help="SMB user (default 'piblade'). The password is never an option: "
                          "PIBLADE_SMB_PASSWORD_FILE, PIBLADE_SMB_PASSWORD or the cluster's secret.",
                          envvar="PIBLADE_SMB_USER", show_envvar=True)
NoEncryptOption = typer.Option(False, "--no-encrypt", help="Accept an unencrypted SMB3 session (trusted LAN only).")
ChecksumOption = typer.Option(False, "--checksum", help="Compare SHA-256 instead of size + time to skip files.")


@contextmanager
def _share(inventory: Path | None, server: str | None, share: str | None, user: str | None,
           no_encrypt: bool) -> Iterator[Any]:
    from piblade.context import resolve_cluster
    from piblade.nas import open_share

    with open_share(resolve_cluster(inventory), server=server, share=share, user=user,
                    encrypt=not no_encrypt) as opened:
        # Everything loaded so far (CLI, SMB stack) lives until exit: keep the cyclic garbage
        # collector from walking it again during a transfer and once more at exit (~50 ms).
        gc.freeze()
        yield opened


@contextmanager
def transfer_progress(label: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar with the transfer rate on stderr; nothing when ``quiet`` (--json, nothing to copy)."""
    if quiet:
        yield lambda _n: None
        return
    with Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=False) as progress:
        bar = progress.add_task(label, total=total)
        yield lambda n: progress.advance(bar, n)


def _summary(report: Any, where: str) -> str:
    rate = f" ({human(report.rate)}/s)" if report.bytes else ""
    resumed = f", {human(report.resumed)} kept from an interrupted copy" if report.resumed else ""
    return (f"{report.direction} {where}: {report.copied} file(s) copied ({human(report.bytes)}{resumed}), "
            f"{report.skipped} already there, in {report.seconds:.2f}s{rate}")


class _Stop:
    """Ctrl-C, SIGTERM (systemd, kill) and SIGHUP (a closed terminal) stop a copy the same way.

    While bytes are moving, a signal only asks to stop: the copy stops after the
    request in flight is answered (:meth:`check`, called between requests), so no
    half-sent frame is left on the SMB connection and the part and its resume
    record stay consistent. A second signal, or one outside a transfer, stops at once.
    """

    def __init__(self) -> None:
        self.transferring = False
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.transferring and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def watching(self, progress: Callable[[int], None]) -> Callable[[int], None]:
        def step(n: int) -> None:
            progress(n)
            self.check()

        return step


@contextmanager
def _stoppable(direction: str) -> Iterator[_Stop]:
    import signal

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    except KeyboardInterrupt:
        err_console.print(f"{direction} interrupted: what was copied is kept; run the same command again to resume",
                          highlight=False)
        raise typer.Exit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("ls")
def ls(
    path: str = typer.Argument("", help="Directory or file on the share (default: its root)."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """List a directory on the share."""
    from piblade.nas.errors import RemoteNotFound
    from piblade.nas.paths import is_temp_name, share_path

    target = share_path(path)
    with _share(inventory, server, share, user, no_encrypt) as opened:
        entry = opened.stat(target) if target else None
        if target and entry is None:
            raise RemoteNotFound(f"{target}: no such file or directory on {opened.description}")
        entries = [entry] if entry is not None and not entry.is_dir else opened.scandir(target)
        # Parts of copies in progress (or interrupted, to be resumed) are not files of the share.
        entries = [e for e in entries if not is_temp_name(e.name)]
        entries.sort(key=lambda e: (not e.is_dir, e.name))
        if as_json:
            print_json([e.to_dict() for e in entries])
            return
        table = Table("name", "size", "modified", box=None, header_style="bold")
        for e in entries:
            when = dt.datetime.fromtimestamp(e.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
            table.add_row(e.name + ("/" if e.is_dir else ""), "" if e.is_dir else human(e.size), when)
        console.print(table)


@app.command("put")
def put(
    local: Path = typer.Argument(..., help="Local file or directory."),
    dest: str = typer.Argument(None, help="Where on the share (default: its root, under the same name)."),
    checksum: bool = ChecksumOption,
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """Copy a file or a whole directory to the share; files already there are skipped."""
    from piblade.nas import transfer

    with _stoppable("put") as stop, _share(inventory, server, share, user, no_encrypt) as opened:
        plan = transfer.plan_put(opened, local, dest, checksum=checksum)
        with transfer_progress("put", plan.bytes_to_copy, as_json or not plan.to_copy) as progress:
            stop.transferring = True
            report = transfer.run_put(opened, plan, stop.watching(progress))
            stop.transferring = False
        where = f"{local} → {opened.description}/{plan.files[0].dest if len(plan.files) == 1 else plan.dirs[0]}" \
            if plan.files or plan.dirs else str(local)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(_summary(report, where), markup=False, soft_wrap=True)


@app.command("get")
def get(
    remote: str = typer.Argument(..., help="File or directory on the share."),
    local: Path = typer.Argument(None, help="Where to put it (default: here, under the same name)."),
    checksum: bool = ChecksumOption,
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """Copy a file or a whole directory from the share; files already here are skipped."""
    from piblade.nas import transfer

    with _stoppable("get") as stop, _share(inventory, server, share, user, no_encrypt) as opened:
        plan = transfer.plan_get(opened, remote, local, checksum=checksum)
        with transfer_progress("get", plan.bytes_to_copy, as_json or not plan.to_copy) as progress:
            stop.transferring = True
            report = transfer.run_get(opened, plan, stop.watching(progress))
            stop.transferring = False
        where = f"{opened.description}/{remote.lstrip('/')} → {plan.dirs[0] if plan.dirs else plan.files[0].dest}"
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(_summary(report, where), markup=False, soft_wrap=True)


@app.command("rm")
def rm(
    paths: list[str] = typer.Argument(..., help="Files (or with -r directories) on the share."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Remove directories and their contents."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """Remove files or directories from the share."""
    from piblade.nas import transfer

    removed: dict[str, int] = {}
    with _share(inventory, server, share, user, no_encrypt) as opened:
        for path in paths:
            removed[path] = transfer.remove(opened, path, recursive=recursive)
    if as_json:
        print_json({"removed": removed})
    else:
        for path, count in removed.items():
            console.print(f"removed {path} ({count} file(s))", markup=False)


@app.command("mkdir")
def mkdir(
    path: str = typer.Argument(..., help="Directory to create on the share (parents too)."),
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """Create a directory (and its parents) on the share; harmless if it exists."""
    from piblade.nas.paths import share_path

    target = share_path(path)
    with _share(inventory, server, share, user, no_encrypt) as opened:
        opened.makedirs(target)
    if as_json:
        print_json({"created": target})
    else:
        console.print(f"created {target or '/'}", markup=False)


@app.command("df")
def df(
    as_json: bool = JsonOption,
    inventory: Path = InventoryOption,
    server: str = ServerOption,
    share: str = ShareOption,
    user: str = UserOption,
    no_encrypt: bool = NoEncryptOption,
) -> None:
    """Disk space of the share: total, used, free."""
    with _share(inventory, server, share, user, no_encrypt) as opened:
        usage = opened.disk_usage()
        info: dict[str, Any] = {"share": opened.description, "encrypted": opened.encrypted, **usage.to_dict()}
    if as_json:
        print_json(info)
        return
    console.print(f"{info['share']}: {human(usage.used)} used of {human(usage.total)} ({info['percent']}%), "
                  f"{human(usage.free)} free", markup=False)
