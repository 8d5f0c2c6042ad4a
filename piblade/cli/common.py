"""Options and look-ups shared by command groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from piblade import envvars

if TYPE_CHECKING:  # redis-py costs ~50 ms to import; commands that never talk to Redis skip it
    import redis

    from piblade.context import ClusterContext

InventoryOption = typer.Option(
    None, "--inventory", "-i", envvar=envvars.INVENTORY.name, dir_okay=False,
    help="Inventory of the cluster to use (default: the local cluster).",
)
#: For the commands that only work on an inventory: provision, trust, inventory check|show.
InventoryFileOption = typer.Option(
    None, "--inventory", "-i", envvar=envvars.INVENTORY.name, dir_okay=False,
    help=f"Inventory file (default: ${envvars.INVENTORY.name}).",
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts.")


def open_redis(cluster: ClusterContext) -> redis.Redis:
    """A checked connection to the cluster's Redis (see :meth:`ClusterContext.redis_target`)."""
    from piblade.redisconn import connect

    return connect(cluster.redis_target())
