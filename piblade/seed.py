"""The cloud-init NoCloud seed of a new node: ``user-data``, ``network-config`` and ``meta-data``.

Raspberry Pi OS (Trixie, October 2025 on) reads these three files from the
boot partition of a freshly flashed card (``datasource: NoCloud: seedfrom:
file:///boot/firmware``). The seed makes the node reachable and trusted on its
first boot, with nothing typed on the Pi:

* **The node's SSH host keys are made here**, on the controller (ed25519,
  ecdsa, rsa: every type ``ssh-keygen -A`` would make, so the node has no key
  the controller has not seen). cloud-config ``ssh_keys`` installs them, with
  ``ssh_deletekeys: true`` (the image's keys go) and ``ssh_genkeytypes``
  naming exactly the types given, so cloud-init generates none (its default
  list adds dsa up to 22.4; ``[]`` says "none" too, but 22.4's schema refuses an
  empty list). The public halves go into known_hosts at once, so the
  first connection is verified strictly: no ``piblade trust``, no
  ``--accept-new``. Private keys exist only in memory and in ``user-data``.
* **The private keys leave the boot partition on first boot.** The FAT
  partition is readable by every local user. The seed's own ``runcmd`` (the
  last stage of cloud-init's first boot) overwrites the lines between
  :data:`KEYS_BEGIN` and :data:`KEYS_END` in place with ``#`` (same length, so
  the FAT rewrites the same clusters instead of leaving the old ones free but
  intact); what remains is a comment block, and ``user-data`` stays valid.
  Before that, it puts the keys back if Raspberry Pi OS's own
  ``regenerate_ssh_host_keys.service`` (which deletes and regenerates host keys
  on first boot, unordered against cloud-init) replaced them: ``cloud-init
  single --name ssh --frequency always`` re-runs the ssh module from the same
  seed.
* **Network: one netplan v2 entry matched by name glob** (``e*`` by default:
  a Pi's ``eth0``, ``end0`` on plain Debian, ``enp*``/``enx*`` adapters).
  Raspberry Pi OS hands ``network-config`` to netplan verbatim (its renderer is
  netplan), and netplan honours ``match``; the entry's id is only a label.
  cloud-init's own renderers ignore ``match`` and take the id as the interface
  name, so ``--interface host0`` (a plain name) is the id as well.
* The login user (``pi``) gets the controller's public key, passwordless sudo
  (provisioning runs ``sudo -n``) and a locked password; ``ssh_pwauth: false``.

Everything here is pure except :func:`write_seed`.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from piblade.errors import PibladeError
from piblade.state import write_atomic

SEED_FILES = ("user-data", "network-config", "meta-data")
KEYS_BEGIN = "# piblade: private host keys below; the first boot overwrites them with '#'"
KEYS_END = "# piblade: end of private host keys"
#: Where a booted node finds its seed: Raspberry Pi OS's boot partition, then cloud-init's seed dirs.
SEED_PATHS = (
    "/boot/firmware/user-data",
    "/var/lib/cloud/seed/nocloud/user-data",
    "/var/lib/cloud/seed/nocloud-net/user-data",
)
DEFAULT_INTERFACE = "e*"
DEFAULT_USER = "pi"


@dataclass(frozen=True, slots=True)
class HostKeyPair:
    """One SSH host key, as cloud-config's ``ssh_keys`` takes it (``<kind>_private``, ``<kind>_public``)."""

    kind: str  # ed25519 | ecdsa | rsa
    private: str  # OpenSSH PEM
    public: str  # "ssh-ed25519 AAAA..."

    @property
    def key_type(self) -> str:
        return self.public.split()[0]

    @property
    def blob(self) -> str:
        return self.public.split()[1]


