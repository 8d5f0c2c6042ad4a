"""systemd on this machine (not on a node): is it the init system, and ``systemctl`` for one unit.

Nodes are reached over SSH; this is for the controller, which is the machine
piblade runs on. A machine without systemd as PID 1 (a container, WSL
without systemd) has none of this, and piblade's own supervisor runs the
controller's services instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from piblade.errors import PibladeError


def running() -> bool:
    """True when systemd is this machine's init system (what ``sd_booted()`` checks)."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def lingers(uid: int) -> bool:
    """True when the user's own systemd instance starts at boot, without a login."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return Path("/var/lib/systemd/linger", name).exists()


def _run(user_manager: bool, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess[str]:
    argv = ["systemctl", *(["--user"] if user_manager else []), *args]
    env = dict(os.environ)
    if user_manager and "XDG_RUNTIME_DIR" not in env:
        env["XDG_RUNTIME_DIR"] = f"/run/user/{os.getuid()}"  # a login over plain ssh may lack it
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def systemctl(user_manager: bool, *args: str, timeout: float = 150.0) -> str:
    """Run ``systemctl [--user] ARGS``; its output, or a clear error in systemctl's own words."""
    proc = _run(user_manager, args, timeout)
    if proc.returncode != 0:
        where = "journalctl" + (" --user" if user_manager else "") + f" -u {args[-1]}"
        raise PibladeError(
            f"`systemctl {'--user ' if user_manager else ''}{' '.join(args)}` failed: "
            f"{(proc.stderr or proc.stdout).strip() or f'exit {proc.returncode}'}",
            hint=f"see `{where}`",
        )
    return proc.stdout


def main_pid(user_manager: bool, unit: str) -> int:
    """The unit's main process, 0 when it is not running."""
    out = _run(user_manager, ("show", "--property=MainPID", "--value", unit), 30).stdout.strip()
    return int(out) if out.isdigit() else 0


def enabled(user_manager: bool, unit: str) -> bool:
    return _run(user_manager, ("is-enabled", "--quiet", unit), 30).returncode == 0


def failed(user_manager: bool, unit: str) -> bool:
    """True when systemd gave up on the unit (its start failed, or it kept dying)."""
    return _run(user_manager, ("is-failed", "--quiet", unit), 30).returncode == 0
