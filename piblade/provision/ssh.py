"""The SSH seam: the only module of piblade that imports Fabric and paramiko.

Everything that knows an SSH library is here: sessions, host-key lookups,
fingerprints and the compare-and-add of `piblade trust`. Callers see
:class:`SshTarget`, :class:`HostKey` and the :class:`SshError` tree, never a
paramiko type.

Three things Fabric does not do for us, and this module does:

* **Host keys are verified.** Fabric installs paramiko's ``AutoAddPolicy`` and
  never reads ``known_hosts``, so it would talk to any machine that answers on
  the node's address. Here the known_hosts file is loaded and an unknown host is
  refused with its fingerprint and the command that trusts it; a *changed* key is
  always refused. ``--accept-new`` trusts unknown hosts (never changed ones) and
  says so, like OpenSSH's ``StrictHostKeyChecking=accept-new``.
* **Nagle is off.** paramiko leaves TCP_NODELAY unset, which costs ≈ 40 ms per
  command round trip; we hand it a socket with TCP_NODELAY set (≈ 2 ms).
* **Only the inventory says how to reach a node.** Fabric reads the user's
  ``~/.ssh/config`` (User, Port, HostName, IdentityFile, ProxyJump, ...) and
  ``~/.fabric.yaml`` for every host; we read neither, so a run does the same on
  every controller and for every user, and the tests control all of it. The
  target's address, port, user (``ansible_host``/``ansible_port``/``ansible_user``,
  else your login name, as ``ssh`` without a config file) and key decide. With
  ``ansible_ssh_private_key_file`` that key is the only one offered (as
  ``IdentitiesOnly``: an agent full of keys can otherwise exhaust the server's
  MaxAuthTries); without it, the ssh-agent and ``~/.ssh/id_*`` are tried, as
  ``ssh`` does.

Commands run as one ``sh -c`` script per call; with ``become`` through ``sudo -n``
so the whole script (not just its first command) runs as root.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import io
import shlex
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import paramiko
from fabric import Config, Connection

from piblade.errors import PibladeError

#: Where host keys are checked when the inventory sets no ``piblade_known_hosts``.
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class SshError(PibladeError):
    """A node could not be reached or refused us."""


class HostKeyUnknown(SshError):
    pass


class HostKeyChanged(SshError):
    pass


@dataclass(frozen=True, slots=True)
class SshTarget:
    """How to reach one node. ``name`` is the inventory name, ``address`` what we connect to."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: Path | None = None
    become: bool = False
    known_hosts: Path = Path(DEFAULT_KNOWN_HOSTS)

    @property
    def host_key_name(self) -> str:
        """The name under which known_hosts lists this host (OpenSSH's format)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass(frozen=True, slots=True)
class ScriptResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class HostKey:
    """One SSH host key, as known_hosts stores it: its type and its base64 blob."""

    kind: str  # e.g. ssh-ed25519
    blob: str  # base64, as in known_hosts

    @classmethod
    def of(cls, key: paramiko.PKey) -> HostKey:
        return cls(key.get_name(), key.get_base64())

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def __str__(self) -> str:
        return f"{self.kind} {self.fingerprint}"

    def line(self, name: str) -> str:
        """Its known_hosts line for a host listed as ``name``."""
        return f"{name} {self.kind} {self.blob}\n"


def known_host_keys(known_hosts: Path, name: str) -> tuple[HostKey, ...]:
    """The keys a known_hosts file lists for ``name`` (``addr`` or ``[addr]:port``), hashed names included."""
    path = known_hosts.expanduser()
    if not path.exists():
        return ()
    try:
        found: Mapping[str, paramiko.PKey] = paramiko.HostKeys(str(path)).lookup(name) or {}
    except (OSError, paramiko.SSHException) as exc:
        raise SshError(f"cannot read {path}: {exc}", hint="fix or remove the broken line in that file") from exc
    return tuple(HostKey.of(key) for _, key in sorted(found.items()))


def known_hosts_lines(known_hosts: Path, address: str, port: int = 22) -> str:
    """known_hosts lines for a host, listed by its bare address (for a client such as sshfs on a node)."""
    name = address if port == 22 else f"[{address}]:{port}"
    return "".join(key.line(address) for key in known_host_keys(known_hosts, name))


_known_hosts_lock = threading.Lock()


def append_known_host(path: Path, name: str, key: HostKey) -> None:
    """Add one host key line to a known_hosts file (created 0600 if missing)."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _known_hosts_lock:
        existing = path.read_text() if path.exists() else ""
        line = key.line(name)
        if line not in existing:
            with path.open("a") as handle:
                if existing and not existing.endswith("\n"):
                    handle.write("\n")
                handle.write(line)
            path.chmod(0o600)


def _changed(target: SshTarget, offered: HostKey, known: HostKey) -> HostKeyChanged:
    path = target.known_hosts.expanduser()
    return HostKeyChanged(
        f"{target.name} ({target.address}): HOST KEY CHANGED — now {offered}, known_hosts says "
        f"{known.fingerprint}",
        hint="this may be a different machine at that address. If the node was reinstalled, remove "
        f"its old key with `ssh-keygen -R {target.host_key_name} -f {path}` and trust it again",
    )


def host_key_status(target: SshTarget, timeout: float = 10.0) -> tuple[HostKey, bool]:
    """The key the node offers, and whether its known_hosts already trusts it (for `piblade trust`).

    A known_hosts entry of the same type with another key is refused
    (:class:`HostKeyChanged`), as when connecting.
    """
    offered = scan_host_key(target, timeout)
    for known in known_host_keys(target.known_hosts, target.host_key_name):
        if known.kind == offered.kind:
            if known == offered:
                return offered, True
            raise _changed(target, offered, known)
    return offered, False


