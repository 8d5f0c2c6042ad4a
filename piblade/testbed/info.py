"""What the testbed reports: the running testbed's nodes and files, and its status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piblade.registry import did_you_mean
from piblade.testbed.node import TestbedNode
from piblade.testbed.system import TestbedError


@dataclass(frozen=True, slots=True)
class TestbedInfo:
    """What a running testbed offers: its nodes and the files to reach them with."""

    __test__ = False

    nodes: tuple[TestbedNode, ...]
    key: Path
    known_hosts: Path
    inventory: Path

    @property
    def nas(self) -> TestbedNode:
        return next(n for n in self.nodes if n.role == "nas")

    @property
    def workers(self) -> tuple[TestbedNode, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    def node(self, name: str) -> TestbedNode:
        """A node by name; ``nas`` and ``w1`` are short for ``tb-nas`` and ``tb-w1``."""
        for node in self.nodes:
            if name in (node.name, node.name.removeprefix("tb-")):
                return node
        raise TestbedError(
            f"no testbed node {name!r}{did_you_mean(name, (n.name for n in self.nodes))}",
            hint="`piblade testbed status` lists the nodes",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "key": str(self.key),
            "known_hosts": str(self.known_hosts),
            "inventory": str(self.inventory),
        }


@dataclass(frozen=True, slots=True)
class GuestStatus:
    name: str
    address: str
    role: str
    running: bool
    ssh: bool  # port 22 accepts a connection
    pid: int | None  # of its systemd-nspawn
    machine: str = "x86_64"  # what `uname -m` says on the node
    emulated: bool = False  # runs under qemu-user (an aarch64 node on an x86_64 host)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "role": self.role, "machine": self.machine,
                "emulated": self.emulated, "running": self.running, "ssh": self.ssh, "pid": self.pid}


@dataclass(frozen=True, slots=True)
class TestbedStatus:
    __test__ = False

    up: bool  # a testbed was started and not taken down
    bridge: bool
    image: Path | None  # the cached image, if built
    nodes: tuple[GuestStatus, ...]
    stray_pids: tuple[int, ...]  # testbed processes no node accounts for

    def to_dict(self) -> dict[str, Any]:
        return {"up": self.up, "bridge": self.bridge, "image": str(self.image) if self.image else None,
                "nodes": [n.to_dict() for n in self.nodes], "stray_pids": list(self.stray_pids)}
