"""A real Samba server for tests and benchmarks, configured like a provisioned NAS.

The config is piblade's own provisioning template (``smb.conf.j2``: SMB3 only,
no guest, ``server smb encrypt = desired``) plus a second ``[global]`` section
with what a throwaway server needs: loopback and a free port, and every
directory (private, lock, state, cache, pid, ncalrpc, logs) under a temporary
root. Samba merges repeated ``[global]`` sections, so the template is used
unchanged. The Samba account is the user running the tests (smbd maps SMB
users to Unix accounts, and a throwaway server should not create one).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from piblade import local
from piblade.nas.target import SmbTarget

SMBD = "/usr/sbin/smbd"
SHARE = "piblade"


@dataclass
class SambaServer:
    root: Path
    share_dir: Path
    conf: Path
    port: int
    user: str
    password: str
    password_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, *, password: str | None = None, share: str = SHARE, encrypt: bool = True) -> SmbTarget:
        return SmbTarget("127.0.0.1", share, self.user, self.password if password is None else password,
                         self.port, encrypt, "test")

    def env(self) -> dict[str, str]:
        """Environment for a `piblade nas` / `piblade submit --over` subprocess talking to this server."""
        return {"PIBLADE_SMB_SERVER": self.address, "PIBLADE_SMB_SHARE": SHARE, "PIBLADE_SMB_USER": self.user,
                "PIBLADE_SMB_PASSWORD_FILE": str(self.password_file)}

    def status(self) -> str:
        """``smbstatus --json``: the server's own view of sessions (dialect, encryption, signing)."""
        return subprocess.run(["smbstatus", "-s", str(self.conf), "-b", "--json"], capture_output=True, text=True,
                              check=True).stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def render_config(root: Path, share_dir: Path, port: int, user: str) -> str:
    from piblade.provision.roles import render

    base = render("smb.conf.j2", {"piblade_share": SHARE, "piblade_nas_path": str(share_dir),
                                  "piblade_user": user}).decode()
    dirs = {name: root / name for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "logs")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return base + f"""
# Test-only settings (tests/integration/smbd.py): a throwaway server on loopback.
[global]
   smb ports = {port}
   interfaces = 127.0.0.1
   bind interfaces only = yes
   disable netbios = yes
   private dir = {dirs['private']}
   lock directory = {dirs['lock']}
   state directory = {dirs['state']}
   cache directory = {dirs['cache']}
   pid directory = {dirs['pid']}
   ncalrpc dir = {dirs['ncalrpc']}
   passdb backend = tdbsam:{dirs['private'] / 'passdb.tdb'}
   log file = {dirs['logs'] / 'log.%m'}
   usershare path =
"""


def start_smbd(root: Path, share_dir: Path | None = None) -> SambaServer:
    """Start smbd in the foreground on a free loopback port, serving ``share_dir`` as [piblade]."""
    if not Path(SMBD).exists() or shutil.which("smbpasswd") is None:
        raise RuntimeError("Samba is not installed: run `make test`, which installs samba and smbclient")
    if os.geteuid() != 0:
        raise RuntimeError("smbd must run as root to serve files as the test user: run the tests as root")
    root.mkdir(parents=True, exist_ok=True)
    share_dir = share_dir or root / "share"
    share_dir.mkdir(parents=True, exist_ok=True)
    port = local.free_port()
    user = getpass.getuser()
    password = "pw-" + os.urandom(9).hex()
    conf = root / "smb.conf"
    conf.write_text(render_config(root, share_dir, port, user))
    subprocess.run(["smbpasswd", "-c", str(conf), "-a", "-s", user], input=f"{password}\n{password}\n",
                   text=True, check=True, capture_output=True)
    password_file = root / "samba.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    log = (root / "smbd.out").open("wb")
    proc = subprocess.Popen([SMBD, "--foreground", "--no-process-group", "--debug-stdout", "-s", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("smbd did not start:\n" + (root / "smbd.out").read_text()[-3000:]) from None
            time.sleep(0.05)
    return SambaServer(root, share_dir, conf, port, user, password, password_file, proc)
