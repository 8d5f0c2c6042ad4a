"""A testbed node that boots like a freshly flashed card: cloud-init on, a NoCloud seed, nothing preset.

The other testbed nodes get their identity written from the host (hostname,
static address, host keys, the controller's key for ``pi``). A *card* node gets
none of that: its root is the shared image with cloud-init switched back on
(the image keeps it off with ``/etc/cloud/cloud-init.disabled``), no ``pi``
user, no SSH host keys, no network file of the testbed's (systemd-networkd's
container default gives ``host0`` only a link-local address), the host name a
fresh Raspberry Pi OS card has, and the three seed files of ``piblade node add``
in cloud-init's NoCloud seed directory. Everything the node then is (user,
login key, host name, address, host keys) comes from the seed, and the seed's
own first-boot command scrubs the private keys from that copy, as it does on a
card's boot partition.

What the testbed needs from the seed, checked before anything boots: the
name and the static address (on the testbed's network; the bridge has no DHCP
server) and an interface entry named ``host0``. The node's cloud-init has no
netplan and renders the network itself; its networkd renderer takes the
entry's id as the interface name and ignores ``match``, so the seed is made
with ``--interface host0``.
"""

from __future__ import annotations

import ipaddress
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from piblade.testbed.node import CONTROLLER_ADDRESS, NETWORK, _put
from piblade.testbed.system import TestbedError, run_tool

#: cloud-init's NoCloud seed directory inside a node (ds-identify finds the datasource there).
SEED_DIR = Path("var/lib/cloud/seed/nocloud")
SEED_FILES = ("user-data", "network-config", "meta-data")
INTERFACE = "host0"
#: What a fresh Raspberry Pi OS card calls itself until its first boot renames it.
FRESH_HOSTNAME = "raspberrypi"
LOGIN_USER = "pi"
#: The image is debootstrap's minbase, without Debian's ``locales``: C.UTF-8 is its only UTF-8
#: locale, and cloud-init's locale module would fail setting its Debian default en_US.UTF-8 (a
#: Raspberry Pi OS image has its locales generated). This is the image's setting, not the seed's.
_CLOUD_CFG = "# piblade testbed: the image has no locales package, only C.UTF-8\nlocale: C.UTF-8\n"
_MAX_SEED_FILE = 1 << 20  # a seed with three RSA keys is ~10 KB; bound what reading one can cost


@dataclass(frozen=True, slots=True)
class CardSeed:
    """What the testbed reads from a seed directory: who the node will be and where."""

    directory: Path
    name: str
    address: str
    user: str
    authorized_keys: tuple[str, ...]


def _load(directory: Path, name: str) -> Any:
    path = directory / name
    try:
        if path.stat().st_size > _MAX_SEED_FILE:
            raise TestbedError(f"{path} is larger than {_MAX_SEED_FILE >> 10} KiB: not a seed of `piblade node add`")
        text = path.read_text()
    except FileNotFoundError:
        raise TestbedError(f"{directory} has no {name}",
                           hint="write the seed with `piblade node add NAME --ip ... --interface host0 --dir DIR "
                           "-i <the testbed's inventory>`") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TestbedError(f"{path} is not YAML: {exc}") from None


def read_seed(directory: Path) -> CardSeed:
    """The name, address and login user of a ``piblade node add`` seed, refused if the testbed cannot boot it."""
    if not directory.is_dir():
        raise TestbedError(f"{directory} is not a directory", hint="pass the directory `piblade node add --dir` wrote")
    meta = _load(directory, "meta-data")
    network = _load(directory, "network-config")
    user_data = _load(directory, "user-data")
    name = meta.get("local-hostname") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise TestbedError(f"{directory}/meta-data names no local-hostname")
    ethernets = (network or {}).get("network", {}).get("ethernets") if isinstance(network, dict) else None
    if not isinstance(ethernets, dict) or len(ethernets) != 1:
        raise TestbedError(f"{directory}/network-config should have exactly one ethernets entry")
    (entry_id, entry), = ethernets.items()
    if entry_id != INTERFACE:
        raise TestbedError(
            f"{directory}/network-config configures {entry_id!r}; a testbed node's interface is {INTERFACE}",
            hint="cloud-init without netplan takes the entry's name as the interface name: make the seed with "
            f"`--interface {INTERFACE}`",
        )
    addresses = entry.get("addresses") if isinstance(entry, dict) else None
    if not addresses:
        raise TestbedError(f"{directory}/network-config asks for DHCP; the testbed's bridge has no DHCP server",
                           hint=f"make the seed with --ip, an address in {NETWORK}")
    try:
        interface = ipaddress.ip_interface(str(addresses[0]))
    except ValueError as exc:
        raise TestbedError(f"{directory}/network-config: {exc}") from None
    if interface.network != NETWORK or interface.ip in (NETWORK.network_address, NETWORK.broadcast_address) \
            or str(interface.ip) == CONTROLLER_ADDRESS:
        raise TestbedError(f"{directory}/network-config gives {interface}, not a node address in {NETWORK}",
                           hint=f"make the seed with --ip 10.199.0.N/{NETWORK.prefixlen} (N from 2 to 254, not 1)")
    users = user_data.get("users") if isinstance(user_data, dict) else None
    first = users[0] if isinstance(users, list) and users and isinstance(users[0], dict) else {}
    user = first.get("name")
    if user != LOGIN_USER:
        raise TestbedError(f"{directory}/user-data logs in as {user!r}; the testbed logs in as {LOGIN_USER}",
                           hint="make the seed without --user, for the testbed's inventory (its ansible_user is pi)")
    keys = tuple(str(k) for k in first.get("ssh_authorized_keys") or ())
    return CardSeed(directory, name, str(interface.ip), user, keys)


def prepare(root: Path, seed: CardSeed) -> None:
    """Turn a node's fresh overlay of the image into a blank card carrying ``seed``.

    The image's ``pi`` user goes (cloud-init must create it), and so does its
    sudoers line; a new machine-id is the only identity written from the host.
    """
    etc = root / "etc"
    (etc / "cloud" / "cloud-init.disabled").unlink(missing_ok=True)
    _put(etc / "cloud" / "cloud.cfg.d" / "90-piblade-testbed.cfg", _CLOUD_CFG)
    (etc / "systemd" / "network" / "10-host0.network").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    _put(etc / "hostname", FRESH_HOSTNAME + "\n")
    _put(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
    if any(line.split(":", 1)[0] == LOGIN_USER for line in (etc / "passwd").read_text().splitlines()):
        run_tool(["userdel", "--root", str(root), "--remove", LOGIN_USER], what="removing the image's pi user")
    (etc / "sudoers.d" / "010_pi-nopasswd").unlink(missing_ok=True)
    target = root / SEED_DIR
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in SEED_FILES:
        shutil.copyfile(seed.directory / name, target / name)
        (target / name).chmod(0o600)
