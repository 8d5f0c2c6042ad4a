"""Which cluster a command works on, and where that cluster's state lives. Resolved once per command.

There are two kinds of cluster, and one rule for telling them apart:

* **the local cluster** — ``piblade local up`` on this machine. Every command
  means it when neither ``-i INVENTORY`` nor ``$PIBLADE_INVENTORY`` names an
  inventory. Its state is ``<state>/local``: Redis's AOF, ACL and password,
  logs, and the data directory that stands in for the NAS share.
* **an inventory's cluster** — Pis (or the testbed) described by an Ansible
  inventory. Its state is ``<state>/clusters/<name>``, ``<name>`` being the
  inventory's ``piblade_cluster_name``: the cluster's Redis on the controller,
  and the secrets provisioning generated (Redis and Samba passwords, the mount key).

``<state>`` is :func:`piblade.state.state_dir`. A :class:`ClusterContext` is
built by the CLI from its options, with the inventory loaded once, and handed
to the library code that needs to know where things are; nothing below the CLI
works out "which cluster" again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from piblade.errors import ClusterError
from piblade.inventory import INVENTORY_ENV, Cluster, load_inventory
from piblade.local import LocalPaths
from piblade.state import state_dir

if TYPE_CHECKING:
    from piblade.redisconn import RedisTarget
    from piblade.resultsdb import ResultsTarget

#: The name the local cluster goes by in messages and in ``status``.
LOCAL_CLUSTER = "local"


def cluster_state(name: str) -> LocalPaths:
    """The controller's state for the inventory cluster ``name``."""
    return LocalPaths(state_dir() / "clusters" / name)


@dataclass(frozen=True, slots=True)
class ClusterContext:
    """One cluster, as a command sees it: its inventory (None for the local cluster) and its state."""

    name: str
    paths: LocalPaths
    inventory: Cluster | None = None
    source: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.inventory is None

    @property
    def secrets_dir(self) -> Path:
        return self.paths.password_file.parent

    @property
    def samba_password_file(self) -> Path:
        """The Samba password ``piblade provision`` generated and put on the NAS node."""
        return self.secrets_dir / "samba.password"

    @property
    def results_password_file(self) -> Path:
        """The results database's password (``secrets/postgres.password``), generated like Redis's."""
        from piblade.resultsdb import PASSWORD_FILE_NAME

        return self.secrets_dir / PASSWORD_FILE_NAME

    @property
    def description(self) -> str:
        if self.inventory is None:
            return f"the local cluster (state in {self.paths.root})"
        return f'cluster "{self.name}" ({self.source})'

    def redis_target(self) -> RedisTarget:
        """Which Redis to talk to: ``$PIBLADE_REDIS_URL``, else the controller's, else the local cluster's."""
        from piblade import local
        from piblade.redisconn import RedisTarget, target_from_env

        from_env = target_from_env()
        if from_env is not None:
            return from_env
        if self.inventory is not None:
            controller = self.inventory.controller
            host = "127.0.0.1" if controller.is_local else controller.address
            return RedisTarget(host=host, port=controller.settings.redis_port, password_file=self.paths.password_file)
        target = local.target(self.paths)
        if target is None:
            raise ClusterError(
                "no cluster to talk to",
                hint="start one with `piblade local up`, or pass -i INVENTORY for a Pi cluster",
            )
        return target

    def results_target(self) -> ResultsTarget:
        """Which PostgreSQL keeps run history: ``$PIBLADE_RESULTS_URL``, else the inventory's results
        node (``piblade_results_host``, default the NAS node), else the local cluster's own server."""
        from piblade import local
        from piblade.resultsdb import ResultsTarget, target_from_env

        from_env = target_from_env()
        if from_env is not None:
            return from_env
        if self.inventory is not None:
            node = self.inventory.results_node
            host = "127.0.0.1" if node.is_local else node.address
            return ResultsTarget(host, self.inventory.results_port, password_file=self.results_password_file)
        target = local.results_target(self.paths)
        if target is None:
            raise ClusterError(
                "the local cluster has no results database yet",
                hint="start (or restart) it with `piblade local up`",
            )
        return target

    def output_location(self, output: str) -> str:
        """Where a run's output directory is, as the user can reach it."""
        if not output:
            return ""
        if self.inventory is None:
            return str(self.paths.data_dir / output)
        return f"NAS share: {output}/"


def local_cluster() -> ClusterContext:
    return ClusterContext(LOCAL_CLUSTER, LocalPaths.default())


def for_inventory(cluster: Cluster, source: Path | None = None) -> ClusterContext:
    return ClusterContext(cluster.name, cluster_state(cluster.name), cluster, source)


def resolve_cluster(inventory: Path | None = None) -> ClusterContext:
    """``-i INVENTORY``, else ``$PIBLADE_INVENTORY``, else the local cluster. Loads the inventory once."""
    if inventory is None:
        explicit = os.environ.get(INVENTORY_ENV)
        inventory = Path(explicit).expanduser() if explicit else None
    if inventory is None:
        return local_cluster()
    return for_inventory(load_inventory(inventory), inventory)
