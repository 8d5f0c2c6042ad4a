"""Options and look-ups shared by command groups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from piblade.errors import ClusterError

if TYPE_CHECKING:  # redis-py costs ~50 ms to import; commands that never talk to Redis skip it
    import redis

    from piblade.redisconn import RedisTarget

InventoryOption = typer.Option(
    None, "--inventory", "-i", help="Inventory of the cluster to use (default: the local cluster).", envvar="PIBLADE_INVENTORY"
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts.")


def resolve_target(inventory: Path | None) -> RedisTarget:
    """Which Redis to talk to: PIBLADE_REDIS_URL, else the inventory's controller, else the local cluster."""
    from piblade.redisconn import RedisTarget, target_from_env

    from_env = target_from_env()
    if from_env is not None:
        return from_env
    if inventory is not None:
        from piblade.inventory import load_inventory
        from piblade.local import LocalPaths
        from piblade.state import state_dir

        cluster = load_inventory(inventory)
        controller = cluster.controller
        host = "127.0.0.1" if controller.is_local else controller.address
        return RedisTarget(
            host=host,
            port=controller.settings.redis_port,
            password_file=LocalPaths(state_dir() / "clusters" / cluster.name).password_file,
        )
    from piblade import local

    tgt = local.target()
    if tgt is None:
        raise ClusterError(
            "no cluster to talk to",
            hint="start one with `piblade local up`, or pass -i INVENTORY for a Pi cluster",
        )
    return tgt


def open_redis(inventory: Path | None) -> redis.Redis:
    from piblade.redisconn import connect

    return connect(resolve_target(inventory))
