"""The host side of the testbed: requirements, processes, mounts and the bridge.

This is the testbed's seam to the host OS: the other testbed modules call these
functions instead of reading ``/proc`` or running ``ip``/``mount`` themselves.

Two facts of this kind of machine shape the process code:

* ``/proc/PID/root`` of a process inside a node reads ``/`` from the host (the
  node pivoted into its own mount namespace), so a node's processes are found by
  their PID namespace and by the root mount in their ``mountinfo`` (the overlay's
  ``lowerdir``/``upperdir`` or the bind of the node directory names the path).
* PID 1 of a VM like this one may never reap orphans, so a dead detached process
  can stay a zombie; a zombie counts as gone here. A pid alone is not an identity
  (pids are reused), so processes are recorded as (pid, start time).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from piblade.errors import ClusterError

#: Host tool -> the Debian package that ships it (what `make test-packages` installs).
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
}
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class TestbedError(ClusterError):
    """The testbed could not be built, started, reached or cleaned up."""

    __test__ = False  # not a pytest test class


def find_tool(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories (debootstrap lives there)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path)


def check_host(
    *,
    euid: int | None = None,
    system: str | None = None,
    which: Callable[[str], str | None] = find_tool,
) -> None:
    """Refuse, with what to do instead, a host that cannot run the testbed.

    The arguments exist so the messages can be tested without changing users or OS.
    """
    system = platform.system() if system is None else system
    if system != "Linux":
        raise TestbedError(
            f"the testbed needs Linux (it boots its nodes with systemd-nspawn); this machine runs {system}",
            hint="run it on a Debian or Ubuntu machine or VM, as root; real Pis need no testbed",
        )
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise TestbedError(
            "the testbed needs root: it creates a network bridge, mounts node images and boots them "
            "with systemd-nspawn",
            hint="run it as root, e.g. `sudo piblade testbed up` (or `sudo make test` for the e2e tests)",
        )
    missing = sorted({package for tool, package in REQUIRED_TOOLS.items() if which(tool) is None})
    if missing:
        raise TestbedError(
            f"the testbed needs these Debian packages: {' '.join(missing)}",
            hint=f"install them with `apt-get install -y {' '.join(missing)}` (`make test-packages` does it)",
        )


def run_tool(argv: Sequence[str], *, what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a host tool; a failure becomes a TestbedError that quotes its stderr."""
    tool = find_tool(argv[0]) or argv[0]
    try:
        done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise TestbedError(f"{what}: `{' '.join(argv)}` failed: {detail[-1] if detail else done.returncode}")
    return done


# --- processes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    """A process by pid and start time (clock ticks after boot), so a reused pid never matches."""

    pid: int
    start: int

    def to_list(self) -> list[int]:
        return [self.pid, self.start]

    @classmethod
    def from_list(cls, value: object) -> Proc | None:
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return cls(value[0], value[1])
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, going (EINVAL while it exits) or not ours to read
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def proc_of(pid: int) -> Proc | None:
    """The live (not zombie) process with this pid, or None."""
    info = _stat(pid)
    if info is None or info[0] in ("Z", "X"):
        return None
    return Proc(pid, info[2])


def _reap(pid: int) -> None:
    """Collect our own dead child so it does not linger as a zombie; others' children are left alone."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(proc: Proc | None) -> bool:
    if proc is None:
        return False
    _reap(proc.pid)
    info = _stat(proc.pid)
    return info is not None and info[0] not in ("Z", "X") and info[2] == proc.start


def send(proc: Proc | None, sig: int) -> None:
    if alive(proc):
        assert proc is not None
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def wait_gone(procs: Iterable[Proc | None], timeout: float) -> bool:
    """Wait until none of ``procs`` is alive; True if they all went within ``timeout`` seconds."""
    pending = [p for p in procs if p is not None]
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if alive(p)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def pidns(pid: int) -> int | None:
    """The inode of a process's PID namespace (what `readlink /proc/PID/ns/pid` shows)."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:  # gone, going (EINVAL while it exits) or not ours to read
        return None


def strays(candidates: Iterable[Proc], accounted: Collection[Proc], namespaces: Collection[int]) -> list[Proc]:
    """The ``candidates`` no running node accounts for: not one of its processes, not in its PID namespace.

    A process that has exited since it was listed is no stray: a running node's short-lived
    process (a unit's helper, a login) is often gone by the time its namespace is read, and
    an unreadable namespace must not make it look like one that escaped its node.
    """
    found = []
    for proc in candidates:
        if proc in accounted:
            continue
        ns = pidns(proc.pid)
        if ns is None or ns in namespaces or proc_of(proc.pid) != proc:
            continue
        found.append(proc)
    return found


def children(pid: int) -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None and info[1] == pid and info[0] not in ("Z", "X"):
                found.append(Proc(int(entry.name), info[2]))
    return found


