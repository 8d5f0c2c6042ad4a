"""One testbed node: its filesystem (an overlay on the image), its identity, and its nspawn.

Each node's root is an overlayfs mount with the shared image as the read-only
lower layer and a private upper directory (≈2 ms to set up; a full ``cp -a`` of
the 436 MB image takes 1–5 s per node here, depending on the page cache, and is
the fallback where overlayfs will not mount). Into the upper layer go the files that make a node itself: hostname, a
fresh machine-id, fresh SSH host keys, its static address (no gateway), /etc/hosts
for the testbed, and the controller's public key for ``pi`` and ``root``.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from piblade.testbed.system import (
    Proc,
    TestbedError,
    alive,
    children,
    find_tool,
    is_mount,
    make_cgroups,
    mount_overlay,
    pidns,
    run_tool,
    spawn_detached,
)

BRIDGE = "pibr0"
NETWORK = ipaddress.ip_network("10.199.0.0/24")
CONTROLLER_ADDRESS = "10.199.0.1"
NAME_PREFIX = "tb-"
# Not "controller": Ansible warns when a host is named like its group.
CONTROLLER_NAME = f"{NAME_PREFIX}ctl"
NAS_NAME = f"{NAME_PREFIX}nas"
WORKER_PREFIX = f"{NAME_PREFIX}w"
ARM64_PREFIX = f"{NAME_PREFIX}arm"
MAX_WORKERS = 20
MAX_ARM64 = 4
_NAS_HOST = 10  # tb-nas is .10, tb-w1 .11, tb-w2 .12, ...
_ARM64_HOST = 40  # tb-arm1 is .41, tb-arm2 .42, ...: apart from the x86_64 workers'
#: What ``uname -m`` says on a node of each Debian architecture the testbed boots.
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True, slots=True)
class TestbedNode:
    """A node of the testbed: its name, its address on the bridge, its role (``nas`` or ``worker``)
    and its machine (``x86_64`` natively, ``aarch64`` under emulation on an x86_64 host)."""

    __test__ = False

    name: str
    address: str
    role: str
    machine: str = "x86_64"

    @property
    def arch(self) -> str:
        """The node's Debian architecture (which image it boots)."""
        return next((deb for deb, machine in MACHINES.items() if machine == self.machine), self.machine)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "address": self.address, "role": self.role, "machine": self.machine}

    @classmethod
    def from_dict(cls, entry: dict[str, object], native: str) -> TestbedNode:
        """From ``state.json``; an entry written before nodes had a machine is a native one."""
        return cls(str(entry["name"]), str(entry["address"]), str(entry["role"]), str(entry.get("machine") or native))


def plan_nodes(workers: int, arm64: int = 0, *, native: str = "x86_64") -> tuple[TestbedNode, ...]:
    """The NAS node, ``workers`` worker nodes and ``arm64`` aarch64 worker nodes, with fixed addresses.

    The NAS node and the ``tb-w`` workers run this machine's architecture (``native``);
    ``tb-arm`` workers are aarch64, as on a Pi, emulated unless the host is aarch64 itself.
    """
    if not 0 <= workers <= MAX_WORKERS:
        raise TestbedError(f"--workers must be between 0 and {MAX_WORKERS}, not {workers}")
    if not 0 <= arm64 <= MAX_ARM64:
        raise TestbedError(f"--arm64 must be between 0 and {MAX_ARM64}, not {arm64}",
                           hint="each emulated node runs about ten times slower than a native one")
    base = int(NETWORK.network_address)
    nodes = [TestbedNode(NAS_NAME, str(ipaddress.ip_address(base + _NAS_HOST)), "nas", native)]
    for i in range(1, workers + 1):
        nodes.append(TestbedNode(f"{WORKER_PREFIX}{i}", str(ipaddress.ip_address(base + _NAS_HOST + i)), "worker",
                                 native))
    for i in range(1, arm64 + 1):
        nodes.append(TestbedNode(f"{ARM64_PREFIX}{i}", str(ipaddress.ip_address(base + _ARM64_HOST + i)), "worker",
                                 "aarch64"))
    return tuple(nodes)


@dataclass(frozen=True, slots=True)
class NodeDirs:
    """``<testbed>/nodes/<name>/``: ``root`` (what the node boots), ``upper`` and ``work`` (overlayfs)."""

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"


def mount_root(dirs: NodeDirs, image: Path) -> str:
    """Give the node its root filesystem; returns how: ``overlay`` or ``copy``."""
    if is_mount(dirs.root):
        return "overlay"
    if dirs.upper.exists():
        if mount_overlay(image, dirs.upper, dirs.work, dirs.root):
            return "overlay"
        raise TestbedError(f"could not mount the overlay of {dirs.base} again", hint="run `piblade testbed down`")
    if dirs.root.is_dir() and any(dirs.root.iterdir()):
        return "copy"  # a full copy made earlier
    for d in (dirs.root, dirs.upper, dirs.work):
        d.mkdir(parents=True, exist_ok=True)
    if mount_overlay(image, dirs.upper, dirs.work, dirs.root):
        return "overlay"
    dirs.upper.rmdir()
    dirs.work.rmdir()
    dirs.root.rmdir()
    run_tool(["cp", "-a", "--reflink=auto", str(image), str(dirs.root)], what="copying the node image", timeout=600)
    return "copy"


