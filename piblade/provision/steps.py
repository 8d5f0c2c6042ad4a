"""Idempotent provisioning steps: probe the node, compare with the desired state, say what to do.

A step is pure data. ``probe()`` is a shell snippet that prints the node's
current state; ``decide(output)`` compares it with the desired state and returns
an :class:`Ok` that says why nothing is needed ("smbd is running", like
pyinfra's ``host.noop``) or a :class:`Change` of a typed :class:`ChangeKind` with
the shell to run and the files to upload. Because deciding needs no side effect,
``--check`` is free, and an unchanged node costs one round trip for all its
probes together. A host's steps and decisions together are its
:class:`~piblade.provision.plan.HostPlan`.

Nothing here touches the network; the engine in ``piblade.provision.engine``
sends the probes and the changes.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import os
import shlex
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

q = shlex.quote


@dataclass(frozen=True, slots=True)
class Upload:
    """A file to copy to the node; the change's script moves it from ``$STAGE/<name>`` into place."""

    name: str
    data: bytes | None = None
    local: Path | None = None

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.local.stat().st_size if self.local else 0


class ChangeKind(Enum):
    """What a change does. The engine decides restarts from it, never from the words of a summary."""

    CREATE = "create"  # something missing is made: a file, directory, user, fstab entry
    UPDATE = "update"  # it exists with other content or settings
    PERMISSIONS = "permissions"  # same content, other owner, group or mode
    INSTALL = "install"  # Debian packages, or piblade into its venv
    ENABLE = "enable"  # a unit enabled (it already runs)
    START = "start"  # a unit started (and enabled if it was not): it runs the new code and config anyway
    RESTART = "restart"  # a running unit restarted because a step that notifies it changed


@dataclass(frozen=True, slots=True)
class Change:
    """What a step will do (or, with --check, would do)."""

    step: str
    kind: ChangeKind
    summary: str
    script: str
    uploads: tuple[Upload, ...] = ()
    diff: str | None = None


@dataclass(frozen=True, slots=True)
class Ok:
    """Nothing to do on this step, and why: the node is already as desired."""

    step: str
    reason: str


#: A probed step: the change it needs, or why it needs none.
Decision = Change | Ok


@dataclass(frozen=True, slots=True)
class Step:
    """Base of every step. ``notify`` names services to restart when this step changes something."""

    tags: frozenset[str] = field(default=frozenset(), kw_only=True)
    notify: tuple[str, ...] = field(default=(), kw_only=True)
    #: Runs only once the NAS node has converged (mounting its share needs it ready).
    after_nas: bool = field(default=False, kw_only=True)

    @property
    def name(self) -> str:
        raise NotImplementedError

    def probe(self) -> str:
        raise NotImplementedError

    def decide(self, output: str) -> Decision:
        raise NotImplementedError

    def ok(self, reason: str) -> Ok:
        return Ok(self.name, reason)


