"""`piblade node add`: a seed for a new Pi, the node in the inventory, its host keys in known_hosts.

The order is chosen so that a refusal leaves nothing behind: the inventory
edit is planned and checked by piblade's reader, and known_hosts is checked for
an old key at the address, before anything is written; then the seed, the
inventory, and last the public host keys.

Which key logs in: the one provisioning will use, i.e. the new node's
``ansible_ssh_private_key_file`` as the inventory resolves it (usually set once
under ``all: vars:``); its ``.pub`` beside it, or the public half derived from
the key. When the inventory names no key, provisioning would try the user's
agent and ``~/.ssh/id_*``, which is no single key to put on a node: piblade then
uses its own, ``<state>/ssh/id_ed25519`` (made once, 0600), and writes it into
the new host's vars so ``piblade provision`` and ``ansible-playbook`` offer it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from piblade import inventory_edit, seed
from piblade.errors import PibladeError
from piblade.provision.engine import target_for
from piblade.provision.ssh import HostKey, SshTarget, append_known_host, known_host_keys
from piblade.state import private_dir, state_dir, write_private

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.*?-]{1,15}$")  # a Linux interface name (15 chars), or a glob of one
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
KEY_NAME = "id_ed25519"


def controller_key_file() -> Path:
    """piblade's own login key for nodes whose inventory names none."""
    return state_dir() / "ssh" / KEY_NAME


def ensure_controller_key(path: Path) -> bool:
    """Create the ed25519 key pair at ``path`` (0600) if it is missing; True if it was made now."""
    if path.exists():
        return False
    private_dir(path.parent)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    write_private(path, private)
    write_private(Path(f"{path}.pub"), f"{public} piblade-controller\n")
    return True


def public_key_of(key_file: Path) -> str:
    """The OpenSSH public line of a private key file: its ``.pub`` if present, else derived."""
    pub = Path(f"{key_file}.pub")
    if pub.is_file():
        line = pub.read_text().strip().splitlines()[0] if pub.read_text().strip() else ""
        if line.startswith(("ssh-", "ecdsa-", "sk-")):
            return line
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise PibladeError(f"cannot read the SSH key {key_file}: {exc.strerror or exc}",
                           hint="check ansible_ssh_private_key_file in the inventory") from exc
    try:
        loaded = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            loaded = serialization.load_pem_private_key(data, password=None)  # type: ignore[assignment]
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PibladeError(
                f"cannot read the public half of {key_file} (passphrase-protected or not a key)",
                hint=f"put its public key beside it as {pub}",
            ) from exc
    return loaded.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode()


def network_spec(ip: str | None, gateway: str | None, dns: list[str], dhcp: bool, interface: str) -> seed.NetworkSpec:
    if not _INTERFACE.match(interface):
        raise PibladeError(f"--interface {interface!r} is not an interface name or glob", hint="e.g. e*, eth0, end0")
    if dhcp == (ip is not None):
        raise PibladeError("give either --ip ADDRESS/PREFIX or --dhcp",
                           hint="e.g. --ip 10.0.0.21/24 --gateway 10.0.0.1, or --dhcp (then the node is "
                           "reached as NAME.local unless --address says otherwise)")
    if dhcp:
        if gateway or dns:
            raise PibladeError("--gateway and --dns go with --ip", hint="with --dhcp the DHCP server gives them")
        return seed.NetworkSpec(interface=interface)
    assert ip is not None
    if "/" not in ip:
        raise PibladeError(f"--ip {ip}: give the prefix length too", hint=f"e.g. --ip {ip}/24")
    try:
        address = ipaddress.ip_interface(ip)
        gw = ipaddress.ip_address(gateway) if gateway else None
        servers = tuple(str(ipaddress.ip_address(s)) for s in dns)
    except ValueError as exc:
        raise PibladeError(f"not an IP address: {exc}") from None
    if gw is not None and gw not in address.network:
        raise PibladeError(f"--gateway {gw} is not in {address.network}")
    if not servers and gw is not None:
        servers = (str(gw),)  # a home router is usually the LAN's DNS server too
    return seed.NetworkSpec(address=address, gateway=gw, dns=servers, interface=interface)


