"""NAS storage: the cluster's SMB share from the controller (`piblade nas`, `submit --over`).

Modules, from the bottom up:

* :mod:`~piblade.nas.paths` — share paths and glob patterns (pure; refuses ``..`` escapes)
* :mod:`~piblade.nas.target` — which server/share/user and the password (resolution order below)
* :mod:`~piblade.nas.share` — the :class:`Share` operations, and :class:`LocalShare` (a directory)
* :mod:`~piblade.nas.smb` — :class:`SmbShare`, the SMB seam: the only importer of smbprotocol,
  with :mod:`~piblade.nas._wire` (pipelined, lean encrypted transfers) and
  :mod:`~piblade.nas._compound` (many small files per compound request, several in flight)
* :mod:`~piblade.nas.transfer` — put/get of files and trees, skipping identical files
* :mod:`~piblade.nas.pattern` — ``photos/**/*.jpg`` resolved on a share

Which share :func:`open_share` opens:

1. With ``--server HOST[:PORT]`` (or ``PIBLADE_SMB_SERVER``) or ``-i INVENTORY`` (or
   ``PIBLADE_INVENTORY``): an SMB server. Each setting is taken from the first of: the command
   line, the environment, the inventory, the default —
   server: ``--server`` / ``PIBLADE_SMB_SERVER`` / the ``nas`` node's address (port 445);
   share: ``--share`` / ``PIBLADE_SMB_SHARE`` / the nas node's ``piblade_share`` / ``piblade``;
   user: ``--user`` / ``PIBLADE_SMB_USER`` / ``piblade`` (the account provisioning creates).
2. Neither, but a local cluster exists (``piblade local up``): its data directory, which is
   what its workers see as the share (no SMB involved).
3. Otherwise an error that says what to pass.

Password (SMB only), never a command-line argument and never printed or logged:
``PIBLADE_SMB_PASSWORD_FILE`` (mode 0600) → ``PIBLADE_SMB_PASSWORD`` → with an inventory, the
Samba password ``piblade provision`` generated for the cluster (kept with its state).

Which cluster is the caller's :class:`~piblade.context.ClusterContext`, resolved once by the CLI.

SMB3 with encryption is required unless ``encrypt=False`` (``--no-encrypt``), which still lets
the server encrypt (Samba with ``server smb encrypt = desired`` does) but accepts a plain
SMB3 session, signed as smbprotocol requires by default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from piblade.nas.errors import NasError
from piblade.nas.share import DiskUsage, LocalShare, RemoteEntry, Share
from piblade.nas.target import SERVER_ENV, SmbTarget, resolve_target

if TYPE_CHECKING:
    from piblade.context import ClusterContext

__all__ = [
    "DiskUsage", "LocalShare", "NasError", "RemoteEntry", "Share", "SmbTarget", "open_share", "open_target",
    "resolve_share",
]


def resolve_share(
    cluster: ClusterContext,
    *,
    server: str | None = None,
    share: str | None = None,
    user: str | None = None,
    encrypt: bool = True,
) -> SmbTarget | Path:
    """The SMB target to use, or the local cluster's data directory (see the order above)."""
    if server or os.environ.get(SERVER_ENV) or not cluster.is_local:
        return resolve_target(cluster=cluster, server=server, share=share, user=user, encrypt=encrypt)
    data = cluster.paths.data_dir
    if data.is_dir():
        return data
    return resolve_target(server=None)  # raises "no NAS to talk to" with the hint


@contextlib.contextmanager
def open_share(
    cluster: ClusterContext,
    *,
    server: str | None = None,
    share: str | None = None,
    user: str | None = None,
    encrypt: bool = True,
    timeout: float = 10.0,
) -> Iterator[Share]:
    """Open the share the arguments name, in this process; closed when the block ends."""
    where = resolve_share(cluster, server=server, share=share, user=user, encrypt=encrypt)
    if isinstance(where, Path):
        yield LocalShare(where)
        return
    from piblade.nas.smb import SmbShare

    with SmbShare(where, timeout=timeout) as smb:
        yield smb


def open_target(target: SmbTarget, timeout: float = 10.0) -> contextlib.AbstractContextManager[Share]:
    """Open an already resolved SMB target (tests, benchmarks)."""
    from piblade.nas.smb import SmbShare

    return SmbShare(target, timeout=timeout)

