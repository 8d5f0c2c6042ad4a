"""The node image: Debian bookworm from debootstrap, built once and cached.

Nodes have no internet, so every Debian package that provisioning installs is
baked in here and `apt-get install` on a node finds it already installed. The
cache directory is named by a hash of the package list, suite, architecture and
:data:`IMAGE_FORMAT`, so changing any of them builds a new image and nothing else
does. The build runs in a temporary directory that is renamed when complete: a
killed build never leaves an image that looks finished.

What the image holds besides the packages (per-node files are written later, see
:mod:`piblade.testbed.node`):

* no SSH host keys and an empty ``/etc/machine-id`` (each node gets its own);
* a ``pi`` user with passwordless sudo, as on Raspberry Pi OS;
* systemd-networkd enabled; no DNS servers (there is nothing to ask);
* Samba installed but not started: provisioning enables smbd on the NAS node only;
* apt's timers, fstrim and e2scrub disabled (they would only fail or waste CPU).

Time sync: ``systemd-timesyncd`` (the default of Debian and Raspberry Pi OS). In
a container it skips itself (``ConditionVirtualization=!container``): nodes share
the host's clock, which is what a testbed wants.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from piblade.testbed.system import TestbedError, find_tool, kill_all, processes_using, remove_tree, run_tool

#: Bump when the customisation in :func:`_customise` changes, so cached images are rebuilt.
IMAGE_FORMAT = 2
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "openssh-server", "sudo", "python3", "python3-venv", "python3-pip", "python3-apt",
    "systemd", "systemd-sysv", "dbus", "iproute2", "procps", "ca-certificates",
    "samba", "samba-vfs-modules", "smbclient", "cifs-utils", "sshfs", "fuse3", "redis-tools",
    "systemd-timesyncd", "less", "curl",
    # The results database (PostgreSQL on the NAS node) and first boot from a seed (cloud-init).
    # Nodes have no apt, so what provisioning installs must already be here. debootstrap does not
    # resolve virtual packages: python3-cffi-backend provides what python3-cryptography needs.
    "postgresql", "cloud-init", "python3-cffi-backend",
    # A node can be the controller (a Pi often is): its Redis runs under piblade's supervisor unit.
    "redis-server",
)
#: The arm64 image (worker nodes under emulation): only what provisioning's worker role checks
#: with apt (python3, python3-venv, ca-certificates, procps; sshfs and fuse3 for the share,
#: since the testbed kernel has no cifs) and what the testbed needs to boot and reach it. Every
#: package here costs emulated dpkg time in the build; a NAS node stays x86_64.
ARM64_PACKAGES = (
    "openssh-server", "sudo", "python3", "python3-venv", "systemd", "systemd-sysv", "dbus", "iproute2",
    "procps", "ca-certificates", "sshfs", "fuse3",
)
MARKER = ".piblade-image"
#: Units the packages enable that a testbed node should not run at boot.
_DISABLED_UNITS = (
    "smbd.service", "nmbd.service", "samba-ad-dc.service", "e2scrub_reap.service", "getty@tty1.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
    "postgresql.service", "redis-server.service",
)
_SSHD_CONFIG = "# piblade testbed: keys only\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"

Progress = Callable[[str], None]


def debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(machine, machine)


def image_key(packages: tuple[str, ...] = PACKAGES, *, suite: str = SUITE, arch: str | None = None,
              fmt: int = IMAGE_FORMAT) -> str:
    """The cache key of an image: changes exactly when the image would be built differently."""
    spec = {"format": fmt, "suite": suite, "arch": arch or debian_arch(), "packages": sorted(packages)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def packages_for(arch: str | None) -> tuple[str, ...]:
    """The package list of the image for a Debian ``arch`` (None: this machine's)."""
    return PACKAGES if arch in (None, debian_arch()) else ARM64_PACKAGES


def image_dir(root: Path, arch: str | None = None) -> Path:
    return root / f"image-{image_key(packages_for(arch), arch=arch)}"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def image_arch(path: Path) -> str | None:
    """The Debian architecture a built image records in its marker (None if unreadable)."""
    try:
        arch = json.loads((path / MARKER).read_text()).get("arch")
    except (OSError, ValueError, AttributeError):
        return None
    return arch if isinstance(arch, str) else None


def ensure_image(root: Path, progress: Progress | None = None, *, arch: str | None = None) -> tuple[Path, float | None]:
    """The cached image under ``root``, built first if needed; returns (path, seconds spent building or None).

    ``arch`` is a Debian architecture (``arm64``); None is this machine's. A foreign
    architecture needs its binfmt_misc rule in place (:mod:`piblade.testbed.emulation`):
    debootstrap's second stage runs the image's own programs.
    """
    arch = arch or debian_arch()
    packages = packages_for(arch)
    key = image_key(packages, arch=arch)
    path = image_dir(root, arch)
    if is_complete(path):
        return path, None
    started = time.monotonic()
    for stale in root.glob(f".image-{key}.tmp-*"):  # a killed build; the caller holds the testbed lock
        remove_tree(stale, end_users=True)
    tmp = root / f".image-{key}.tmp-{os.getpid()}"
    log = root / f"image-build-{arch}.log"
    say = progress or (lambda _: None)
    try:
        _debootstrap(tmp, root / "debs", log, say, arch, packages)
        say(f"customising the {arch} node image")
        _customise(tmp)
        (tmp / MARKER).write_text(json.dumps({
            "format": IMAGE_FORMAT, "suite": SUITE, "arch": arch, "packages": list(packages),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 1),
        }, indent=2) + "\n")
        if users := processes_using(tmp):  # a daemon a package's script started in the chroot (emulated: slow)
            kill_all(users)
        remove_tree(path)  # only a hand-made or damaged directory can be there without the marker
        os.rename(tmp, path)
    except BaseException:
        remove_tree(tmp, end_users=True)
        raise
    for old in root.glob("image-*"):  # images of this architecture for another package list or format
        if old != path and old.is_dir() and image_arch(old) in (arch, None):
            remove_tree(old)
    return path, time.monotonic() - started


