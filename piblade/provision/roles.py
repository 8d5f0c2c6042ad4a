"""What each role wants on a node, as a list of steps. Pure: no I/O but reading templates.

The templates in ``templates/`` are Jinja2 with the inventory's own variable
names (``piblade_share``, ``piblade_mount``…), so the Ansible playbooks in
``ansible/`` render the very same files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from piblade.inventory import Cluster, Node
from piblade.provision.facts import NodeFacts
from piblade.provision.sitetree import SiteTree
from piblade.provision.steps import (
    Directory,
    File,
    FstabLine,
    Hostname,
    Packages,
    PostgresCluster,
    PostgresRole,
    SambaUser,
    Service,
    SiteInstall,
    Step,
    SystemUser,
    VenvInstall,
)
from piblade.provision.wheelhouse import Wheelhouse
from piblade.resultsdb import PASSWORD_FILE_NAME

USER = "piblade"
HOME = "/var/lib/piblade"
CONFIG_DIR = "/etc/piblade"
VENV = "/opt/piblade/venv"
WHEELHOUSE = "/opt/piblade/wheelhouse"
TEMPLATES = Path(__file__).parent / "templates"

BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "procps")


@dataclass(frozen=True, slots=True)
class Secrets:
    """Cluster secrets the controller holds (0600 files) and hands to nodes. Never printed."""

    redis_password: str = field(repr=False)
    smb_password: str = field(repr=False)
    mount_key_private: str = field(repr=False)
    mount_key_public: str
    #: Of the ``piblade`` role in the results database (PostgreSQL).
    postgres_password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Context:
    """Everything roles need besides the node itself."""

    cluster: Cluster
    redis_url: str
    secrets: Secrets
    nas_host_keys: str = ""  # known_hosts lines of the NAS node, for sshfs mounts


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # config files, not HTML
    )


def render(template: str, variables: Mapping[str, Any]) -> bytes:
    return _environment().get_template(template).render(**variables).encode()


def mount_unit_name(path: str) -> str:
    """systemd's unit name for a mount point, as `systemd-escape --path --suffix=mount` makes it."""
    parts = [p.replace("-", "\\x2d") for p in path.strip("/").split("/") if p]
    return "-".join(parts) + ".mount"


def template_vars(node: Node, ctx: Context) -> dict[str, Any]:
    """The variables every template sees: the inventory's piblade_ settings plus derived ones."""
    cluster, s = ctx.cluster, node.settings
    nas = cluster.nas
    results = cluster.results_node
    roles = sorted(node.roles - {"controller"}) or ["node"]
    mount = nas.settings.nas_path if nas is not None and node.name == nas.name else s.mount
    return {
        "piblade_node": node.name,
        "piblade_roles": roles,
        "piblade_user": USER,
        "piblade_home": HOME,
        "piblade_config_dir": CONFIG_DIR,
        "piblade_venv": VENV,
        "piblade_redis_url": ctx.redis_url,
        "piblade_queues": list(s.queues),
        "piblade_worker_processes": s.worker_processes,
        "piblade_numba_threads": s.numba_threads,
        "piblade_warm": list(s.warm or ()),
        "piblade_health_interval": s.health_interval,
        "piblade_max_temp": s.max_temp,
        "piblade_mount": mount,
        "piblade_mount_unit": mount_unit_name(s.mount),
        "piblade_share": nas.settings.share if nas else s.share,
        "piblade_nas_path": nas.settings.nas_path if nas else s.nas_path,
        "piblade_nas_device": nas.settings.nas_device if nas else None,
        "piblade_nas_address": nas.address if nas else "",
        "piblade_smb_password": ctx.secrets.smb_password,
        "piblade_results_address": results.address,
        "piblade_results_port": cluster.results_port,
        "piblade_results_root": results_root(cluster),
        "piblade_results_clients": sorted({n.address for n in cluster.nodes}),
    }


#: The results database: its user and database name (piblade.resultsdb's defaults).
RESULTS_USER = "piblade"
#: Where Debian keeps PostgreSQL's clusters when the results node has no NAS disk.
PG_HOME = "/var/lib/postgresql"


def results_root(cluster: Cluster) -> str:
    """The directory PostgreSQL's clusters live under on the results node: the NAS disk's, not the SD card.

    On the NAS node that is a ``.postgresql`` directory inside the share's
    directory (the disk is mounted there, so anything beside it would be on the
    SD card); it is ``postgres`` 0750, so neither Samba's user nor the sshfs
    mounts can read it. Any other results node keeps Debian's own place.
    """
    node, nas = cluster.results_node, cluster.nas
    if nas is not None and node.name == nas.name:
        return f"{nas.settings.nas_path}/.postgresql"
    return PG_HOME


