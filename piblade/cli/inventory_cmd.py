"""`piblade inventory`: validate an inventory and show the cluster it describes.

Errors are not caught here: the root app prints a PibladeError as one red line
plus its hint and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from piblade.cli.common import InventoryFileOption
from piblade.cli.output import console, print_json
from piblade.envvars import INVENTORY
from piblade.errors import PibladeError

if TYPE_CHECKING:  # the inventory reader (PyYAML) loads only for the commands that read one
    from piblade.inventory import Cluster

app = typer.Typer(help="Check and show the cluster inventory (an Ansible YAML file).", no_args_is_help=True)


def resolve_inventory(path: Path | None) -> Cluster:
    """Load ``path`` (or ``$PIBLADE_INVENTORY``); the local cluster has no inventory to load."""
    from piblade.context import resolve_cluster

    cluster = resolve_cluster(path)
    if cluster.inventory is None:
        raise PibladeError(
            "no inventory was given",
            hint=f"pass -i FILE (see inventory/example.yml) or set {INVENTORY.name}; "
            "the local cluster (`piblade local up`) needs none",
        )
    return cluster.inventory


def _count(n: int, word: str, plural: str) -> str:
    return f"{n} {word if n == 1 else plural}"


@app.command()
def check(inventory: Path = InventoryFileOption) -> None:
    """Validate the inventory and summarise the cluster."""
    cluster = resolve_inventory(inventory)
    summary = ", ".join(
        (
            _count(1, "controller", "controllers"),
            f"{1 if cluster.nas else 0} nas",
            _count(len(cluster.workers), "worker", "workers"),
        )
    )
    console.print(f'{cluster.source}: ok — cluster "{cluster.name}": {summary}', markup=False, soft_wrap=True)


@app.command()
def show(
    inventory: Path = InventoryFileOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the nodes with their roles, address and worker settings."""
    cluster = resolve_inventory(inventory)
    if as_json:
        print_json(cluster.to_dict())
        return
    table = Table(title=escape(f'cluster "{cluster.name}" ({cluster.source})'))
    for column in ("node", "roles", "address", "user", "port", "worker processes", "queues"):
        table.add_column(column, justify="right" if column == "port" else "left", no_wrap=column in ("node", "address"))
    for node in cluster.nodes:
        is_worker = "workers" in node.roles
        processes = str(node.settings.worker_processes or "auto (cores, memory)") if is_worker else "-"
        cells = (
            node.name,
            ", ".join(sorted(node.roles)) or "-",
            node.address,
            node.user or "-",
            str(node.port),
            processes,
            ", ".join(node.settings.queues) if is_worker else "-",
        )
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