def trust_host_key(target: SshTarget, key: HostKey) -> Path:
    """Write a key (shown to and confirmed by the user) into the target's known_hosts; returns that file."""
    append_known_host(target.known_hosts, target.host_key_name, key)
    return target.known_hosts.expanduser()


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyUnknown(
            f"{self.target.name} ({hostname}): unknown host key {HostKey.of(key)}",
            hint=f"if that fingerprint is right, trust it with `piblade trust {self.target.name}` "
            "(or run provision with --accept-new)",
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time, write it down, and remember that we did."""

    def __init__(self, target: SshTarget, accepted: list[str]) -> None:
        self.target = target
        self.accepted = accepted

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        append_known_host(self.target.known_hosts, self.target.host_key_name, HostKey.of(key))
        client.get_host_keys().add(self.target.host_key_name, key.get_name(), key)
        self.accepted.append(str(HostKey.of(key)))


def scan_host_key(target: SshTarget, timeout: float = 10.0) -> HostKey:
    """Fetch a node's host key without authenticating (for `piblade trust`)."""
    sock = _socket(target, timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return HostKey.of(transport.get_remote_server_key())
    except (paramiko.SSHException, OSError) as exc:
        raise SshError(f"{target.name}: no SSH server answered at {target.address}:{target.port} ({exc})") from exc
    finally:
        transport.close()


def _socket(target: SshTarget, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((target.address, target.port), timeout=timeout)
    except OSError as exc:
        raise SshError(
            f"{target.name}: cannot reach {target.address}:{target.port} ({exc.strerror or exc})",
            hint="is the node powered on and on the network? check ansible_host in the inventory",
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _config() -> Config:
    """Fabric's settings with nothing read from disk: no ~/.ssh/config, /etc/ssh/ssh_config or ~/.fabric.*.

    ``lazy`` skips Fabric's (invoke's) config files; an explicit, empty SSHConfig
    skips the OpenSSH ones.
    """
    return Config(lazy=True, ssh_config=paramiko.SSHConfig(), overrides={"load_ssh_configs": False})


class Session:
    """One verified SSH connection to one node."""

    def __init__(self, target: SshTarget, *, accept_new: bool = False, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self.accepted: list[str] = []
        self._policy: paramiko.MissingHostKeyPolicy = (
            _AcceptNew(target, self.accepted) if accept_new else _RefuseUnknown(target)
        )
        self._conn: Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @property
    def login(self) -> str:
        """Who the session logs in as: the inventory's ansible_user, else your login name (as ssh does)."""
        return self.target.user or getpass.getuser()

    def open(self) -> Self:
        target = self.target
        conn = Connection(target.address, user=self.login, port=target.port,
                          config=_config(), connect_kwargs=self._connect_kwargs())
        conn.client.set_missing_host_key_policy(self._policy)
        known = target.known_hosts.expanduser()
        if known.exists():
            conn.client.get_host_keys().load(str(known))
        try:
            try:
                conn.open()
            except BaseException:
                conn.close()  # its socket and paramiko's transport thread must not outlive a refusal
                raise
        except SshError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise _changed(target, HostKey.of(exc.key), HostKey.of(exc.expected_key)) from exc
        except paramiko.PasswordRequiredException as exc:
            raise SshError(
                f"{target.name}: the key {target.key_file} needs a passphrase",
                hint="piblade does not ask for passphrases: name a key without one in ansible_ssh_private_key_file, "
                "or leave that unset so your ssh-agent is used",
            ) from exc
        except paramiko.AuthenticationException as exc:
            who = f"{target.user}@{target.address}" if target.user else target.address
            raise SshError(
                f"{target.name}: SSH authentication failed for {who}",
                hint="check ansible_user and ansible_ssh_private_key_file in the inventory "
                "(piblade does not read ~/.ssh/config)",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"{target.name}: SSH connection failed: {exc}") from exc
        self._conn = conn
        return self

    def _connect_kwargs(self) -> dict[str, object]:
        target = self.target
        kwargs: dict[str, object] = {"banner_timeout": self.timeout, "auth_timeout": self.timeout}
        if target.key_file is not None:
            key = Path(target.key_file).expanduser()
            if not key.is_file():
                raise SshError(f"{target.name}: the SSH key {key} does not exist",
                               hint="check ansible_ssh_private_key_file in the inventory")
            # This key only: no agent, no ~/.ssh/id_* (like OpenSSH's IdentitiesOnly).
            kwargs.update(key_filename=str(key), allow_agent=False, look_for_keys=False)
        kwargs["sock"] = _socket(target, self.timeout)
        return kwargs

    def __enter__(self) -> Self:
        return self.open() if self._conn is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    def script(self, text: str, *, timeout: float | None = 600, root: bool | None = None) -> ScriptResult:
        """Run a POSIX shell script on the node, as root when the target says ``become``."""
        as_root = self.target.become if root is None else root
        command = "/bin/sh -c " + shlex.quote(text)
        if as_root and self.login != "root":
            command = "sudo -n " + command
        try:
            result = self.conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
        except Exception as exc:  # invoke's CommandTimedOut, paramiko errors
            raise SshError(f"{self.target.name}: command failed to run: {exc}") from exc
        return ScriptResult(result.exited, result.stdout, result.stderr)

    def put_bytes(self, data: bytes, remote: str) -> None:
        """Upload bytes to a path the login user can write (then move it into place as root)."""
        if self._sftp is None:
            self._sftp = self.conn.client.open_sftp()
        self._sftp.putfo(io.BytesIO(data), remote)

    def put_file(self, local: Path, remote: str) -> None:
        if self._sftp is None:
            self._sftp = self.conn.client.open_sftp()
        self._sftp.put(str(local), remote)