def generate_host_keys() -> tuple[HostKeyPair, ...]:
    """Fresh host keys of every type OpenSSH's ``ssh-keygen -A`` makes, in memory only."""
    keys: list[tuple[str, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]] = [
        ("ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("ecdsa", ec.generate_private_key(ec.SECP256R1())),
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=3072)),
    ]
    pairs = []
    for kind, key in keys:
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        pairs.append(HostKeyPair(kind, private, public))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The wired interface: a static address (with gateway and DNS) or DHCP."""

    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None  # None: DHCP
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dns: tuple[str, ...] = ()
    interface: str = DEFAULT_INTERFACE

    @property
    def dhcp(self) -> bool:
        return self.address is None


@dataclass(frozen=True, slots=True)
class SeedSpec:
    name: str
    authorized_key: str  # the controller's public key, one OpenSSH line
    network: NetworkSpec
    host_keys: tuple[HostKeyPair, ...]
    user: str = DEFAULT_USER
    instance_id: str = field(default_factory=lambda: secrets.token_hex(6))


@dataclass(frozen=True, slots=True)
class Seed:
    user_data: str
    network_config: str
    meta_data: str

    def files(self) -> dict[str, str]:
        return {"user-data": self.user_data, "network-config": self.network_config, "meta-data": self.meta_data}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (keys, the scrub script) as literal blocks, readable in the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def scrub_script(paths: Sequence[str] = SEED_PATHS) -> str:
    """Python (run by ``python3 -c`` on the node) that blanks the key block of every seed copy, in place."""
    return (
        "import os\n"
        f"begin, end = {KEYS_BEGIN!r}.encode(), {KEYS_END!r}.encode()\n"
        f"for path in {list(paths)!r}:\n"
        "    try:\n"
        "        data = open(path, 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    lines, inside = data.split(b'\\n'), False\n"
        "    for i, line in enumerate(lines):\n"
        "        if line.rstrip(b'\\r') == begin:\n"
        "            inside = True\n"
        "        elif line.rstrip(b'\\r') == end:\n"
        "            inside = False\n"
        "        elif inside:\n"
        "            lines[i] = b'#' * len(line)\n"
        "    new = b'\\n'.join(lines)\n"
        "    if new != data:\n"
        "        with open(path, 'r+b') as fh:\n"
        "            fh.write(new)\n"
        "            fh.flush()\n"
        "            os.fsync(fh.fileno())\n"
        "        print('piblade: private host keys removed from', path)\n"
    )


def restore_keys_command(host_keys: Sequence[HostKeyPair]) -> str:
    """Shell: re-run cloud-init's ssh module if something replaced our ed25519 key after it ran."""
    ed = next(k for k in host_keys if k.kind == "ed25519")
    return (
        f"grep -qF '{ed.blob}' /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null || "
        "{ cloud-init single --name ssh --frequency always && systemctl try-restart ssh.service; }"
    )


def user_data(spec: SeedSpec) -> str:
    """The ``#cloud-config`` text; the private keys are the last block, between the markers."""
    if not any(k.kind == "ed25519" for k in spec.host_keys):
        raise ValueError("an ed25519 host key is required")
    config = {
        "hostname": spec.name,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "users": [{
            "name": spec.user,
            "groups": ["adm", "sudo"],
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": [spec.authorized_key],
        }],
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [key.kind for key in spec.host_keys],  # all present: cloud-init makes none
        "runcmd": [
            ["systemctl", "enable", "--now", "ssh.service"],
            ["sh", "-c", restore_keys_command(spec.host_keys)],
            ["python3", "-c", scrub_script()],
        ],
    }
    keys: dict[str, str] = {}
    for key in spec.host_keys:
        keys[f"{key.kind}_private"] = key.private
        keys[f"{key.kind}_public"] = key.public
    header = (
        "#cloud-config\n"
        f"# piblade node {spec.name}: written by `piblade node add`. The private host keys at the end\n"
        "# are overwritten on first boot; the controller's known_hosts already has the public halves.\n"
    )
    return header + _dump(config) + KEYS_BEGIN + "\n" + _dump({"ssh_keys": keys}) + KEYS_END + "\n"


