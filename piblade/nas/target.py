"""Which SMB server, share and account to use, and the password. Pure apart from reading files.

Resolution, per field, first match wins (the same for `piblade nas` and `piblade submit --over`):

==========  ==================================  ==========================  =========================
field       command line / environment          inventory (``-i``)          default
==========  ==================================  ==========================  =========================
server      ``--server HOST[:PORT]`` or         the ``nas`` node's address  none: an error says what
            ``PIBLADE_SMB_SERVER``              (port 445)                  to pass
share       ``--share`` or ``PIBLADE_SMB_SHARE`` the nas node's             ``piblade``
                                                ``piblade_share``
user        ``--user`` or ``PIBLADE_SMB_USER``  ``piblade`` (what           ``piblade``
                                                provisioning creates)
==========  ==================================  ==========================  =========================

The password is never a command-line argument (it would show in ``ps`` and in
shell history) and never printed: ``PIBLADE_SMB_PASSWORD_FILE`` (a file of mode
0600), else ``PIBLADE_SMB_PASSWORD``, else — with an inventory — the cluster's
Samba password that ``piblade provision`` generated and put on the NAS
(:attr:`piblade.context.ClusterContext.samba_password_file`).

Encryption is required unless the caller passes ``encrypt=False`` (``--no-encrypt``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piblade import envvars
from piblade.errors import SecretError
from piblade.nas.errors import NasError
from piblade.state import read_secret

if TYPE_CHECKING:
    from piblade.context import ClusterContext

SERVER_ENV = envvars.SMB_SERVER.name
SHARE_ENV = envvars.SMB_SHARE.name
USER_ENV = envvars.SMB_USER.name
PASSWORD_FILE_ENV = envvars.SMB_PASSWORD_FILE.name
PASSWORD_ENV = envvars.SMB_PASSWORD.name

#: The Samba account provisioning creates on the NAS (piblade.provision.roles.USER).
DEFAULT_USER = "piblade"
DEFAULT_SHARE = "piblade"
DEFAULT_PORT = 445


@dataclass(frozen=True, slots=True)
class SmbTarget:
    """Everything needed to open a session on one share. ``password`` never appears in a repr."""

    server: str
    share: str
    user: str
    password: str = field(repr=False)
    port: int = DEFAULT_PORT
    encrypt: bool = True
    source: str = ""  # where the server came from, for messages: "--server", "inventory home.yml"

    @property
    def display(self) -> str:
        """``//server:port/share`` as people write it (no credentials)."""
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"//{self.server}{port}/{self.share}"


def parse_server(value: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port)."""
    text = value.strip()
    if not text:
        raise NasError("--server is empty", hint="give HOST or HOST:PORT, e.g. --server 192.168.1.10")
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(value, rest[1:])
    elif text.count(":") == 1:
        host, raw_port = text.split(":")
        port = _port(value, raw_port)
    if not host:
        raise NasError(f"--server {value!r} has no host name", hint="give HOST or HOST:PORT")
    return host, port


def _port(value: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise NasError(f"--server {value!r}: {raw!r} is not a port number", hint="ports are 1..65535")
    return port


def read_password(fallback_file: Path | None) -> str:
    """The password by the documented order; never from the command line."""
    from_file = os.environ.get(PASSWORD_FILE_ENV)
    if from_file:
        return read_secret(Path(from_file).expanduser())
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if fallback_file is not None:
        return read_secret(fallback_file)
    raise SecretError(
        "no Samba password given",
        hint=f"set {PASSWORD_FILE_ENV} to a file of mode 0600 holding it (or {PASSWORD_ENV}); "
        "with -i INVENTORY piblade uses the password `piblade provision` generated",
    )


def resolve_target(
    *,
    cluster: ClusterContext | None = None,
    server: str | None = None,
    share: str | None = None,
    user: str | None = None,
    encrypt: bool = True,
) -> SmbTarget:
    """Apply the resolution order above. ``server``/``share``/``user`` are the CLI values (None if not given)."""
    server = server or os.environ.get(SERVER_ENV) or None
    share = share or os.environ.get(SHARE_ENV) or None
    user = user or os.environ.get(USER_ENV) or None
    password_file: Path | None = None
    source = "--server" if server else ""
    if cluster is not None and cluster.inventory is not None:
        password_file = cluster.samba_password_file
        nas = cluster.inventory.nas
        if server is None:
            if nas is None:
                raise NasError(
                    f"{cluster.inventory.source} has no NAS node",
                    hint="put one host in the `nas` group, or pass --server HOST[:PORT]",
                )
            server = nas.address
            source = f"inventory {cluster.inventory.source} (nas node {nas.name})"
        if nas is not None:
            share = share or nas.settings.share
    if server is None:
        raise NasError(
            "no NAS to talk to",
            hint=f"pass -i INVENTORY (its `nas` node), or --server HOST[:PORT] --share NAME --user USER "
            f"(or {SERVER_ENV}, {SHARE_ENV}, {USER_ENV})",
        )
    host, port = parse_server(server)
    return SmbTarget(
        server=host,
        port=port,
        share=share or DEFAULT_SHARE,
        user=user or DEFAULT_USER,
        password=read_password(password_file),
        encrypt=encrypt,
        source=source,
    )
