"""A virtual Pi cluster on one Linux machine: Debian nodes booted with systemd-nspawn.

``Testbed().up(workers=2)`` builds (once, cached) a Debian bookworm image with
every package a node needs, boots a NAS node ``tb-nas`` (10.199.0.10) and worker
nodes ``tb-w1..`` (10.199.0.11, ...) on the host bridge ``pibr0`` (10.199.0.1 is
the controller, this machine), waits until each node's sshd answers and its boot
finished, and writes ``inventory/testbed.yml``. Nodes have no gateway: they reach
the bridge and nothing else. ``down`` removes everything but the image cache.

Modules: :mod:`.system` (the host: processes, mounts, bridge), :mod:`.image`
(debootstrap and the cache), :mod:`.node` (one node's files and nspawn),
:mod:`.card` (a node that boots like a blank card, from a `piblade node add` seed),
:mod:`.inventory_file`, :mod:`.info` (what it reports), :mod:`.core` (the lifecycle).
"""

from __future__ import annotations

from piblade.testbed.core import Testbed
from piblade.testbed.info import GuestStatus, TestbedInfo, TestbedStatus
from piblade.testbed.node import BRIDGE, CONTROLLER_ADDRESS, TestbedNode
from piblade.testbed.system import TestbedError, check_host

__all__ = [
    "BRIDGE",
    "CONTROLLER_ADDRESS",
    "GuestStatus",
    "Testbed",
    "TestbedError",
    "TestbedInfo",
    "TestbedNode",
    "TestbedStatus",
    "check_host",
]