@dataclass(frozen=True, slots=True)
class AddedNode:
    name: str
    role: str
    address: str
    user: str
    seed_files: tuple[Path, ...]
    inventory: Path
    known_hosts: Path
    host_keys: tuple[HostKey, ...]
    login_key: Path
    login_key_created: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "address": self.address, "user": self.user,
            "seed_files": [str(p) for p in self.seed_files], "inventory": str(self.inventory),
            "known_hosts": str(self.known_hosts),
            "host_keys": [{"type": k.kind, "fingerprint": k.fingerprint} for k in self.host_keys],
            "login_key": str(self.login_key), "login_key_created": self.login_key_created,
        }


def _refuse_known(target: SshTarget) -> None:
    old = known_host_keys(target.known_hosts, target.host_key_name)
    if old:
        raise PibladeError(
            f"{target.known_hosts} already lists host keys for {target.host_key_name} ({old[0]})",
            hint="an old machine had that address: remove its keys with "
            f"`ssh-keygen -R {target.host_key_name} -f {target.known_hosts}`, then run node add again",
        )


def add_node(
    inventory: Path, name: str, role: str, network: seed.NetworkSpec, destination: Path, *,
    boot: bool, user: str | None = None, address: str | None = None,
) -> AddedNode:
    """Write the seed into ``destination`` (a boot partition if ``boot``), add the node, trust its keys."""
    if not _HOSTNAME.match(name):
        raise PibladeError(f"{name!r} is not a valid host name",
                           hint="letters, digits and '-', at most 63, not starting or ending with '-'")
    if user is not None and not _USER.match(user):
        raise PibladeError(f"--user {user!r} is not a valid user name", hint="lower-case letters, digits, '_' and '-'")
    if network.address is not None:
        address = str(network.address.ip)
    elif address is None:
        address = f"{name}.local"  # Raspberry Pi OS answers mDNS (avahi)
    if boot:
        seed.check_boot_partition(destination)
    host_vars: dict[str, Any] = {"ansible_host": address}
    edit = inventory_edit.plan_add_host(inventory, name, role, host_vars)
    target = target_for(edit.cluster.node(name))
    _refuse_known(target)  # before the login key is made: a refusal leaves nothing behind
    # The seed's user is the one provisioning logs in as: --user, else the inventory's ansible_user, else pi.
    login_user = user or target.user or seed.DEFAULT_USER
    if target.user != login_user:
        host_vars["ansible_user"] = login_user
    created = False
    if target.key_file is None:
        key_file = controller_key_file()
        created = ensure_controller_key(key_file)
        home = Path.home()
        shown = f"~/{key_file.relative_to(home)}" if key_file.is_relative_to(home) else str(key_file)
        host_vars["ansible_ssh_private_key_file"] = shown
    if len(host_vars) > 1:
        edit = inventory_edit.plan_add_host(inventory, name, role, host_vars)
        target = target_for(edit.cluster.node(name))
    assert target.key_file is not None
    login_key = target.key_file
    host_keys = seed.generate_host_keys()
    spec = seed.SeedSpec(name=name, authorized_key=public_key_of(login_key), network=network,
                         host_keys=host_keys, user=login_user)
    if not boot:
        destination.mkdir(parents=True, exist_ok=True)
    files = seed.write_seed(seed.build_seed(spec), destination)
    inventory_edit.commit(edit)
    known = tuple(HostKey(k.key_type, k.blob) for k in host_keys)
    for key in known:
        append_known_host(target.known_hosts, target.host_key_name, key)
    return AddedNode(name, role, address, login_user, tuple(files), inventory, target.known_hosts.expanduser(), known,
                     login_key, created)