def _stage_name(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Packages(Step):
    """Debian packages installed (from the node's own apt sources; testbed nodes have them baked in)."""

    packages: tuple[str, ...]

    @property
    def name(self) -> str:
        return "packages: " + " ".join(self.packages)

    def probe(self) -> str:
        return f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {' '.join(map(q, self.packages))} 2>/dev/null"

    def decide(self, output: str) -> Decision:
        installed = {line.split()[0] for line in output.splitlines() if line.endswith(" installed")}
        missing = [p for p in self.packages if p not in installed]
        if not missing:
            return self.ok(f"{', '.join(self.packages)} {'is' if len(self.packages) == 1 else 'are'} installed")
        return Change(
            self.name,
            ChangeKind.INSTALL,
            "install " + " ".join(missing),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends " + " ".join(map(q, missing)),
        )


@dataclass(frozen=True, slots=True)
class Hostname(Step):
    hostname: str

    @property
    def name(self) -> str:
        return f"hostname {self.hostname}"

    def probe(self) -> str:
        return "cat /etc/hostname 2>/dev/null; hostname"

    def decide(self, output: str) -> Decision:
        lines = output.split()
        if lines and all(line == self.hostname for line in lines):
            return self.ok(f"hostname is {self.hostname}")
        return Change(
            self.name,
            ChangeKind.UPDATE,
            f"set hostname to {self.hostname} (was {lines[-1] if lines else '?'})",
            f"echo {q(self.hostname)} > /etc/hostname && hostname {q(self.hostname)}",
        )


@dataclass(frozen=True, slots=True)
class SystemUser(Step):
    """A system account (no login shell) that runs piblade's services."""

    user: str
    home: str
    groups: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"user {self.user}"

    def probe(self) -> str:
        return f"getent passwd {q(self.user)}; id -nG {q(self.user)} 2>/dev/null"

    def decide(self, output: str) -> Decision:
        lines = output.splitlines()
        if not lines or not lines[0].startswith(self.user + ":"):
            script = f"useradd --system --create-home --home-dir {q(self.home)} --shell /usr/sbin/nologin {q(self.user)}"
            if self.groups:
                script += f" && usermod -aG {q(','.join(self.groups))} {q(self.user)}"
            return Change(self.name, ChangeKind.CREATE, f"create system user {self.user}", script)
        member = set(lines[1].split()) if len(lines) > 1 else set()
        missing = [g for g in self.groups if g not in member]
        if missing:
            return Change(self.name, ChangeKind.UPDATE, f"add {self.user} to {', '.join(missing)}",
                          f"usermod -aG {q(','.join(missing))} {q(self.user)}")
        return self.ok(f"user {self.user} exists" + (f", in {', '.join(self.groups)}" if self.groups else ""))


@dataclass(frozen=True, slots=True)
class Directory(Step):
    path: str
    owner: str = "root"
    group: str = "root"
    mode: str = "755"
    #: A mount point: created when missing, but once something is mounted there its
    #: owner and mode are the mounted filesystem's, not ours to change.
    mount_point: bool = False

    @property
    def name(self) -> str:
        return f"directory {self.path}"

    def probe(self) -> str:
        return f"stat -c '%U:%G:%a' {q(self.path)} 2>/dev/null || echo missing"

    def decide(self, output: str) -> Decision:
        want = f"{self.owner}:{self.group}:{self.mode}"
        have = output.strip()
        if have == want:
            return self.ok(f"directory {self.path} is {self.owner}:{self.group} {self.mode}")
        if self.mount_point and have != "missing":
            return self.ok(f"{self.path} exists (a mount point: its owner and mode are the mounted filesystem's)")
        if have == "missing":
            kind, summary = ChangeKind.CREATE, f"create {self.path}"
        else:
            kind, summary = ChangeKind.PERMISSIONS, f"fix {self.path} ({have} -> {want})"
        return Change(self.name, kind, summary, f"install -d -o {q(self.owner)} -g {q(self.group)} -m {self.mode} {q(self.path)}")


#: Files up to this size travel back in the probe so --diff can show them.
DIFF_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class File(Step):
    """A file with exact content, owner and mode. Secret files never show their content in a diff."""

    path: str
    content: bytes
    owner: str = "root"
    group: str = "root"
    mode: str = "644"
    secret: bool = False

    @property
    def name(self) -> str:
        return f"file {self.path}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def probe(self) -> str:
        p = q(self.path)
        text = f"if [ -f {p} ]; then sha256sum < {p} | cut -d' ' -f1; stat -c '%U:%G:%a:%s' {p}; "
        if not self.secret:
            text += f"[ $(stat -c %s {p}) -le {DIFF_LIMIT} ] && base64 -w0 < {p} && echo; "
        return text + "else echo missing; fi"

    def decide(self, output: str) -> Decision:
        lines = output.splitlines()
        want_meta = f"{self.owner}:{self.group}:{self.mode}"
        stage = _stage_name(self.path)
        install = (
            f"install -o {q(self.owner)} -g {q(self.group)} -m {self.mode} \"$STAGE/{stage}\" {q(self.path)}"
        )
        if self.path.endswith((".service", ".mount", ".automount", ".timer")) or (
                self.path.startswith("/etc/systemd/system/") and ".service.d/" in self.path):
            install += " && systemctl daemon-reload"
        if not lines or lines[0] == "missing":
            return Change(self.name, ChangeKind.CREATE, f"create {self.path}", install, (Upload(stage, data=self.content),),
                          self._diff(b"", new_file=True))
        digest, meta = lines[0].strip(), lines[1].rsplit(":", 1)[0] if len(lines) > 1 else ""
        if digest == self.digest:
            if meta == want_meta:
                return self.ok(f"file {self.path} matches ({self.owner}:{self.group} {self.mode})")
            return Change(self.name, ChangeKind.PERMISSIONS, f"fix owner/mode of {self.path} ({meta} -> {want_meta})",
                          f"chown {q(self.owner)}:{q(self.group)} {q(self.path)} && chmod {self.mode} {q(self.path)}")
        old = base64.b64decode(lines[2]) if len(lines) > 2 and lines[2].strip() else None
        return Change(self.name, ChangeKind.UPDATE, f"update {self.path}", install, (Upload(stage, data=self.content),), self._diff(old))

    def _diff(self, old: bytes | None, new_file: bool = False) -> str:
        if self.secret:
            return f"--- {self.path}\n+++ {self.path}\n(contents hidden: the file holds a secret)\n"
        if old is None:
            return f"--- {self.path}\n+++ {self.path}\n(old contents not shown: larger than {DIFF_LIMIT} bytes)\n"
        lines = difflib.unified_diff(
            old.decode(errors="replace").splitlines(keepends=True),
            self.content.decode(errors="replace").splitlines(keepends=True),
            fromfile="/dev/null" if new_file else self.path,
            tofile=self.path,
        )
        return "".join(lines)


@dataclass(frozen=True, slots=True)
class FstabLine(Step):
    """The /etc/fstab entry for one mount point, exactly this line (any other entry for it is replaced).

    fstab is what Raspberry Pi OS users read and edit, and systemd's fstab
    generator turns options like ``x-systemd.automount`` into the right units.
    """

    mount_point: str
    line: str

    @property
    def name(self) -> str:
        return f"fstab {self.mount_point}"

    def probe(self) -> str:
        return f"awk -v mp={q(self.mount_point)} '$1 !~ /^#/ && $2 == mp' /etc/fstab 2>/dev/null"

    def decide(self, output: str) -> Decision:
        have = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
        if have == [" ".join(self.line.split())]:
            return self.ok(f"/etc/fstab has the entry for {self.mount_point}")
        script = (
            f"tmp=$(mktemp) && awk -v mp={q(self.mount_point)} '$1 ~ /^#/ || $2 != mp' /etc/fstab > \"$tmp\""
            f" && printf '%s\\n' {q(self.line)} >> \"$tmp\" && install -m 644 \"$tmp\" /etc/fstab"
            " && rm -f \"$tmp\" && systemctl daemon-reload"
        )
        diff = "".join(f"-{line}\n" for line in have) + f"+{self.line}\n"
        return Change(self.name, ChangeKind.UPDATE if have else ChangeKind.CREATE,
                      f"{'update' if have else 'add'} the /etc/fstab entry for {self.mount_point}", script, diff=f"--- /etc/fstab\n+++ /etc/fstab\n{diff}")


@dataclass(frozen=True, slots=True)
class Service(Step):
    """A systemd unit enabled and running. Restarts when a step that notifies it changed."""

    unit: str
    enabled: bool = True
    running: bool = True

    @property
    def name(self) -> str:
        return f"service {self.unit}"

    def probe(self) -> str:
        return f"systemctl is-enabled {q(self.unit)} 2>/dev/null; systemctl is-active {q(self.unit)} 2>/dev/null"

    def decide(self, output: str) -> Decision:
        lines = (output.split() + ["unknown", "unknown"])[:2]
        enabled = lines[0] in ("enabled", "static", "generated", "enabled-runtime")
        active = lines[1] == "active"
        commands, what = [], []
        if self.enabled and not enabled:
            commands.append(f"systemctl enable {q(self.unit)}")
            what.append("enable")
        if self.running and not active:
            commands.append(f"systemctl start {q(self.unit)}")
            what.append("start")
        if not commands:
            runs = "running" if self.unit.endswith(".service") or "." not in self.unit else "active"
            state = [w for w, wanted in (("enabled", self.enabled), (runs, self.running)) if wanted]
            return self.ok(f"{self.unit} is {' and '.join(state)}" if state else f"{self.unit}: nothing wanted")
        kind = ChangeKind.START if "start" in what else ChangeKind.ENABLE
        return Change(self.name, kind, f"{' and '.join(what)} {self.unit}", " && ".join(commands))

    def restart(self) -> Change:
        return Change(f"restart {self.unit}", ChangeKind.RESTART, f"restart {self.unit} (its code or config changed)",
                      f"systemctl restart {q(self.unit)}")


@dataclass(frozen=True, slots=True)
class SambaUser(Step):
    """A Samba account with a given password. The node keeps only a SHA-256 of it, to notice changes."""

    user: str
    password: str = field(repr=False)

    @property
    def name(self) -> str:
        return f"samba user {self.user}"

    @property
    def marker(self) -> str:
        return f"/etc/piblade/samba-{self.user}.sha256"

    def probe(self) -> str:
        return (f"pdbedit -L 2>/dev/null | cut -d: -f1 | grep -qx {q(self.user)} && echo present || echo absent; "
                f"cat {q(self.marker)} 2>/dev/null")

    def decide(self, output: str) -> Decision:
        lines = output.split()
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        if lines[:2] == ["present", digest]:
            return self.ok(f"Samba user {self.user} exists with the cluster's password")
        stage = _stage_name(self.marker)
        script = (
            f'pw=$(cat "$STAGE/{stage}") && printf "%s\\n%s\\n" "$pw" "$pw" | smbpasswd -s -a {q(self.user)} >/dev/null'
            f" && smbpasswd -e {q(self.user)} >/dev/null"
            f" && echo {digest} > {q(self.marker)} && chmod 600 {q(self.marker)}"
        )
        exists = lines[:1] == ["present"]
        return Change(self.name, ChangeKind.UPDATE if exists else ChangeKind.CREATE,
                      f"{'set the password of' if exists else 'create'} Samba user {self.user}", script,
                      (Upload(stage, data=self.password.encode()),))


@dataclass(frozen=True, slots=True)
class PibladeVenv(Step):
    """piblade's venv on the node, which remembers in ``marker`` what it was installed from."""

    venv: str

    @property
    def name(self) -> str:
        return f"piblade in {self.venv}"

    @property
    def marker(self) -> str:
        return f"{self.venv}/.piblade-wheelhouse"


@dataclass(frozen=True, slots=True)
class VenvInstall(PibladeVenv):
    """A venv with piblade installed from a wheelhouse the controller pushed (nodes need no internet).

    The node remembers the manifest hash of what it installed; a different
    wheelhouse (new piblade code or dependencies) reinstalls and notifies services.
    """

    wheelhouse: str
    wheels: tuple[Path, ...]
    manifest: str
    requirement: str
    python: str = "python3"

    def probe(self) -> str:
        return (f"cat {q(self.marker)} 2>/dev/null || echo none; "
                f"ls {q(self.wheelhouse)} 2>/dev/null")

    def decide(self, output: str) -> Decision:
        lines = output.split()
        if lines and lines[0] == self.manifest:
            return self.ok(f"{self.venv} has the wheelhouse {self.manifest[:12]} installed")
        present = set(lines[1:])
        # A wheel's name pins its content, except piblade's own: new code keeps
        # the version number, so that wheel is pushed every time.
        uploads = tuple(Upload(w.name, local=w) for w in self.wheels
                        if w.name not in present or w.name.startswith("piblade-"))
        wh, venv = q(self.wheelhouse), q(self.venv)
        moves = "".join(f' && install -m 644 -o root -g root "$STAGE/{u.name}" {wh}/' for u in uploads)
        own = next((w.name for w in self.wheels if w.name.startswith("piblade-")), None)
        # New code keeps piblade's version number, so pip would call it "already
        # satisfied": piblade's own wheel is always reinstalled.
        reinstall = (f" && {venv}/bin/pip install -q --no-index --no-deps --force-reinstall {wh}/{q(own)}"
                     if own else "")
        script = (
            f"install -d -m 755 {wh}{moves}"
            f" && ([ -x {venv}/bin/python ] || {q(self.python)} -m venv {venv})"
            f" && {venv}/bin/pip install -q --no-index --find-links {wh} --upgrade {q(self.requirement)}"
            f"{reinstall}"
            f" && echo {self.manifest} > {q(self.marker)}"
        )
        size = sum(u.size for u in uploads)
        amount = f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
        wheels = f"{len(uploads)} wheel{'' if len(uploads) == 1 else 's'}"
        return Change(self.name, ChangeKind.INSTALL, f"install {self.requirement} ({wheels}, {amount} to push)", script,
                      uploads)


@dataclass(frozen=True, slots=True)
class SiteInstall(PibladeVenv):
    """A fresh venv whose site-packages the controller built and pushes as one tar (aarch64 nodes).

    :mod:`piblade.provision.sitetree` says why. The venv is made anew each time
    (``--without-pip``: nothing on the node installs into it), so nothing of an
    earlier install, pip's or this one's, is left in it. The node remembers the
    tree's key; the same key again pushes nothing.
    """

    tar: Path
    key: str
    #: The venv's ``lib/python<minor>``.
    minor: str
    python: str = "python3"

    def probe(self) -> str:
        return f"cat {q(self.marker)} 2>/dev/null || echo none"

    def decide(self, output: str) -> Decision:
        if output.split()[:1] == [self.key]:
            return self.ok(f"{self.venv} has the tree {self.key[5:17]} installed")
        venv, site = q(self.venv), q(f"{self.venv}/lib/python{self.minor}/site-packages")
        script = (
            f"rm -rf {venv} && {q(self.python)} -m venv --without-pip {venv}"
            f" && rm -rf {site} && tar -xf \"$STAGE/site.tar\" -C {venv} --no-same-owner site-packages bin"
            f" && mv {venv}/site-packages {site}"
            f" && echo {self.key} > {q(self.marker)}"
        )
        size = self.tar.stat().st_size
        return Change(self.name, ChangeKind.INSTALL,
                      f"install piblade (a tree built from the wheelhouse, {size / 2**20:.0f} MiB to push)", script,
                      (Upload("site.tar", local=self.tar),))


#: The cluster piblade keeps its results in: Debian's default cluster name, moved onto the NAS disk.
PG_CLUSTER = "main"


def pg_default_data(version: str) -> str:
    """Where Debian's ``postgresql`` package puts the cluster it creates on install (the SD card)."""
    return f"/var/lib/postgresql/{version}/{PG_CLUSTER}"


@dataclass(frozen=True, slots=True)
class PostgresCluster(Step):
    """Debian's PostgreSQL cluster ``<version>/main`` with its data directory where piblade wants it.

    Installing ``postgresql`` creates an empty ``main`` cluster on the SD card.
    piblade replaces it with one whose data lives on the NAS disk
    (``pg_createcluster -d``), but only while it is that empty default (its
    ``base/`` holds the three template and ``postgres`` databases and nothing
    else); a cluster with databases of its own is never dropped: the step fails
    and says so. The new cluster is UTF-8 whatever the node's locale (a node
    without one gets SQL_ASCII, whose text psycopg hands back as bytes).
    """

    version: str
    data: str
    port: int = 5432

    @property
    def name(self) -> str:
        return f"postgresql {self.version}/{PG_CLUSTER}"

    def probe(self) -> str:
        v, c = q(self.version), PG_CLUSTER
        return (f"line=$(pg_lsclusters -h 2>/dev/null | awk -v v={v} '$1 == v && $2 == \"{c}\"'); "
                'echo "cluster ${line:-none}"; '
                'data=$(echo "$line" | awk \'{print $6}\'); '
                '[ -n "$data" ] && echo "databases $(ls -1 "$data/base" 2>/dev/null | wc -l)"; true')

    def decide(self, output: str) -> Decision:
        fields: dict[str, list[str]] = {}
        for line in output.splitlines():
            key, _, rest = line.partition(" ")
            fields[key] = rest.split()
        cluster = fields.get("cluster", ["none"])
        where = f"{self.version}/{PG_CLUSTER}"
        root = q(str(Path(self.data).parent.parent))
        # g-s: the share's directory is setgid, which a new directory would inherit (and Ansible clears).
        create = (f"install -d -o postgres -g postgres -m 750 {root} && chmod g-s {root}"
                  f" && pg_createcluster -d {q(self.data)} -p {self.port} --encoding UTF8 --locale C.UTF-8"
                  f" --start-conf auto {q(self.version)} "
                  f"{PG_CLUSTER} >/dev/null && systemctl daemon-reload")
        if cluster == ["none"]:
            return Change(self.name, ChangeKind.CREATE, f"create PostgreSQL {where} with its data in {self.data}", create)
        have = cluster[5] if len(cluster) > 5 else "?"
        if have == self.data:
            return self.ok(f"PostgreSQL {where} keeps its data in {self.data}")
        databases = int(fields.get("databases", ["0"])[0] or 0)
        if have == pg_default_data(self.version) and databases <= 3:
            return Change(self.name, ChangeKind.UPDATE,
                          f"move PostgreSQL {where} from {have} (the empty cluster the package made) to {self.data}",
                          f"pg_dropcluster --stop {q(self.version)} {PG_CLUSTER} && {create}")
        message = (f"PostgreSQL {where} already keeps databases in {have}; piblade leaves them alone: "
                   f"move them to {self.data} yourself, or set piblade_results_host to another node")
        return Change(self.name, ChangeKind.UPDATE, f"move PostgreSQL {where} to {self.data}",
                      f"echo {q(message)} >&2; exit 1")


def scram_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a scram-sha-256 password (RFC 5802/7677), as ``pg_authid`` keeps it.

    Computed on the controller, so the password itself never reaches the node:
    the node gets (and PostgreSQL stores) only this verifier, the same string
    ``ALTER ROLE … PASSWORD`` would have made from the password.
    """
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def scram_matches(verifier: str, password: str) -> bool:
    """True if ``verifier`` (from ``pg_authid.rolpassword``) accepts ``password``."""
    try:
        head, keys = verifier.split("$", 2)[1:]
        iterations, salt = head.split(":")
        return hmac.compare_digest(scram_verifier(password, base64.b64decode(salt), int(iterations)).split("$")[2],
                                   keys)
    except (ValueError, IndexError):
        return False


@dataclass(frozen=True, slots=True)
class PostgresRole(Step):
    """A login role with the cluster's password and a database it owns, in PostgreSQL ``<version>/main``.

    The probe reads the role's SCRAM verifier as the ``postgres`` superuser (over
    the local socket, peer authentication) and :meth:`decide` checks it against
    the password on the controller: the password is never part of a probe, a
    script or an argv, and the change sends a verifier with a fresh salt as a
    staged SQL file on psql's stdin.
    """

    version: str
    user: str
    password: str = field(repr=False)
    database: str = ""

    @property
    def name(self) -> str:
        return f"postgresql role {self.user}"

    def _psql(self) -> str:
        return f"runuser -u postgres -- psql --cluster {q(self.version + '/' + PG_CLUSTER)} -X -q -At -d postgres"

    def probe(self) -> str:
        role, db = self.user.replace("'", "''"), (self.database or self.user).replace("'", "''")
        sql = (f"select 'role ' || coalesce(rolpassword, 'none') from pg_authid where rolname = '{role}'; "
               f"select 'owner ' || pg_get_userbyid(datdba) from pg_database where datname = '{db}'")
        return f"{self._psql()} -c {q(sql)} 2>/dev/null || echo down"

    def decide(self, output: str) -> Decision:
        lines = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
        database = self.database or self.user
        if scram_matches(lines.get("role", ""), self.password) and lines.get("owner") == self.user:
            return self.ok(f"role {self.user} logs in with the cluster's password (scram-sha-256) "
                           f"and owns database {database}")
        stage = _stage_name(f"postgres-role-{self.user}")
        role, db = '"' + self.user.replace('"', '""') + '"', '"' + database.replace('"', '""') + '"'
        literal = "'" + self.user.replace("'", "''") + "'"
        sql = (
            "\\set ON_ERROR_STOP on\n"
            f"select 'create role {role} login' where not exists "
            f"(select from pg_roles where rolname = {literal}) \\gexec\n"
            f"alter role {role} with login password '{scram_verifier(self.password, os.urandom(16))}';\n"
            f"select 'create database {db} owner {role} template template0 encoding ''UTF8''"
            " locale ''C.UTF-8''' where not exists "
            f"(select from pg_database where datname = '{database.replace(chr(39), chr(39) * 2)}') \\gexec\n"
            f"alter database {db} owner to {role};\n"
            f"revoke all on database {db} from public;\n"
        )
        ready = (f"i=0; until {self._psql()} -c 'select 1' >/dev/null 2>&1; do "
                 "i=$((i+1)); [ $i -lt 60 ] || { echo 'PostgreSQL did not start in 60 s' >&2; exit 1; }; sleep 1; done")
        if "role" not in lines:
            kind, summary = ChangeKind.CREATE, f"create role {self.user} and database {database}"
        else:
            kind, summary = ChangeKind.UPDATE, f"set the password of role {self.user} and its database {database}"
        if output.strip() == "down":
            kind, summary = ChangeKind.CREATE, f"create role {self.user} and database {database} (once PostgreSQL runs)"
        return Change(self.name, kind, summary, f'{ready} && {self._psql()} < "$STAGE/{stage}" >/dev/null',
                      (Upload(stage, data=sql.encode()),))
