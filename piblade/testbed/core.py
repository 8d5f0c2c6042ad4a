"""The testbed's lifecycle: up, down, status, and one node's power (kill, stop, start).

Everything the testbed owns lives under one directory (``<state dir>/testbed``):
the cached image, the controller key, ``known_hosts``, ``state.json`` with each
node's processes, console logs and ``nodes/<name>/`` (the node's overlay). That
is what makes cleanup complete: ``down`` (and every ``up``, which first removes a
testbed left by a killed run) ends every process whose namespace or root mount
points there, unmounts everything under it, deletes the bridge, and then checks
that none of it is left. A lock file keeps two piblade commands from racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from piblade.state import private_dir, state_dir, write_private
from piblade.testbed import card
from piblade.testbed import node as nodes_mod
from piblade.testbed.emulation import Emulation, ensure_aarch64, release
from piblade.testbed.image import debian_arch, ensure_image, image_dir, is_complete
from piblade.testbed.info import GuestStatus, TestbedInfo, TestbedStatus
from piblade.testbed.inventory_file import CLUSTER_NAME, is_generated, render_inventory
from piblade.testbed.node import (
    BRIDGE,
    CONTROLLER_ADDRESS,
    NETWORK,
    NodeDirs,
    Running,
    TestbedNode,
)
from piblade.testbed.system import (
    Proc,
    TestbedError,
    alive,
    check_host,
    create_bridge,
    delete_link,
    kill_all,
    link_exists,
    mounts_under,
    processes_under,
    raise_inotify_limit,
    remove_cgroups,
    remove_tree,
    send,
    strays,
    unmount_all,
    wait_gone,
)

STATE_VERSION = 1
BOOT_TIMEOUT = 120.0
#: Every node boots on the same host cores: each node beyond the third adds this much to the wait.
BOOT_TIMEOUT_PER_NODE = 8.0
#: An emulated node runs systemd, sshd and everything else through qemu, ≈10× slower.
EMULATED_BOOT_TIMEOUT = 300.0
STOP_TIMEOUT = 20.0
EMULATED_STOP_TIMEOUT = 60.0
DEFAULT_INVENTORY = Path("inventory") / "testbed.yml"


def _port_open(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class Testbed:
    """A virtual Pi cluster on this machine: one NAS node and N worker nodes under systemd-nspawn.

    ``root`` defaults to ``<state dir>/testbed``; ``inventory`` to ``inventory/testbed.yml``
    under the current directory. ``progress`` receives one-line updates for a status display.
    There is one testbed per machine (the bridge and addresses are fixed).
    """

    __test__ = False

    def __init__(
        self,
        root: Path | None = None,
        *,
        inventory: Path | None = None,
        progress: Callable[[str], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.root = (root or state_dir() / "testbed").absolute()
        self.inventory = (inventory or DEFAULT_INVENTORY).absolute()
        self.key = self.root / "id_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.state_file = self.root / "state.json"
        self._progress = progress or (lambda _: None)
        self._check = check or check_host
        #: Seconds spent in the phases of the last `up` (image_build is None when the cache was used).
        self.timings: dict[str, float | None] = {}

    # --- public API ----------------------------------------------------------------------------

    def up(self, workers: int = 2, arm64: int = 0) -> TestbedInfo:
        """Start a fresh testbed (removing whatever testbed is there first) and wait until it is ready.

        ``arm64`` aarch64 worker nodes boot beside the others, under qemu-user-static
        on an x86_64 host (binfmt_misc is mounted and the rule registered if needed,
        and both are taken back on `down`).
        """
        self._check()
        native = platform.machine()
        nodes = nodes_mod.plan_nodes(workers, arm64, native=native)
        started = time.monotonic()
        private_dir(self.root)
        with self._locked():
            if self.state_file.exists() or link_exists(BRIDGE) or mounts_under(self.root):
                self._progress("removing the previous testbed")
            self._teardown()  # also catches strays that left no state behind
            for log in self.root.glob(f"{nodes_mod.NAME_PREFIX}*.log"):
                log.unlink()  # console logs of the previous testbed (kept after `down` for debugging)
            state: dict[str, Any] = {
                "version": STATE_VERSION, "image": None, "images": {}, "emulation": None,
                "inventory": str(self.inventory),
                "nodes": [{**n.to_dict(), "mode": None, "nspawn": None, "init": None, "pidns": None} for n in nodes],
            }
            self._save(state)  # before anything exists, so a killed `up` is cleaned by the next one
            try:
                if any(n.machine != native for n in nodes):
                    state["emulation"] = ensure_aarch64().to_dict()  # before the build: debootstrap needs it
                    self._save(state)
                self.timings = {}
                for arch in sorted({n.arch for n in nodes}, key=lambda a: a != debian_arch()):
                    image, built = ensure_image(self.root, self._progress, arch=arch)
                    self.timings["image_build" if arch == debian_arch() else f"image_build_{arch}"] = built
                    state["images"][arch] = str(image)
                state["image"] = state["images"].get(debian_arch())
                self._save(state)
                nodes_mod.ssh_keygen_controller_key(self.key)
                t0 = time.monotonic()
                self._progress(f"preparing {len(nodes)} nodes")
                create_bridge(BRIDGE, f"{CONTROLLER_ADDRESS}/{NETWORK.prefixlen}")
                public_key = self.key.with_suffix(".pub").read_text()
                with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                    modes = list(pool.map(lambda n: self._prepare(n, Path(state["images"][n.arch]), nodes,
                                                                  public_key), nodes))
                for entry, mode in zip(state["nodes"], modes, strict=True):
                    entry["mode"] = mode
                self._write_known_hosts(nodes)
                self.timings["prepare"] = time.monotonic() - t0
                t0 = time.monotonic()
                self._progress(f"booting {len(nodes)} node{'' if len(nodes) == 1 else 's'}")
                raise_inotify_limit(len(nodes))
                running = {}
                for node, entry in zip(nodes, state["nodes"], strict=True):
                    running[node.name] = nodes_mod.boot(node, self._dirs(node).root, self._log(node))
                    _record(entry, running[node.name])
                    self._save(state)
                self._wait_ready(nodes, running)
                self.timings["boot"] = time.monotonic() - t0
                info = self._info(state)
                self._write_inventory(info)
            except BaseException:
                self._progress("start failed; removing the partial testbed")
                self._teardown()
                raise
        self.timings["up"] = time.monotonic() - started
        return info

    def down(self) -> None:
        """Stop every node (cleanly, then by force), remove mounts, bridge and node copies; check nothing is left.

        The image and the controller key stay (they are a cache), so the next `up` is fast.
        The controller's Redis for the "testbed" cluster (started by `piblade provision`)
        belongs to the testbed too, and stops with it.
        """
        self._check()
        _stop_controller()
        if not self.root.exists():
            if link_exists(BRIDGE):
                delete_link(BRIDGE)
            return
        with self._locked():
            self._teardown()

    def kill(self, node: str) -> None:
        """Power loss: SIGKILL the node's init (which ends every process in it) and its systemd-nspawn."""
        self._check()
        with self._locked():
            state, entry = self._entry(node)
            running = _running(entry)
            for proc in (running.init, running.nspawn) if running else ():
                send(proc, signal.SIGKILL)
            self._forget(state, entry)

    def stop(self, node: str) -> None:
        """Clean shutdown of one node: SIGTERM to its nspawn, which powers the node off.

        An emulated node is powered off from inside instead (``systemctl poweroff`` over
        SSH): nspawn asks init to power off with a real-time signal that does not reach
        it as such through qemu-user, and the node would go to rescue mode instead.
        """
        self._check()
        with self._locked():
            state, entry = self._entry(node)
            running = _running(entry)
            if running:
                if not self._emulated(entry):
                    send(running.nspawn, signal.SIGTERM)
                    wait_gone([running.nspawn, running.init], STOP_TIMEOUT)
                elif self._poweroff_inside(entry):
                    wait_gone([running.nspawn, running.init], EMULATED_STOP_TIMEOUT)
            self._forget(state, entry)  # whatever did not go is killed

    def start(self, node: str) -> None:
        """Boot a stopped (or killed) node again, with its disk as it was, and wait until it is ready."""
        self._check()
        with self._locked():
            state, entry = self._entry(node)
            if _running(entry):
                raise TestbedError(f"{entry['name']} is already running", hint=f"`piblade testbed stop {node}` first")
            target = self._node(entry)
            if not link_exists(BRIDGE):
                create_bridge(BRIDGE, f"{CONTROLLER_ADDRESS}/{NETWORK.prefixlen}")
            image = (state.get("images") or {}).get(target.arch) or state["image"]
            nodes_mod.mount_root(self._dirs(target), Path(image))
            running = nodes_mod.boot(target, self._dirs(target).root, self._log(target))
            _record(entry, running)
            self._save(state)
            self._wait_ready((target,), {target.name: running})

    def boot_card(self, seed: Path, role: str = "worker") -> TestbedNode:
        """Boot one more node as a freshly flashed card whose first boot reads ``seed`` (see :mod:`.card`).

        ``seed`` is what ``piblade node add --dir`` wrote for the testbed's inventory, so the
        node's login key is the testbed's and its host keys are already in the testbed's
        known_hosts: waiting for the boot to finish (over SSH, strictly checked) is the
        first proof that the seed worked. A node that does not come up is removed again,
        its cloud-init logs kept beside the console log.
        """
        self._check()
        wanted = card.read_seed(seed)
        if role not in ("worker", "nas"):
            raise TestbedError(f"role {role!r}: a testbed node is a worker or the nas")
        with self._locked():
            state = self._load()
            if state is None:
                raise TestbedError("no testbed is up", hint="start one with `piblade testbed up`")
            for entry in state["nodes"]:
                if wanted.name in (entry["name"], entry["name"].removeprefix(nodes_mod.NAME_PREFIX)) \
                        or wanted.address == entry["address"]:
                    raise TestbedError(f"the testbed already has {entry['name']} ({entry['address']})",
                                       hint="give the new node another name and address in `piblade node add`")
            public = self.key.with_suffix(".pub").read_text().split()
            if not any(k.split()[:2] == public[:2] for k in wanted.authorized_keys):
                raise TestbedError(f"the seed in {seed} does not let the testbed's key log in",
                                   hint=f"make it with `piblade node add -i {state.get('inventory')}`")
            node = TestbedNode(wanted.name, wanted.address, role, platform.machine())  # the native image
            entry = {**node.to_dict(), "mode": None, "nspawn": None, "init": None, "pidns": None, "card": True}
            state["nodes"].append(entry)
            self._save(state)  # first, so a killed boot is cleaned up by `down`
            dirs = self._dirs(node)
            try:
                entry["mode"] = nodes_mod.mount_root(dirs, Path(state["image"]))
                card.prepare(dirs.root, wanted)
                self._log(node).unlink(missing_ok=True)
                running = nodes_mod.boot(node, dirs.root, self._log(node))
                _record(entry, running)
                self._save(state)
                self._wait_ready((node,), {node.name: running})
            except BaseException:
                for log in ("cloud-init.log", "cloud-init-output.log"):
                    with contextlib.suppress(OSError):
                        shutil.copyfile(dirs.root / "var" / "log" / log, self.root / f"{node.name}.{log}")
                self._drop(state, entry)
                raise
        return node

    def remove(self, name: str) -> None:
        """Stop a node booted by :meth:`boot_card` and delete it (the planned nodes stay until `down`)."""
        self._check()
        with self._locked():
            state, entry = self._entry(name)
            if not entry.get("card"):
                raise TestbedError(f"{entry['name']} is one of the testbed's own nodes",
                                   hint="only a node booted from a seed can be removed; `piblade testbed stop` stops it")
            self._drop(state, entry)

    def status(self) -> TestbedStatus:
        state = self._load()
        image = image_dir(self.root)
        nodes: list[GuestStatus] = []
        namespaces: list[int] = []
        for entry in (state or {}).get("nodes", []):
            running = _running(entry)
            if running:
                namespaces.append(running.pidns)
            nodes.append(GuestStatus(
                entry["name"], entry["address"], entry["role"], running is not None,
                running is not None and _port_open(entry["address"], 22, 0.5),
                running.nspawn.pid if running else None,
                self._node(entry).machine, self._emulated(entry),
            ))
        accounted = {p for e in (state or {}).get("nodes", []) for p in _procs(e)}
        stray = tuple(p.pid for p in strays(processes_under(self.root), accounted, namespaces))
        return TestbedStatus(state is not None, link_exists(BRIDGE), image if is_complete(image) else None,
                             tuple(nodes), stray)

    def info(self) -> TestbedInfo:
        """The running testbed's nodes and files; an error if none is up."""
        state = self._load()
        if state is None:
            raise TestbedError("no testbed is up", hint="start one with `piblade testbed up`")
        return self._info(state)

    def ssh_argv(self, node: str, command: str | Sequence[str] | None = None, *, user: str = "pi",
                 tty: bool = False) -> list[str]:
        """The ssh command line for a node: the testbed key, strict host key checking, no user ssh config."""
        return self._ssh_argv(self.info().node(node).address, command, user=user, tty=tty)

    def _ssh_argv(self, address: str, command: str | Sequence[str] | None = None, *, user: str = "pi",
                  tty: bool = False) -> list[str]:
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
        ]
        if tty:
            argv.append("-t")
        argv.append(f"{user}@{address}")
        if command:
            argv.append(command if isinstance(command, str) else shlex.join(command))
        return argv

    def run(self, node: str, command: str | Sequence[str], *, user: str = "pi", timeout: float = 60,
            input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on a node over ssh (as ``pi`` unless ``user`` says otherwise)."""
        argv = self.ssh_argv(node, command, user=user)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=check)
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"{node}: `{command}` did not finish within {timeout:g} s") from exc

    # --- internals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.root)
        with (self.root / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TestbedError(
                    "another `piblade testbed` command is running", hint="wait for it to finish and try again"
                ) from None
            yield

    def _dirs(self, node: TestbedNode) -> NodeDirs:
        return NodeDirs(self.root / "nodes" / node.name)

    def _log(self, node: TestbedNode) -> Path:
        return self.root / f"{node.name}.log"

    def _load(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None

    def _save(self, state: dict[str, Any]) -> None:
        write_private(self.state_file, json.dumps(state, indent=2) + "\n")

    def _node(self, entry: dict[str, Any]) -> TestbedNode:
        return TestbedNode.from_dict(entry, platform.machine())

    def _emulated(self, entry: dict[str, Any]) -> bool:
        """True for a node whose machine is not this host's (it runs under qemu-user)."""
        return self._node(entry).machine != platform.machine()

    def _poweroff_inside(self, entry: dict[str, Any]) -> bool:
        """``systemctl poweroff`` on the node over SSH; True if the node took the order."""
        argv = self._ssh_argv(entry["address"], "systemctl --no-block poweroff", user="root")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _info(self, state: dict[str, Any]) -> TestbedInfo:
        nodes = tuple(self._node(e) for e in state["nodes"])
        return TestbedInfo(nodes, self.key, self.known_hosts, Path(state.get("inventory") or self.inventory))

    def _entry(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        state = self._load()
        if state is None:
            raise TestbedError("no testbed is up", hint="start one with `piblade testbed up`")
        wanted = self._info(state).node(name).name
        return state, next(e for e in state["nodes"] if e["name"] == wanted)

    def _forget(self, state: dict[str, Any], entry: dict[str, Any]) -> None:
        """After a stop or kill: make sure nothing of the node runs, then record it as stopped."""
        procs = _procs(entry)
        if not wait_gone(procs, 5.0):
            kill_all(procs)
        ns = [entry["pidns"]] if entry.get("pidns") else []
        node_dir = self._dirs(self._node(entry)).base
        left = processes_under(node_dir, ns, node=entry["name"])
        if left and not kill_all(left):
            raise TestbedError(f"{entry['name']}: processes {[p.pid for p in left]} would not die")
        delete_link(f"vb-{entry['name']}"[:15])  # normally gone with the node's network namespace
        if stuck := remove_cgroups(entry["name"], timeout=15.0):
            raise TestbedError(f"{entry['name']}: cgroups {', '.join(map(str, stuck))} are still in use")
        # What `status` would call a stray now: a process of this node that left its namespace and
        # cgroup scan (an emulated node's qemu-user processes can take a moment to go).
        others = [e for e in state["nodes"] if e is not entry and _running(e)]
        accounted = {p for e in others for p in _procs(e)}
        namespaces = {e["pidns"] for e in others if e.get("pidns")}
        stray = strays(processes_under(self.root), accounted, namespaces)
        if stray and not kill_all(stray, 15.0):
            raise TestbedError(f"{entry['name']}: processes {[p.pid for p in stray]} would not die")
        entry.update(nspawn=None, init=None, pidns=None)
        self._save(state)

    def _drop(self, state: dict[str, Any], entry: dict[str, Any]) -> None:
        """Stop one node, delete its files and its state entry."""
        running = _running(entry)
        if running:
            send(running.nspawn, signal.SIGTERM)
            wait_gone([running.nspawn, running.init], STOP_TIMEOUT)
        self._forget(state, entry)
        remove_tree(self._dirs(TestbedNode(entry["name"], entry["address"], entry["role"])).base)
        state["nodes"].remove(entry)
        self._save(state)

    def _prepare(self, node: TestbedNode, image: Path, nodes: tuple[TestbedNode, ...], public_key: str) -> str:
        dirs = self._dirs(node)
        mode = nodes_mod.mount_root(dirs, image)
        nodes_mod.write_identity(dirs.root, node, nodes, public_key, emulated=node.machine != platform.machine())
        self._log(node).unlink(missing_ok=True)
        return mode

    def _write_known_hosts(self, nodes: tuple[TestbedNode, ...]) -> None:
        """Host keys read from each node's filesystem on this side, never learned over the network."""
        lines = [f"{n.address},{n.name} {key}" for n in nodes for key in nodes_mod.host_keys(self._dirs(n).root)]
        write_private(self.known_hosts, "\n".join(lines) + "\n")

    def _write_inventory(self, info: TestbedInfo) -> None:
        from piblade.errors import InventoryError
        from piblade.inventory import load_inventory

        text = render_inventory(info.nodes, key=info.key, known_hosts=info.known_hosts)
        info.inventory.parent.mkdir(parents=True, exist_ok=True)
        tmp = info.inventory.with_name(f".{info.inventory.name}.tmp")
        tmp.write_text(text)
        tmp.replace(info.inventory)
        try:
            load_inventory(info.inventory)
        except InventoryError as exc:  # a bug in render_inventory, not the user's doing
            raise TestbedError(f"the generated inventory is invalid: {exc}") from exc

    def _wait_ready(self, nodes: Sequence[TestbedNode], running: dict[str, Running]) -> None:
        """Until each node's sshd answers and systemd says the boot finished (running or degraded)."""
        started = time.monotonic()
        abort = threading.Event()
        ready: list[str] = []
        extra = BOOT_TIMEOUT_PER_NODE * max(0, len(nodes) - 3)

        def wait(node: TestbedNode) -> None:
            limit = (BOOT_TIMEOUT if node.machine == platform.machine() else EMULATED_BOOT_TIMEOUT) + extra
            try:
                self._wait_one(node, running[node.name], started + limit, abort)
            except BaseException:
                abort.set()
                raise
            ready.append(node.name)  # list.append is atomic
            if len(nodes) > 1:
                self._progress(f"{len(ready)} of {len(nodes)} nodes ready ({time.monotonic() - started:.0f} s)")

        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            futures = [pool.submit(wait, n) for n in nodes]
            try:
                for future in futures:
                    future.result()
            finally:
                abort.set()

    def _wait_one(self, node: TestbedNode, running: Running, deadline: float, abort: threading.Event) -> None:
        log = self._log(node)
        while not abort.is_set():
            if not (alive(running.nspawn) and alive(running.init)):
                raise TestbedError(f"{node.name} stopped while booting: {nodes_mod.tail(log)}", hint=f"see {log}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TestbedError(
                    f"{node.name} did not finish booting in time", hint=f"its console is in {log}"
                )
            if _port_open(node.address, 22, 0.5):
                wait_s = max(1, int(min(remaining, 30)))
                try:
                    done = self.run(node.name, f"timeout {wait_s} systemctl is-system-running --wait",
                                    timeout=wait_s + 10)
                except TestbedError:
                    continue
                if done.stdout.strip() in ("running", "degraded"):
                    return
                if done.returncode != 255 and done.stdout.strip() not in ("initializing", "starting", ""):
                    raise TestbedError(f"{node.name} booted into state {done.stdout.strip()!r}",
                                       hint=f"`piblade testbed ssh {node.name} systemctl --failed`; console in {log}")
            time.sleep(0.1)

    def _teardown(self) -> None:
        """Remove everything of a testbed except the image cache and the key; raise if anything is left."""
        state = self._load() or {"nodes": []}
        entries = state.get("nodes", [])
        nspawns = [_proc(e, "nspawn") for e in entries]
        inits = [_proc(e, "init") for e in entries]
        namespaces = [e["pidns"] for e in entries if isinstance(e.get("pidns"), int)]
        inside = []  # emulated nodes: powered off from inside (SIGTERM would send them to rescue mode)
        for entry, nspawn, init in zip(entries, nspawns, inits, strict=True):
            if alive(nspawn) and self._emulated(entry):
                inside.append((entry, nspawn, init))
            elif alive(nspawn):
                send(nspawn, signal.SIGTERM)  # nspawn powers the node off cleanly
            else:
                send(init, signal.SIGKILL)  # an orphaned node init: nobody to shut it down cleanly
        if inside:
            with ThreadPoolExecutor(max_workers=len(inside)) as pool:
                took = list(pool.map(lambda item: self._poweroff_inside(item[0]), inside))
            for (_, nspawn, init), ok in zip(inside, took, strict=True):
                if not ok:  # no answer over SSH: pull its power
                    kill_all([p for p in (init, nspawn) if p is not None], timeout=0)
        timeout = EMULATED_STOP_TIMEOUT if inside else STOP_TIMEOUT
        if not wait_gone([*nspawns, *inits], timeout):
            kill_all([p for p in (*inits, *nspawns) if p is not None])
        stray = processes_under(self.root, namespaces)
        if stray:
            kill_all(stray)
        unmount_all(self.root)
        for entry in entries:
            delete_link(f"vb-{entry['name']}"[:15])  # the host end of its veth, if the kernel kept it
        delete_link(BRIDGE)
        stuck = remove_cgroups()
        remove_tree(self.root / "nodes")
        inventory = Path(state.get("inventory") or self.inventory)
        if is_generated(inventory):
            inventory.unlink()
        self.known_hosts.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        left = []
        if procs := processes_under(self.root, namespaces):
            left.append(f"processes {', '.join(str(p.pid) for p in procs)}")
        if link_exists(BRIDGE):
            left.append(f"bridge {BRIDGE}")
        if mounts := mounts_under(self.root):
            left.append(f"mounts {', '.join(map(str, mounts))}")
        if stuck:
            left.append(f"cgroups {', '.join(map(str, stuck))}")
        left += release(Emulation.from_dict(state.get("emulation")))  # only what this testbed set up
        if left:
            raise TestbedError(f"the testbed could not be removed completely: {'; '.join(left)} remain",
                               hint="run `piblade testbed down` again; if it persists, end those by hand")


def _proc(entry: dict[str, Any], key: str) -> Proc | None:
    return Proc.from_list(entry.get(key))


def _procs(entry: dict[str, Any]) -> list[Proc]:
    return [p for p in (_proc(entry, "nspawn"), _proc(entry, "init")) if p is not None]


def _running(entry: dict[str, Any]) -> Running | None:
    nspawn, init = _proc(entry, "nspawn"), _proc(entry, "init")
    if nspawn is None or init is None or not (alive(nspawn) or alive(init)):
        return None
    return Running(nspawn, init, int(entry.get("pidns") or 0))


def _record(entry: dict[str, Any], running: Running) -> None:
    entry.update(nspawn=running.nspawn.to_list(), init=running.init.to_list(), pidns=running.pidns)


def _stop_controller() -> None:
    """Stop the Redis that `piblade provision` started on this machine for the testbed cluster."""
    from piblade.context import cluster_state
    from piblade.local import down

    down(paths=cluster_state(CLUSTER_NAME))