def network_config(network: NetworkSpec) -> str:
    """netplan v2 (cloud-init ``network-config``): one wired interface matched by name."""
    entry: dict[str, object] = {"match": {"name": network.interface}}
    if network.dhcp:
        entry["dhcp4"] = True
    else:
        assert network.address is not None
        entry["dhcp4"] = False
        entry["addresses"] = [str(network.address)]
        if network.gateway is not None:
            # 0.0.0.0/0 rather than netplan's newer `default`, which cloud-init 22.4 cannot parse
            everything = "0.0.0.0/0" if network.gateway.version == 4 else "::/0"
            entry["routes"] = [{"to": everything, "via": str(network.gateway)}]
        if network.dns:
            entry["nameservers"] = {"addresses": list(network.dns)}
    # netplan (Raspberry Pi OS) honours `match` and takes the id as a label. cloud-init's own renderers
    # (a system without netplan, such as the testbed's networkd) ignore `match` and use the id as the
    # interface name, so a plain name is the id too; a glob gets a neutral id (netplan only).
    plain = not any(c in network.interface for c in "*?[")
    return _dump({"network": {"version": 2, "ethernets": {network.interface if plain else "wired": entry}}})


def meta_data(spec: SeedSpec) -> str:
    # A new instance-id per `node add`: re-seeding a card makes cloud-init run its first boot again.
    return _dump({"instance-id": f"piblade-{spec.name}-{spec.instance_id}", "local-hostname": spec.name})


def build_seed(spec: SeedSpec) -> Seed:
    return Seed(user_data(spec), network_config(spec.network), meta_data(spec))


#: Raspberry Pi OS images from Trixie on carry NoCloud stubs on the boot partition (pi-gen's
#: stage2/04-cloud-init installs all three); Bookworm and older carry none and ignore a seed.
_TRIXIE_MARKERS = SEED_FILES
_ISSUE_DATE = re.compile(r"Raspberry Pi reference (\d{4}-\d{2}-\d{2})")
_FIRST_TRIXIE = "2025-10-01"


def check_boot_partition(path: Path) -> None:
    """Refuse a directory that is not a Raspberry Pi OS boot partition from Trixie on.

    A Pi boot partition has ``config.txt`` and ``cmdline.txt``. A Trixie card also
    has at least one of the NoCloud files (the image ships stubs; a card seeded
    before has ours); a card with none of them is pre-Trixie, whose images have
    no cloud-init and would boot ignoring the seed. ``issue.txt`` ("Raspberry Pi
    reference 2024-11-19") names the image's date, which the message quotes.
    """
    if not path.is_dir():
        raise PibladeError(f"{path} is not a directory",
                           hint="mount the card's boot partition (the small FAT one, label bootfs) and pass its path")
    missing = [name for name in ("config.txt", "cmdline.txt") if not (path / name).is_file()]
    if missing:
        raise PibladeError(
            f"{path} does not look like a Raspberry Pi boot partition (no {' or '.join(missing)})",
            hint="pass the mounted boot partition (label bootfs), or use --dir DIR to write the seed into a plain directory",
        )
    if any((path / name).exists() for name in _TRIXIE_MARKERS):
        return
    issue = path / "issue.txt"
    found = _ISSUE_DATE.search(issue.read_text(errors="replace")) if issue.is_file() else None
    dated = f" (its issue.txt says image {found.group(1)})" if found else ""
    raise PibladeError(
        f"{path} is a Raspberry Pi OS card from before Trixie{dated}: it has no cloud-init "
        "(no user-data, network-config or meta-data on the boot partition) and would ignore the seed",
        hint=f"flash Raspberry Pi OS Lite 64-bit from {_FIRST_TRIXIE} or newer (Trixie) with Raspberry Pi Imager, "
        "customisation left off, then run node add again",
    )


def write_seed(seed: Seed, directory: Path) -> list[Path]:
    """Write the three files into ``directory`` (0600 where the filesystem keeps modes; FAT does not)."""
    written = []
    for name, text in seed.files().items():
        path = directory / name
        write_atomic(path, text)
        written.append(path)
    return written
