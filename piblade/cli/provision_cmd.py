"""`piblade provision` and `piblade trust`: bring nodes to their role's state over SSH."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from piblade.cli.common import InventoryFileOption
from piblade.cli.output import console, err_console, print_json

if TYPE_CHECKING:
    from piblade.inventory import Cluster
    from piblade.provision.engine import HostResult


def _inventory(path: Path | None) -> Cluster:
    from piblade.cli.inventory_cmd import resolve_inventory

    return resolve_inventory(path)


def _split(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def register(app: typer.Typer) -> None:
    @app.command()
    def provision(
        inventory: Path = InventoryFileOption,
        limit: str = typer.Option("", "--limit", "-l", help="Only these hosts (comma-separated)."),
        check: bool = typer.Option(False, "--check", help="Change nothing; report what would change."),
        diff: bool = typer.Option(False, "--diff", help="Show file differences."),
        tags: str = typer.Option("", "--tags", "-t", help="Only steps with these tags (common, nas, samba, "
                                 "workers, mount, services, venv, controller)."),
        accept_new: bool = typer.Option(False, "--accept-new", help="Trust hosts seen for the first time "
                                        "(a changed host key is still refused)."),
        as_json: bool = typer.Option(False, "--json", help="Print the recap as JSON."),
    ) -> None:
        """Provision every node of the inventory in parallel: idempotent, with a per-host recap."""
        from piblade.provision.run import Options
        from piblade.provision.run import provision as run

        cluster = _inventory(inventory)
        options = Options(check=check, tags=_split(tags), limit=_split(limit), accept_new=accept_new)
        states: dict[str, str] = {n.name: "waiting" for n in cluster.nodes
                                  if not options.limit or n.name in options.limit}
        lock = threading.Lock()

        def table() -> Table:
            t = Table("host", "status", title=("check mode: nothing is changed" if check else None))
            for host, state in states.items():
                t.add_row(host, state)
            return t

        if as_json:
            results = run(cluster, options)
        else:
            with Live(table(), console=err_console, transient=True, refresh_per_second=8) as live:
                def emit(host: str, what: str) -> None:
                    with lock:
                        states[host] = what
                        live.update(table())

                results = run(cluster, options, emit)
        if as_json:
            print_json({"check": check, "hosts": [r.to_dict() for r in results]})
        else:
            _recap(results, check, diff)
        if any(r.failed for r in results):
            raise typer.Exit(1)

    @app.command()
    def trust(
        host: str = typer.Argument(..., help="Inventory name of the node."),
        inventory: Path = InventoryFileOption,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    ) -> None:
        """Fetch a node's SSH host key, show its fingerprint and add it to known_hosts."""
        from piblade.provision.engine import target_for
        from piblade.provision.ssh import host_key_status, trust_host_key

        target = target_for(_inventory(inventory).node(host))
        key, trusted = host_key_status(target)
        if trusted:
            console.print(f"{host} ({target.host_key_name}) is already trusted: {key}")
            return
        console.print(f"{host} ({target.host_key_name}) offers {key}")
        if not yes and not typer.confirm("Trust this key?", default=False):
            raise typer.Exit(1)
        console.print(f"added to {trust_host_key(target, key)}")


def _recap(results: list[HostResult], check: bool, diff: bool) -> None:
    """Per host, what changed (or failed), then the table.

    With --check, each host's whole decided plan: what would change, and for every
    other step why nothing is needed.
    """
    for result in results:
        for step in result.steps:
            if step.status == "ok":
                if check:
                    console.print(Text(f"{result.name}: ok: {step.reason or step.name}", style="dim"))
                continue
            colour = "red" if step.status == "failed" else "yellow"
            verb = "would " if check and step.status == "changed" else ""
            console.print(f"[{colour}]{result.name}: {verb}{step.summary or step.name}[/]")
            if diff and step.diff:
                console.print(step.diff.rstrip(), markup=False, highlight=False)
            if step.status == "failed" and step.output:
                console.print("\n".join("    " + line for line in step.output.splitlines()[-15:]), markup=False)
        if result.error:
            console.print(f"[bold red]{result.name}: {result.error}[/]", markup=True)
            if result.hint:
                console.print(f"[yellow]  hint:[/] {result.hint}")
    table = Table("host", "ok", "changed", "failed", "time", "facts / notes",
                  title="PROVISION RECAP" + (" (check mode)" if check else ""))
    for r in results:
        notes = "; ".join(([r.facts.summary()] if r.facts else []) + list(r.notes))
        table.add_row(r.name, str(r.ok), f"[yellow]{r.changed}[/]" if r.changed else "0",
                      f"[red]{r.failed}[/]" if r.failed else "0", f"{r.seconds:.1f}s", notes)
    console.print(table)
    total_changed = sum(r.changed for r in results)
    total_failed = sum(r.failed for r in results)
    console.print(f"{len(results)} host(s): {sum(r.ok for r in results)} ok, {total_changed} "
                  f"{'would change' if check else 'changed'}, {total_failed} failed")


def register_wheelhouse(app: typer.Typer) -> None:
    @app.command()
    def wheelhouse(
        arch: str = typer.Option("aarch64", "--arch", help="Node architecture: aarch64 (Raspberry Pi) or x86_64."),
        python: str = typer.Option("3.11", "--python", help="Python version of the nodes (major.minor)."),
        as_json: bool = typer.Option(False, "--json", help="Print directory, manifest and wheels as JSON."),
        as_archive: bool = typer.Option(False, "--archive", help="Also pack the wheels into one tar (for Ansible)."),
    ) -> None:
        """Build (or reuse) the wheelhouse that provisioning pushes to nodes; the Ansible roles use it too."""
        from piblade.provision.wheelhouse import archive, build
        from piblade.state import state_dir

        with err_console.status(f"building the {arch} wheelhouse for Python {python}"):
            house = build(state_dir() / "wheelhouse", arch, python)
            tar = archive(house) if as_archive else None
        if as_json:
            print_json({"directory": str(house.directory), "manifest": house.manifest,
                        "requirement": house.requirement, "wheels": [w.name for w in house.wheels],
                        **({"archive": str(tar)} if tar else {})})
        else:
            size = sum(w.stat().st_size for w in house.wheels) / 2**20
            console.print(f"{house.directory}: {len(house.wheels)} wheels, {size:.0f} MiB, manifest {house.manifest}")
            if tar:
                console.print(f"archive: {tar}")