def _put(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    """Write a file inside a node's root, replacing (never following) whatever is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)
    shutil.chown(path, owner[0], owner[1])


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise TestbedError(f"the node image has no user {user!r}", hint="run `piblade testbed down`, delete the image, retry")


def network_file(node: TestbedNode) -> str:
    """systemd-networkd config; ``10-`` sorts before the container default ``80-container-host0.network``."""
    return (
        "# piblade testbed: a static address on the bridge and deliberately no gateway\n"
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={node.address}/{NETWORK.prefixlen}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )


def hosts_file(node: TestbedNode, nodes: tuple[TestbedNode, ...]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{CONTROLLER_ADDRESS}\t{CONTROLLER_NAME} controller"]
    lines += [f"{n.address}\t{n.name}" for n in nodes]
    if node not in nodes:
        lines.append(f"{node.address}\t{node.name}")
    return "\n".join(lines) + "\n"


def emulated_network_unit(node: TestbedNode) -> str:
    """The address of an emulated node, set by a oneshot unit.

    systemd-networkd does not start under qemu-user (its sandboxing fails there), so
    an emulated node sets its static address with ``ip`` at boot instead; still no gateway.
    """
    return (
        "# piblade testbed: systemd-networkd does not start under qemu-user; the same address, set by ip\n"
        "[Unit]\nDescription=piblade testbed: the node's address on the bridge\n"
        "Before=network.target ssh.service\nWants=network.target\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/sbin/ip link set host0 up\n"
        f"ExecStart=/sbin/ip addr replace {node.address}/{NETWORK.prefixlen} dev host0\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def write_identity(root: Path, node: TestbedNode, nodes: tuple[TestbedNode, ...], public_key: str,
                   *, emulated: bool = False) -> None:
    """Everything that makes this node itself, written from the host into its root."""
    etc = root / "etc"
    _put(etc / "hostname", node.name + "\n")
    _put(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
    _put(etc / "hosts", hosts_file(node, nodes))
    _put(etc / "systemd" / "network" / "10-host0.network", network_file(node))
    if emulated:
        units = etc / "systemd" / "system"
        _put(units / "piblade-testbed-net.service", emulated_network_unit(node))
        wants = units / "multi-user.target.wants" / "piblade-testbed-net.service"
        wants.parent.mkdir(parents=True, exist_ok=True)
        wants.unlink(missing_ok=True)
        wants.symlink_to("../piblade-testbed-net.service")
        for unit in ("systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service"):
            (units / unit).unlink(missing_ok=True)
            (units / unit).symlink_to("/dev/null")  # masked: it would only fail and restart
    if node.role == "nas":
        # Each worker mounts the share over SSH (sshfs), all at once when provisioned. Past sshd's
        # default MaxStartups (10 connections still logging in) sshd drops new ones at random; with
        # 19 workers on two loaded cores, 4 random mounts of 19 failed at once, as that predicts.
        _put(etc / "ssh" / "sshd_config.d" / "piblade-testbed-nas.conf", "MaxStartups 100:30:200\n")
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    run_tool(["ssh-keygen", "-A", "-f", str(root)], what=f"{node.name}: generating SSH host keys")
    pi = _ids(root, "pi")
    for home, owner in ((root / "root", (0, 0)), (root / "home" / "pi", pi)):
        (home / ".ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.chown(home / ".ssh", *owner)
        _put(home / ".ssh" / "authorized_keys", public_key.strip() + "\n", 0o600, owner)


def host_keys(root: Path) -> list[str]:
    """The node's public host keys as ``type base64`` read from its filesystem, not from the network."""
    keys = []
    for pub in sorted((root / "etc" / "ssh").glob("ssh_host_*_key.pub")):
        fields = pub.read_text().split()
        if len(fields) >= 2:
            keys.append(f"{fields[0]} {fields[1]}")
    if not keys:
        raise TestbedError(f"no SSH host keys in {root}/etc/ssh")
    return keys


def nspawn_argv(node: TestbedNode, root: Path) -> list[str]:
    """How a node boots. ``--register=no --keep-unit``: the host has no systemd or machined.

    ``--bind=/dev/fuse`` is all sshfs needs inside (nspawn keeps CAP_SYS_ADMIN in the
    node's bounding set). The console is read-only into the node's log file.
    """
    return [
        "systemd-nspawn",
        "--directory", str(root),
        "--machine", node.name,
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={BRIDGE}",
        "--bind=/dev/fuse",
        "--link-journal=no",
        "--resolv-conf=off",
        "--console=read-only",
        "--setenv=SYSTEMD_COLORS=0",
    ]


@dataclass(frozen=True, slots=True)
class Running:
    """A booted node's processes: ``systemd-nspawn`` on the host and the node's PID 1 (its child)."""

    nspawn: Proc
    init: Proc
    pidns: int


def boot(node: TestbedNode, root: Path, log: Path, timeout: float = 15.0) -> Running:
    with log.open("a") as handle:
        handle.write(f"\n--- piblade: booting {node.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    if find_tool("systemd-nspawn") is None:
        raise TestbedError("systemd-nspawn is not installed", hint="apt-get install -y systemd-container")
    nspawn = spawn_detached(nspawn_argv(node, root), log, cgroups=make_cgroups(node.name))
    host_ns = pidns(nspawn.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(nspawn):
            raise TestbedError(f"{node.name}: systemd-nspawn exited at once: {tail(log)}", hint=f"see {log}")
        for child in children(nspawn.pid):
            ns = pidns(child.pid)
            if ns is not None and ns != host_ns:
                return Running(nspawn, child, ns)
        time.sleep(0.02)
    raise TestbedError(f"{node.name}: the node's init did not start within {timeout:.0f} s", hint=f"see {log}")


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " / ".join(text[-lines:])


def ssh_keygen_controller_key(path: Path) -> None:
    """The controller's key for the testbed (ed25519, 0600), made once and kept across `down`."""
    if path.exists():
        path.chmod(0o600)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [find_tool("ssh-keygen") or "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "piblade-testbed", "-f", str(path)],
        check=True, capture_output=True,
    )
    path.chmod(0o600)
