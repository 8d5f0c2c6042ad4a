"""The SSH seam: the only module of piblade that imports Fabric and paramiko.

Two things Fabric does not do for us, and this module does:

* **Host keys are verified.** Fabric installs paramiko's ``AutoAddPolicy`` and
  never reads ``known_hosts``, so it would talk to any machine that answers on
  the node's address. Here the known_hosts file is loaded and an unknown host is
  refused with its fingerprint and the command that trusts it; a *changed* key is
  always refused. ``--accept-new`` trusts unknown hosts (never changed ones) and
  says so, like OpenSSH's ``StrictHostKeyChecking=accept-new``.
* **Nagle is off.** paramiko leaves TCP_NODELAY unset, which costs ≈ 40 ms per
  command round trip; we hand it a socket with TCP_NODELAY set (≈ 2 ms).

Commands run as one ``sh -c`` script per call; with ``become`` through ``sudo -n``
so the whole script (not just its first command) runs as root.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import paramiko
from fabric import Connection

from piblade.errors import PibladeError


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
    known_hosts: Path = Path("~/.ssh/known_hosts")

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


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_known_hosts_lock = threading.Lock()


def append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Add one host key line to a known_hosts file (created 0600 if missing)."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _known_hosts_lock:
        existing = path.read_text() if path.exists() else ""
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        if line not in existing:
            with path.open("a") as handle:
                if existing and not existing.endswith("\n"):
                    handle.write("\n")
                handle.write(line)
            path.chmod(0o600)


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyUnknown(
            f"{self.target.name} ({hostname}): unknown host key {key.get_name()} {fingerprint(key)}",
            hint=f"if that fingerprint is right, trust it with `piblade trust {self.target.name}` "
            "(or run provision with --accept-new)",
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Trust a host seen for the first time, write it down, and remember that we did."""

    def __init__(self, target: SshTarget, accepted: list[str]) -> None:
        self.target = target
        self.accepted = accepted

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        append_known_host(self.target.known_hosts, self.target.host_key_name, key)
        client.get_host_keys().add(self.target.host_key_name, key.get_name(), key)
        self.accepted.append(f"{key.get_name()} {fingerprint(key)}")


def scan_host_key(target: SshTarget, timeout: float = 10.0) -> paramiko.PKey:
    """Fetch a node's host key without authenticating (for `piblade trust`)."""
    sock = _socket(target, timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
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

    def open(self) -> Self:
        target = self.target
        kwargs: dict[str, object] = {"sock": _socket(target, self.timeout), "banner_timeout": self.timeout,
                                     "auth_timeout": self.timeout}
        if target.key_file:
            kwargs["key_filename"] = str(Path(target.key_file).expanduser())
        conn = Connection(target.address, user=target.user, port=target.port, connect_kwargs=kwargs)
        conn.client.set_missing_host_key_policy(self._policy)
        known = target.known_hosts.expanduser()
        if known.exists():
            conn.client.get_host_keys().load(str(known))
        try:
            conn.open()
        except SshError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                f"{target.name} ({target.address}): HOST KEY CHANGED — now {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known_hosts says {fingerprint(exc.expected_key)}",
                hint="this may be a different machine at that address. If the node was reinstalled, remove "
                f"its old key with `ssh-keygen -R {target.host_key_name} -f {known}` and trust it again",
            ) from exc
        except paramiko.AuthenticationException as exc:
            who = f"{target.user}@{target.address}" if target.user else target.address
            raise SshError(
                f"{target.name}: SSH authentication failed for {who}",
                hint="check ansible_user and ansible_ssh_private_key_file in the inventory",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"{target.name}: SSH connection failed: {exc}") from exc
        self._conn = conn
        return self

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
        if as_root and self.target.user not in (None, "root"):
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