def _close_inherited() -> list[tuple[int, int]]:
    """Close actions for every inheritable descriptor above stderr that this process holds.

    posix_spawn passes on every descriptor without close-on-exec. Python opens its
    own files close-on-exec, but a caller's are not: ``flock LOCK piblade testbed up``
    hands its lock to piblade, and a node started with it would hold the lock for as
    long as the node runs, so ``flock LOCK piblade testbed down`` waited forever.
    """
    actions = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:  # the descriptor listdir itself had open
                continue
    return actions


def spawn_detached(argv: Sequence[str], log: Path, cgroups: Sequence[Path] = ()) -> Proc:
    """Start ``argv`` in its own session (so it is its own process group) with output appended to ``log``.

    With ``cgroups``, a shell first moves itself into each of them and then execs
    ``argv`` (same pid), so the program never runs outside them. posix_spawn rather
    than Popen: no Popen object to outlive (and warn about), and no fork of a
    threaded process. The pid stays our child, reaped by :func:`alive`.
    """
    tool = find_tool(argv[0]) or argv[0]
    env = dict(os.environ)
    program = [tool, *argv[1:]]
    if cgroups:
        env["PIBLADE_CGROUPS"] = " ".join(str(c / "cgroup.procs") for c in cgroups)
        script = 'for f in $PIBLADE_CGROUPS; do echo $$ > "$f" || exit 125; done; unset PIBLADE_CGROUPS; exec "$@"'
        program = ["/bin/sh", "-c", script, "sh", *program]
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    pid = os.posix_spawn(
        program[0],
        program,
        env,
        file_actions=[
            *_close_inherited(),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    info = _stat(pid)
    return Proc(pid, info[2] if info else 0)


def processes_under(root: Path, namespaces: Iterable[int] = (), *, node: str | None = None) -> list[Proc]:
    """Every live process that belongs to a testbed under ``root``.

    That is a ``systemd-nspawn`` whose arguments name a path under ``root``, a
    process in a testbed cgroup (only ``node``'s when given), or a process in another
    PID namespace that is one of ``namespaces`` or whose root mount names a path under ``root``.
    """
    prefix = str(root.resolve())
    host_ns = pidns(os.getpid())
    known = set(namespaces)
    in_cgroups = cgroup_pids(node)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        proc = proc_of(pid)
        if proc is None:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, going (EINVAL while it exits) or not ours to read
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "systemd-nspawn":
            if any(_at_or_under(arg.decode(errors="replace"), prefix) for arg in argv[1:]):
                found.append(proc)
            continue
        if pid in in_cgroups:
            found.append(proc)
            continue
        ns = pidns(pid)
        if ns is None or ns == host_ns:
            continue
        if ns in known or _root_mount_mentions(pid, prefix):
            found.append(proc)
    return found


def processes_using(path: Path) -> list[Proc]:
    """Live processes in our mount namespace whose root, cwd or arguments are at or under ``path``.

    That finds a debootstrap left running by a killed build, and the dpkg it runs chrooted.
    """
    prefix = str(path.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        proc = proc_of(int(entry.name))
        if proc is None:
            continue
        try:
            places = [os.readlink(entry / "root"), os.readlink(entry / "cwd")]
            places += [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:  # gone, going (EINVAL while it exits) or not ours to read
            continue
        if any(_at_or_under(p, prefix) for p in places):
            found.append(proc)
    return found


def _root_mount_mentions(pid: int, prefix: str) -> bool:
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:  # gone, going (EINVAL while it exits) or not ours to read
        return False
    return any(len(f := line.split()) > 4 and f[4] == "/" and prefix + "/" in line for line in lines)


def _at_or_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def kill_all(procs: Sequence[Proc], timeout: float = 5.0) -> bool:
    for proc in procs:
        send(proc, signal.SIGKILL)
    return wait_gone(procs, timeout)


# --- mounts ----------------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or under ``root`` in our mount namespace, deepest first."""
    base = root.resolve()
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = Path(_unescape(fields[4]))
            if point == base or base in point.parents:
                found.append(point)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def is_mount(path: Path) -> bool:
    return path.resolve() in mounts_under(path)


def unmount_all(root: Path) -> None:
    """Unmount everything at or under ``root``; lazily if a mount is busy."""
    for point in mounts_under(root):
        umount = find_tool("umount") or "umount"
        if subprocess.run([umount, str(point)], capture_output=True, check=False).returncode != 0:
            subprocess.run([umount, "-l", str(point)], capture_output=True, check=False)
    left = mounts_under(root)
    if left:
        raise TestbedError(f"could not unmount {', '.join(map(str, left))}", hint=f"see `findmnt -R {root}`")


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> bool:
    """Mount ``lower`` read-only under a private ``upper``; False if this kernel/fs will not."""
    option_paths = (str(lower), str(upper), str(work))
    if any(c in p for p in option_paths for c in ",:"):
        return False  # the option syntax cannot quote these
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mount = find_tool("mount") or "mount"
    done = subprocess.run([mount, "-t", "overlay", "overlay", "-o", options, str(target)],
                          capture_output=True, check=False)
    return done.returncode == 0


def remove_tree(path: Path, *, end_users: bool = False) -> None:
    """``rm -rf`` that never follows into a mount: everything under ``path`` is unmounted first.

    ``end_users`` first kills processes working in ``path`` (a killed build's debootstrap);
    without it a shell that is merely ``cd``'d there is left alone (its mount goes lazily).
    """
    if not path.exists() and not path.is_symlink():
        return
    if end_users and (users := processes_using(path)):
        kill_all(users)
    unmount_all(path)
    done = subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or path.exists():
        raise TestbedError(f"could not remove {path}: {done.stderr.strip()}")


# --- host limits -----------------------------------------------------------------------------------

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
#: inotify instances a booted node's systemd and services hold, with room to spare, and the
#: host's own. All nodes run as the host's root, so they share root's one limit (128 by
#: default): a second 20-node testbed in a row failed to boot its last node with "Too many
#: open files" from systemd.
INOTIFY_PER_NODE = 32
INOTIFY_HOST = 256


def inotify_instances_needed(nodes: int, current: int) -> int:
    """The per-user inotify instance limit ``nodes`` nodes need: never lower than ``current``."""
    return max(current, INOTIFY_HOST + INOTIFY_PER_NODE * nodes)


def raise_inotify_limit(nodes: int) -> None:
    """Raise the host's inotify instance limit for ``nodes`` nodes (a limit: raising it takes nothing)."""
    try:
        current = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        return  # no such setting here: nothing to raise
    wanted = inotify_instances_needed(nodes, current)
    if wanted > current:
        try:
            INOTIFY_INSTANCES.write_text(f"{wanted}\n")
        except OSError as exc:
            raise TestbedError(f"cannot raise {INOTIFY_INSTANCES} to {wanted} for {nodes} nodes: {exc}",
                               hint=f"as root: sysctl fs.inotify.max_user_instances={wanted}") from exc


# --- network ---------------------------------------------------------------------------------------


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def create_bridge(name: str, cidr: str) -> None:
    """A bridge with the controller's address; IPv4 only, so nothing else is said on it."""
    run_tool(["ip", "link", "add", name, "type", "bridge"], what=f"creating bridge {name}")
    disable_v6 = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
    if disable_v6.exists():
        disable_v6.write_text("1\n")
    run_tool(["ip", "addr", "add", cidr, "dev", name], what=f"addressing bridge {name}")
    run_tool(["ip", "link", "set", name, "up"], what=f"bringing bridge {name} up")


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run([find_tool("ip") or "ip", "link", "del", name], capture_output=True, check=False)


# --- cgroups ---------------------------------------------------------------------------------------
#
# Without systemd on the host, `systemd-nspawn --keep-unit` uses the cgroup it was started in and
# creates `payload/` and `supervisor/` there. Nodes started from one cgroup would share one
# `payload/`, and each node's systemd would create and remove the same unit cgroups in it: units
# then fail at random with status 219/CGROUP. So each node is started in a cgroup of its own,
# `piblade-testbed/<node>`, in every hierarchy a node's systemd writes to (cgroup2 and the v1
# `name=systemd` one). These are also a complete list of a node's processes.

CGROUP_TOP = "piblade-testbed"


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup2 and v1 ``name=systemd`` hierarchies on this host."""
    found: dict[str, Path] = {}  # the first mount of each hierarchy
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            found.setdefault(fstype, Path(_unescape(fields[4])))
    return list(found.values())


def node_cgroups(node: str) -> list[Path]:
    return [h / CGROUP_TOP / node for h in cgroup_hierarchies()]


def make_cgroups(node: str) -> list[Path]:
    paths = node_cgroups(node)
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths


def _cgroup_tree(top: Path) -> list[Path]:
    """``top`` and every cgroup under it, deepest first (cgroup directories only go away by rmdir)."""
    if not top.is_dir():
        return []
    dirs = [Path(d) for d, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids(node: str | None = None) -> set[int]:
    """Pids in the testbed's cgroups (one node's, or all of them)."""
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / CGROUP_TOP / node if node else hierarchy / CGROUP_TOP
        for cgroup in _cgroup_tree(top):
            try:
                pids.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
            except OSError:
                pass
    return pids


def remove_cgroups(node: str | None = None, timeout: float = 0.0) -> list[Path]:
    """Remove the testbed's (or one node's) cgroups; returns those that could not go.

    A cgroup that is still in use is emptied first: a killed node's last
    processes can still be exiting (an emulated node's qemu-user processes
    take their time), and one the process scan missed is listed in the
    cgroup itself. With a ``timeout``, each is sent SIGKILL and removal is
    tried again until then (only for one node: the cgroup names are the
    machine's, not this state directory's).
    """
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for hierarchy in cgroup_hierarchies():
            top = hierarchy / CGROUP_TOP / node if node else hierarchy / CGROUP_TOP
            for cgroup in _cgroup_tree(top):
                try:
                    cgroup.rmdir()
                except OSError:
                    left.append(cgroup)
        if not left or time.monotonic() > deadline:
            return left
        for cgroup in left:
            try:
                pids = (cgroup / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass
        time.sleep(0.2)
