"""A private PostgreSQL server in a directory: the local cluster's results database (and the tests').

Debian installs the server binaries under ``/usr/lib/postgresql/<version>/bin``
(not on PATH); :func:`find_bin_dir` picks the newest. The server is started the
way redis-server is: a child process with its own port on 127.0.0.1 and its
unix socket next to its data, stopped with SIGTERM (a *smart* shutdown that
waits for clients; :data:`STOP_SIGNAL` is the *fast* one that ends them).

* **First start runs initdb** with ``scram-sha-256`` for every connection and the
  superuser's password from a 0600 file (``--pwfile``), so it is never in argv.
  The superuser is ``piblade`` and owns the ``piblade`` database.
* **PostgreSQL refuses to run as root.** Run by root (a container, ``make
  demo`` in a VM), the server starts inside a user namespace in which root is an
  ordinary user (``unshare --user --map-user``): it still owns its files (they
  are root's outside), keeps the state directory 0700, and needs no system
  account or chown.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from piblade.errors import LocalClusterError

#: The uid and gid root is mapped to inside the server's user namespace.
_MAPPED_ID = "1000"
#: SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the data is checkpointed.
STOP_SIGNAL = signal.SIGINT
DATABASE = "piblade"
SUPERUSER = "piblade"


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and postgres, else PATH's."""
    found: list[tuple[int, Path]] = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if re.fullmatch(r"\d+", candidate.parent.name) and (candidate / "postgres").is_file() and (
            candidate / "initdb"
        ).is_file():
            found.append((int(candidate.parent.name), candidate))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb"), shutil.which("postgres")
    if on_path[0] and on_path[1]:
        return Path(on_path[0]).parent
    raise LocalClusterError(
        "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/postgres)",
        hint="run `make demo`, or: echo 'create_main_cluster = false' | sudo tee -a "
        "/etc/postgresql-common/createcluster.conf && sudo apt-get install postgresql",
    )


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv``, run where PostgreSQL accepts it: as ourselves, or (as root) in a user namespace."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise LocalClusterError(
            "PostgreSQL does not run as root, and unshare (util-linux) is missing to run it as another user",
            hint="install util-linux, or run piblade as an ordinary user",
        )
    return [unshare, "--user", f"--map-user={_MAPPED_ID}", f"--map-group={_MAPPED_ID}", *argv]


@dataclass(frozen=True, slots=True)
class PgServer:
    """One private server: its data directory (which also holds its socket and log) and password file."""

    root: Path
    password_file: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def marker(self) -> Path:
        """Written once initdb and the database both succeeded: a killed first start is redone."""
        return self.root / "initialised"

    @property
    def initialised(self) -> bool:
        return self.marker.is_file()

    def initdb(self, *, sync: bool = True) -> bool:
        """Create the cluster and its ``piblade`` database the first time (True), or leave it alone (False)."""
        if self.initialised:
            return False
        from piblade.state import ensure_secret, private_dir

        ensure_secret(self.password_file)
        private_dir(self.root)
        if self.data_dir.exists():  # a half-made cluster from an initdb that was killed
            shutil.rmtree(self.data_dir)
        argv = [
            str(find_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=scram-sha-256", f"--pwfile={self.password_file}", "-E", "UTF8", "--no-locale",
        ]  # fmt: skip
        if not sync:
            argv.append("--no-sync")
        self._run("initdb", argv, "")
        # The database is created in single-user mode: no server, no port, no password needed yet.
        single = [str(find_bin_dir() / "postgres"), "--single", "-D", str(self.data_dir), "postgres"]
        self._run("creating the database", single, f'CREATE DATABASE "{DATABASE}" OWNER "{SUPERUSER}";\n')
        self.marker.write_text("")
        return True

    def _run(self, what: str, argv: list[str], stdin: str) -> None:
        result = subprocess.run(_as_server_user(argv), input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0 or "ERROR:" in result.stderr:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise LocalClusterError(
                f"{what} failed in {self.data_dir}: {(result.stderr or result.stdout).strip()[-500:]}",
                hint="see the message above; the half-made data directory was removed",
            )

    def argv(self, port: int, *, fsync: bool = True) -> list[str]:
        """The command line of the server: loopback only, its own port, its socket beside its data."""
        argv = [
            str(find_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "password_encryption=scram-sha-256", "-c", "max_connections=40",
            "-c", "shared_buffers=32MB", "-c", "logging_collector=off",
        ]  # fmt: skip
        if not fsync:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return _as_server_user(argv)