def _debootstrap(target: Path, cache: Path, log: Path, progress: Progress, arch: str,
                 packages: tuple[str, ...]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    argv = [
        find_tool("debootstrap") or "debootstrap", "--variant=minbase", f"--arch={arch}",
        f"--include={','.join(packages)}", f"--cache-dir={cache}", SUITE, str(target), MIRROR,
    ]
    about = "≈2 min" if arch == debian_arch() else "≈3 min, emulated"
    setpriv = find_tool("setpriv")
    if setpriv:  # debootstrap dies with us; the next build ends anything it had started (remove_tree)
        argv = [setpriv, "--pdeathsig", "KILL", *argv]
    started = time.monotonic()
    with log.open("w") as out:
        out.write(" ".join(argv) + "\n")
        out.flush()
        # The with-block closes the pipe: an unclosed one is a ResourceWarning (an error under pytest's
        # filterwarnings) that showed only on a machine's first image build.
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if line.startswith("I: "):
                        elapsed = time.monotonic() - started
                        progress(f"building the {arch} node image (once, {about}; log {log}): {line[3:].strip()} "
                                 f"[{elapsed:.0f} s]")
                code = proc.wait()
            except BaseException:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise TestbedError(
            f"debootstrap failed (exit {code}): {' / '.join(tail)}",
            hint=f"the whole output is in {log}; the image needs Debian's mirror ({MIRROR}) through apt's network",
        )


def _customise(image: Path) -> None:
    for key in (image / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    machine_id = image / "etc" / "machine-id"
    machine_id.unlink(missing_ok=True)
    machine_id.write_text("")  # empty: each node writes its own
    dbus_id = image / "var" / "lib" / "dbus" / "machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (image / "etc" / "resolv.conf").unlink(missing_ok=True)
    (image / "etc" / "resolv.conf").write_text("# piblade testbed: nodes have no DNS server and no internet\n")
    (image / "etc" / "hostname").write_text("piblade-node\n")
    (image / "etc" / "ssh" / "sshd_config.d" / "piblade-testbed.conf").write_text(_SSHD_CONFIG)
    # cloud-init stays off unless a node is booted from a seed on purpose (it would rewrite host
    # keys and network settings the testbed hands out).
    if (image / "etc" / "cloud").is_dir():  # the arm64 worker image has no cloud-init
        (image / "etc" / "cloud" / "cloud-init.disabled").write_text("piblade testbed: off unless seeded\n")

    units = [u for u in _DISABLED_UNITS if _unit_exists(image, u)]
    systemctl = find_tool("systemctl") or "systemctl"
    run_tool([systemctl, f"--root={image}", "disable", *units], what="disabling units in the image")
    run_tool([systemctl, f"--root={image}", "enable", "systemd-networkd.service"], what="enabling systemd-networkd")

    run_tool(["chroot", str(image), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "pi"],
             what="adding the pi user")
    sudoers = image / "etc" / "sudoers.d" / "010_pi-nopasswd"
    sudoers.write_text("pi ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    for home in (image / "root", image / "home" / "pi"):
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
    pi_ids = _passwd_ids(image, "pi")
    os.chown(image / "home" / "pi" / ".ssh", *pi_ids)
    for deb in (image / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # they are in the debootstrap cache already


def _unit_exists(image: Path, unit: str) -> bool:
    template = unit.split("@")[0] + "@.service" if "@" in unit else unit
    return any((image / d / template).exists() for d in ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"))


def _passwd_ids(image: Path, user: str) -> tuple[int, int]:
    for line in (image / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise TestbedError(f"the node image has no user {user!r}", hint="delete the image directory to rebuild it")