def common(node: Node, facts: NodeFacts, ctx: Context) -> list[Step]:
    tags = frozenset({"common"})
    steps: list[Step] = [
        Hostname(node.name, tags=tags),
        Packages(BASE_PACKAGES, tags=tags),
        SystemUser(USER, HOME, tags=tags),
        Directory(HOME, USER, USER, "755", tags=tags),
        Directory(CONFIG_DIR, "root", USER, "750", tags=tags),
    ]
    if not facts.virtualization.startswith("systemd-nspawn") and facts.virtualization not in ("lxc", "docker"):
        # Containers take their clock from the host; a Pi has no RTC and needs NTP.
        steps += [Packages(("systemd-timesyncd",), tags=tags), Service("systemd-timesyncd", tags=tags)]
    return steps


def nas_disk(node: Node, ctx: Context) -> tuple[list[Step], str]:
    """The data disk (by LABEL= or UUID=) mounted at the share's path, if the inventory names one."""
    path, device = node.settings.nas_path, node.settings.nas_device
    if not device:
        return [], f"data: directory {path} (set piblade_nas_device to mount a USB disk there)"
    tags = frozenset({"nas", "disk"})
    steps: list[Step] = [
        Directory(path, mount_point=True, tags=tags),
        FstabLine(path, render("nas-disk.fstab.j2", template_vars(node, ctx)).decode().strip(), tags=tags),
        Service(mount_unit_name(path), enabled=False, tags=tags),
    ]
    return steps, f"data: {device} mounted at {path} (nofail)"


def nas(node: Node, facts: NodeFacts, ctx: Context) -> list[Step]:
    tags = frozenset({"nas", "samba"})
    v = template_vars(node, ctx)
    return [
        Packages(("samba", "samba-vfs-modules"), tags=tags),
        Directory(node.settings.nas_path, USER, USER, "2775", tags=tags),
        File("/etc/samba/smb.conf", render("smb.conf.j2", v), notify=("smbd",), tags=tags),
        SambaUser(USER, ctx.secrets.smb_password, tags=tags),
        Service("smbd", tags=tags),
        # Nodes whose kernel has no cifs mount the NAS directory over sshfs: that key may
        # only speak SFTP, nothing else.
        Directory(f"{HOME}/.ssh", USER, USER, "700", tags=frozenset({"nas", "mount"})),
        File(
            f"{HOME}/.ssh/authorized_keys",
            f'restrict,command="internal-sftp" {ctx.secrets.mount_key_public}\n'.encode(),
            USER, USER, "600", tags=frozenset({"nas", "mount"}),
        ),
    ]


def results(node: Node, facts: NodeFacts, ctx: Context) -> tuple[list[Step], str]:
    """The cluster's results database: Debian's PostgreSQL, its data on the NAS disk, the piblade role."""
    tags = frozenset({"results", "postgresql"})
    v = template_vars(node, ctx)
    version = facts.postgres_version
    data = f"{v['piblade_results_root']}/{version}/main"
    etc = f"/etc/postgresql/{version}/main"
    unit = f"postgresql@{version}-main"
    dropin = f"/etc/systemd/system/{unit}.service.d"
    steps: list[Step] = [
        Packages(("postgresql",), tags=tags),
        PostgresCluster(version, data, ctx.cluster.results_port, tags=tags),
        File(f"{etc}/conf.d/piblade.conf", render("postgresql-piblade.conf.j2", v), "postgres", "postgres", "644",
             notify=(unit,), tags=tags),
        File(f"{etc}/pg_hba.conf", render("pg_hba.conf.j2", v), "postgres", "postgres", "640",
             notify=(unit,), tags=tags),
        Directory(dropin, tags=tags),
        File(f"{dropin}/piblade.conf", render("postgresql-mounts.conf.j2", v), notify=(unit,), tags=tags),
        # postgresql.service starts every cluster whose start.conf says auto, at boot too.
        Service("postgresql.service", tags=tags),
        Service(f"{unit}.service", enabled=False, tags=tags),
        PostgresRole(version, RESULTS_USER, ctx.secrets.postgres_password, tags=tags),
    ]
    clients = ", ".join(v["piblade_results_clients"])
    return steps, (f"results: PostgreSQL {version} on {v['piblade_results_address']}:{v['piblade_results_port']}, "
                   f"data in {data}, scram-sha-256 from {clients}")


