"""arm64 nodes on an x86_64 host: qemu-user-static through the kernel's binfmt_misc.

This is the testbed's seam to binfmt_misc. A Pi runs aarch64; to boot such a
node here, the kernel must hand every aarch64 ELF file to ``qemu-aarch64``.
Debian's ``qemu-user-static`` ships the rule (``/usr/lib/binfmt.d/qemu-aarch64.conf``)
but, with no systemd on the host, nothing mounts binfmt_misc or registers it.
The rule carries the ``F`` flag: the kernel opens the interpreter once, on the
host, so it also works inside a node whose root has no qemu in it.

What the testbed mounted or registered is recorded by the caller and taken back
on ``down``; a rule the host had before is used and left alone.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from piblade.testbed.system import TestbedError, find_tool

BINFMT = Path("/proc/sys/fs/binfmt_misc")
RULE_NAME = "qemu-aarch64"
RULE_FILE = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
PACKAGE = "qemu-user-static"


@dataclass(frozen=True, slots=True)
class Emulation:
    """What :func:`ensure_aarch64` had to do: mount binfmt_misc, register the rule (to undo on down)."""

    mounted: bool = False
    registered: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {"mounted": self.mounted, "registered": self.registered}

    @classmethod
    def from_dict(cls, value: object) -> Emulation:
        if not isinstance(value, dict):
            return cls()
        return cls(bool(value.get("mounted")), bool(value.get("registered")))


def native_aarch64(machine: str | None = None) -> bool:
    """True on an aarch64 host (a Pi, an ARM server): arm64 nodes run without emulation."""
    return (machine or platform.machine()) == "aarch64"


def _mounted(binfmt: Path) -> bool:
    return (binfmt / "register").exists()


def rule_state(binfmt: Path = BINFMT) -> dict[str, str] | None:
    """The registered qemu-aarch64 rule as ``{"enabled": …, "interpreter": …, "flags": …}``, or None."""
    try:
        text = (binfmt / RULE_NAME).read_text()
    except OSError:
        return None
    state: dict[str, str] = {}
    for line in text.splitlines():
        if line in ("enabled", "disabled"):
            state["enabled"] = line
        else:
            key, _, value = line.partition(" ")
            state[key.rstrip(":")] = value.strip()
    return state


def ensure_aarch64(binfmt: Path = BINFMT, rule_file: Path = RULE_FILE) -> Emulation:
    """Make aarch64 programs run here; returns what was done, raises saying exactly why it cannot."""
    if native_aarch64():
        return Emulation()
    if not rule_file.is_file():
        raise TestbedError(
            f"arm64 nodes need {PACKAGE} (no {rule_file} on this machine)",
            hint=f"apt-get install -y {PACKAGE} (`make test-packages` does it)",
        )
    mounted = False
    if not _mounted(binfmt):
        if "binfmt_misc" not in Path("/proc/filesystems").read_text():
            raise TestbedError(
                "arm64 nodes need the kernel's binfmt_misc, and this kernel has none (not in /proc/filesystems)",
                hint="load it with `modprobe binfmt_misc`, or use a kernel built with CONFIG_BINFMT_MISC",
            )
        done = subprocess.run([find_tool("mount") or "mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TestbedError(
                f"could not mount binfmt_misc at {binfmt}: {done.stderr.strip() or done.returncode}",
                hint="arm64 nodes need root on the host itself (not in an unprivileged container)",
            )
        mounted = True
    state = rule_state(binfmt)
    if state is not None:
        return _usable(state, mounted)
    line = rule_file.read_text().strip()
    try:
        (binfmt / "register").write_text(line + "\n")
    except OSError as exc:
        raise TestbedError(f"could not register {rule_file} with binfmt_misc: {exc.strerror or exc}",
                           hint="arm64 nodes need root on the host itself (not in an unprivileged container)") from exc
    return _usable(rule_state(binfmt) or {}, mounted, registered=True)


def _usable(state: dict[str, str], mounted: bool, registered: bool = False) -> Emulation:
    done = Emulation(mounted, registered)
    if state.get("enabled") != "enabled":
        raise TestbedError(f"this host's binfmt_misc rule {RULE_NAME} is disabled",
                           hint=f"enable it with `echo 1 > {BINFMT / RULE_NAME}`")
    if "F" not in state.get("flags", ""):
        raise TestbedError(
            f"this host's binfmt_misc rule {RULE_NAME} lacks the F flag, so nodes cannot reach its "
            f"interpreter {state.get('interpreter', '?')} from inside their own root",
            hint=f"remove it (`echo -1 > {BINFMT / RULE_NAME}`) and let the testbed register Debian's "
                 f"{PACKAGE} rule, which has F",
        )
    interpreter = state.get("interpreter", "")
    if not interpreter or not os.path.exists(interpreter):
        raise TestbedError(f"the interpreter of {RULE_NAME}, {interpreter or '(none)'}, is missing",
                           hint=f"apt-get install --reinstall -y {PACKAGE}")
    return done


def release(done: Emulation, binfmt: Path = BINFMT) -> list[str]:
    """Undo what :func:`ensure_aarch64` did; returns what could not be undone (empty when all is back)."""
    left = []
    if done.registered and (binfmt / RULE_NAME).exists():
        try:
            (binfmt / RULE_NAME).write_text("-1\n")
        except OSError as exc:
            left.append(f"binfmt_misc rule {RULE_NAME} ({exc.strerror or exc})")
    if done.mounted and _mounted(binfmt):
        others = [p.name for p in binfmt.iterdir() if p.name not in ("register", "status")]
        if not others:  # somebody else's rules keep it mounted
            umount = subprocess.run([find_tool("umount") or "umount", str(binfmt)], capture_output=True, check=False)
            if umount.returncode != 0:
                left.append(f"the binfmt_misc mount at {binfmt}")
    return left
