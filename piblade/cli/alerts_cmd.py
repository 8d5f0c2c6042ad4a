"""`piblade alerts` (targets, a test notice, what is firing) and `piblade alertd` (the service)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from piblade.cli.common import InventoryOption, JsonOption, open_redis
from piblade.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from piblade.alertconfig import AlertConfig
    from piblade.context import ClusterContext

app = typer.Typer(help="Alerts that reach your phone: targets, a test notice, what is firing now.",
                  no_args_is_help=True)


def _config(ctx: ClusterContext) -> AlertConfig:
    from piblade import alertconfig

    if ctx.inventory is not None:
        return alertconfig.from_cluster(ctx.inventory)
    return alertconfig.read_config(ctx.paths.root)


def _read_url(prompt: str) -> str:
    """The URL from stdin when it is piped, else from a prompt that does not echo: never from argv."""
    from piblade.alertconfig import MAX_URL

    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.read(MAX_URL + 2)


@app.command("set-target")
def set_target(
    name: str = typer.Argument(None, help="The target's name, as piblade_alert_targets lists it (e.g. phone)."),
    deadman: bool = typer.Option(False, "--deadman", help="Set the dead-man URL (an http(s) endpoint pinged "
                                 "while the alert service works) instead of a target."),
    remove: bool = typer.Option(False, "--remove", help="Remove the target (or, with --deadman, the dead-man URL)."),
    inventory: Path = InventoryOption,
) -> None:
    """Store a target's Apprise URL in the cluster's 0600 secrets; the URL is read from stdin or a prompt."""
    from piblade import alertconfig, notify
    from piblade.context import resolve_cluster
    from piblade.errors import PibladeError

    ctx = resolve_cluster(inventory)
    secrets_dir = ctx.secrets_dir
    if not deadman and not name:
        raise PibladeError("name the target to set", hint="e.g. `piblade alerts set-target phone`")
    if remove:
        if deadman:
            alertconfig.set_deadman(secrets_dir, None)
            console.print("dead-man URL removed")
        elif alertconfig.remove_target(secrets_dir, name):
            console.print(f"target {name} removed")
        else:
            raise PibladeError(f"there is no target {name!r}", hint="`piblade alerts list` shows the targets")
        return
    if not deadman:
        alertconfig.check_name(name)
    url = alertconfig.check_url_text(_read_url("dead-man URL: " if deadman else f"Apprise URL for {name}: "))
    if deadman:
        if not url.startswith(("http://", "https://")):
            raise PibladeError("the dead-man URL must start with http:// or https://",
                               hint="e.g. the ping URL healthchecks.io gives a check")
        alertconfig.set_deadman(secrets_dir, url)
        console.print(f"dead-man URL set (host {_host(url)}), stored in "
                      f"{alertconfig.targets_file(secrets_dir)}")
        return
    where = notify.describe(url)
    alertconfig.set_target(secrets_dir, name, url)
    console.print(f"target {name} set: {escape(where)} (stored in {alertconfig.targets_file(secrets_dir)}, mode 0600)")
    config = _config(ctx)
    if config.targets is not None and name not in config.targets:
        err_console.print(f"[yellow]note:[/] the inventory's piblade_alert_targets does not list {name}: "
                          "it gets no alerts until it does")


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"


@app.command("test")
def test(inventory: Path = InventoryOption, as_json: bool = JsonOption) -> None:
    """Send one test notice to every target and report each result (exit 1 if any failed)."""
    from piblade import alertconfig, notify
    from piblade.context import resolve_cluster
    from piblade.errors import PibladeError

    ctx = resolve_cluster(inventory)
    config = _config(ctx)
    targets = alertconfig.selected(config, alertconfig.load_targets(ctx.secrets_dir), ctx.secrets_dir)
    if not targets:
        raise PibladeError("no alert targets are set",
                           hint="store one with `piblade alerts set-target phone` (it reads the Apprise URL from stdin)")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    title = f"[{config.cluster}] test notice"
    body = f"A test notice from piblade (cluster {config.cluster}, {stamp}): alerts reach this target."
    results = [notify.send(name, url, title, body) for name, url in targets]
    if as_json:
        print_json({"cluster": config.cluster, "results": [r.to_dict() for r in results]})
    else:
        for r in results:
            if r.ok:
                console.print(f"[green]sent[/]   {r.target}: {escape(r.where)} ({r.seconds:.2f}s)")
            else:
                console.print(f"[red]failed[/] {r.target}: {escape(r.where)}: {escape(r.error or '')}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command("list")
def list_alerts(inventory: Path = InventoryOption, as_json: bool = JsonOption) -> None:
    """What is firing now, which alert service is active, the targets and the last notices."""
    from piblade.context import resolve_cluster

    ctx = resolve_cluster(inventory)
    conn = open_redis(ctx)
    try:
        info = alerts_snapshot(conn, ctx)
    finally:
        conn.close()
    if as_json:
        print_json(info)
        return
    active = info["active"] or "none (is `piblade alertd` running?)"
    console.print(f"alert service: {escape(active)}; targets: {', '.join(info['targets']) or 'none set'}")
    if not info["firing"]:
        console.print("nothing is firing")
    for item in info["firing"]:
        console.print(f"[red]firing[/] {escape(item['summary'])} (since {item['since']}, {item['key']})")
    for item in info["outbox"]:
        console.print(f"[yellow]not yet delivered[/] {escape(item['title'])} to {', '.join(item['pending'])}"
                      + (f": {escape('; '.join(item['errors'].values()))}" if item["errors"] else ""))


def alerts_snapshot(conn: Any, ctx: ClusterContext) -> dict[str, Any]:
    """What `alerts list` shows (and the dashboard's panel): firing episodes, outbox, leader, targets."""
    from piblade import alertconfig, alertstore

    firing = sorted(alertstore.firing(conn).values(), key=lambda e: e.started)
    try:
        targets = [n for n, _ in alertconfig.selected(_config(ctx), alertconfig.load_targets(ctx.secrets_dir),
                                                      ctx.secrets_dir)]
    except alertconfig.AlertConfigError as exc:
        targets = [f"(error: {exc.message})"]
    return {
        "active": alertstore.leader(conn),
        "targets": targets,
        "firing": [{**e.to_dict(), "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e.started))}
                   for e in firing],
        "outbox": [{"id": n.id, "title": n.title, "pending": list(n.pending), "errors": dict(n.errors),
                    "attempts": n.attempts} for n in alertstore.outbox(conn)],
        "sent": alertstore.sent(conn, 10),
    }


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="alerts")

    @root.command("alertd")
    def alertd(
        root_dir: Path = typer.Option(None, "--root", help="State directory of the cluster (set by its supervisor)."),
        inventory: Path = InventoryOption,
    ) -> None:
        """Run the alert service: one active per cluster, the others stand by."""
        from piblade import alertconfig
        from piblade import alertd as service
        from piblade.context import resolve_cluster
        from piblade.redisconn import target_from_env

        logging.getLogger("piblade").setLevel(logging.INFO)
        interval = service.interval_from_env()
        if root_dir is not None:
            target = target_from_env()
            if target is None:
                from piblade import local

                target = local.target(local.LocalPaths(root_dir))
            if target is None:
                from piblade.errors import PibladeError

                raise PibladeError(f"no Redis for the cluster in {root_dir}",
                                   hint="set PIBLADE_REDIS_URL and PIBLADE_REDIS_PASSWORD_FILE")
            svc = service.service_for_root(root_dir, target, interval)
        else:
            ctx = resolve_cluster(inventory)
            config = alertconfig.from_cluster(ctx.inventory) if ctx.inventory is not None else None
            svc = service.AlertService(
                ctx.redis_target(),
                (lambda: config) if config is not None else (lambda: alertconfig.read_config(ctx.paths.root)),
                ctx.secrets_dir, interval=interval)
        raise typer.Exit(svc.run())