def services(node: Node, facts: NodeFacts, ctx: Context, wheelhouse: Wheelhouse | SiteTree) -> list[Step]:
    """The venv, config and health agent every remote node runs; the worker service on workers."""
    v = template_vars(node, ctx)
    tags = frozenset({"services"})
    units = ["piblade-agent"] + (["piblade-worker"] if "workers" in node.roles else [])
    venv_tags = frozenset({"services", "venv"})
    venv: Step = (
        SiteInstall(VENV, wheelhouse.tar, wheelhouse.key, wheelhouse.minor, python=node.settings.python,
                    notify=tuple(units), tags=venv_tags)
        if isinstance(wheelhouse, SiteTree) else
        VenvInstall(VENV, WHEELHOUSE, wheelhouse.wheels, wheelhouse.manifest, wheelhouse.requirement,
                    python=node.settings.python, notify=tuple(units), tags=venv_tags))
    steps: list[Step] = [
        venv,
        Directory(f"{HOME}/numba-cache", USER, USER, "700", tags=tags),
        File(f"{CONFIG_DIR}/piblade.env", render("piblade.env.j2", v), "root", "root", "600",
             notify=tuple(units), tags=tags),
        File(f"{CONFIG_DIR}/redis.password", (ctx.secrets.redis_password + "\n").encode(), USER, USER, "600",
             secret=True, notify=tuple(units), tags=tags),
    ]
    if "workers" in node.roles:
        # Tasks write to the results database (ingest, ctx.emit); the URL in piblade.env names no password.
        steps.append(File(f"{CONFIG_DIR}/{PASSWORD_FILE_NAME}", (ctx.secrets.postgres_password + "\n").encode(),
                          USER, USER, "600", secret=True, notify=("piblade-worker",), tags=tags))
    for unit in units:
        steps.append(File(f"/etc/systemd/system/{unit}.service", render(f"{unit}.service.j2", v),
                          notify=(unit,), tags=tags))
    # The worker reads and writes the share: it starts once the mount can work.
    steps += [Service(f"{unit}.service", tags=tags, after_nas=unit == "piblade-worker") for unit in units]
    return steps


def workers(node: Node, facts: NodeFacts, ctx: Context) -> tuple[list[Step], str]:
    """Mount the NAS share; returns the steps and a note saying which kind of mount."""
    tags = frozenset({"workers", "mount"})
    v = template_vars(node, ctx)
    mount = node.settings.mount
    unit = mount_unit_name(mount)
    steps: list[Step] = [Directory(mount, "root", "root", "755", mount_point=True, tags=tags)]
    if ctx.cluster.nas is None:
        return steps, "mount: none (the inventory has no nas node)"
    if facts.cifs:
        # An fstab entry with x-systemd.automount: mounted on first use, and a Pi whose NAS is
        # away still boots (nofail). systemd generates the .mount/.automount units from it.
        automount = unit.removesuffix(".mount") + ".automount"
        steps += [
            Packages(("cifs-utils",), tags=tags),
            File(f"{CONFIG_DIR}/nas.cred", render("nas.cred.j2", v), "root", "root", "600", secret=True,
                 notify=(automount,), tags=tags),
            FstabLine(mount, render("nas-cifs.fstab.j2", v).decode().strip(), notify=(automount,), tags=tags),
            Service(automount, enabled=False, tags=tags, after_nas=True),
        ]
        return steps, f"mount: cifs //{v['piblade_nas_address']}/{v['piblade_share']} at {mount} (automount)"
    steps += [
        Packages(("sshfs", "fuse3"), tags=tags),
        File(f"{CONFIG_DIR}/nas_key", ctx.secrets.mount_key_private.encode(), "root", "root", "600", secret=True,
             notify=(unit,), tags=tags),
        File(f"{CONFIG_DIR}/nas_known_hosts", ctx.nas_host_keys.encode(), notify=(unit,), tags=tags),
        File(f"/etc/systemd/system/{unit}", render("nas-sshfs.mount.j2", v), notify=(unit,), tags=tags),
        Service(unit, tags=tags, after_nas=True),
    ]
    return steps, f"mount: sshfs (FUSE; this kernel has no cifs) {v['piblade_nas_address']}:{v['piblade_nas_path']} at {mount}"


def plan(node: Node, facts: NodeFacts, ctx: Context, wheelhouse: Wheelhouse | SiteTree) -> tuple[list[Step], list[str]]:
    """Every step for a remote node, in order, plus notes for the recap."""
    notes: list[str] = []
    steps = common(node, facts, ctx)
    if "nas" in node.roles:
        disk_steps, note = nas_disk(node, ctx)
        steps += disk_steps + nas(node, facts, ctx)
        notes.append(note)
    if node.name == ctx.cluster.results_node.name:
        results_steps, note = results(node, facts, ctx)
        steps += results_steps
        notes.append(note)
    if "workers" in node.roles:
        mount_steps, note = workers(node, facts, ctx)
        steps += mount_steps
        notes.append(note)
    steps += services(node, facts, ctx, wheelhouse)
    return steps, notes


def filter_tags(steps: list[Step], tags: frozenset[str]) -> list[Step]:
    if not tags:
        return steps
    return [s for s in steps if s.tags & tags]
