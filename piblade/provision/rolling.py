"""Restart the workers of a cluster one node at a time, so a run in progress loses nothing.

Every host converges in parallel, but the restarts of ``piblade-worker`` take
turns (one lock for the whole provisioning run). A worker's SIGTERM is RQ's warm
shutdown (``piblade.worker.Supervisor``): each process finishes the task in hand
and takes no new one, and ``systemctl restart`` returns once they all did (the
unit gives them ``TimeoutStopSec``). The next node restarts only after this
node's new workers registered with the cluster's Redis, so while one node
upgrades the others keep taking tasks, and the queued tasks simply wait: none is
lost, none runs twice beyond RQ's at-least-once.

If a node's new workers do not come back (new code that does not start), the
roll stops there: the nodes not yet restarted keep their old workers and the
run goes on with them; those hosts report the restart as not done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from piblade import tasks
from piblade.clusterstatus import node_of_worker
from piblade.errors import PibladeError
from piblade.provision.ssh import Session
from piblade.provision.steps import Change, ChangeKind
from piblade.redisconn import RedisTarget, connect

#: The unit whose restarts take turns.
WORKER_UNIT = "piblade-worker.service"
#: How long a node's new workers may take to register (Numba compiles every kernel after an upgrade).
COME_BACK_SECONDS = 300.0


def work_in_progress(counts: list[tasks.QueueCounts]) -> str | None:
    """"a run is in progress (120 tasks queued, 4 started)", or None when no queue holds work."""
    queued = sum(c.queued for c in counts)
    started = sum(c.started for c in counts)
    if not queued and not started:
        return None
    return f"a run is in progress ({queued} task{'' if queued == 1 else 's'} queued, {started} started)"


@dataclass
class Rolling:
    """The provisioning run's turn-taking for worker restarts, and what it knows about the cluster's work."""

    #: The cluster's Redis, or None when it cannot be reached (restarts still take turns).
    target: RedisTarget | None
    #: What :func:`work_in_progress` said when the provisioning run began.
    in_progress: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    #: Why the roll stopped (a node's workers did not come back); later nodes are not restarted.
    halted: str | None = None

    @classmethod
    def for_cluster(cls, target: RedisTarget) -> Rolling:
        try:
            conn = connect(target, timeout=3.0)
        except PibladeError:
            return cls(None)
        try:
            counts = [tasks.queue_counts(conn, name) for name in sorted(tasks.queue_names(conn))]
        finally:
            conn.close()
        return cls(target, work_in_progress(counts))

    def holds(self, change: Change) -> bool:
        return change.kind is ChangeKind.RESTART and change.step == f"restart {WORKER_UNIT}"

    def describe(self, change: Change) -> str:
        """The restart as --check shows it."""
        work = self.in_progress or ("no run is in progress" if self.target is not None
                                    else "whether a run is in progress is unknown (the cluster's Redis did not answer)")
        return f"{change.summary}, one node at a time: {work}; each worker finishes the task in hand first"

    def _workers(self, node: str) -> dict[str, str | None]:
        if self.target is None:
            return {}
        conn = connect(self.target, timeout=5.0)
        try:
            return {w.name: w.version for w in tasks.workers(conn) if node_of_worker(w.name) == node}
        finally:
            conn.close()

    def restart(self, session: Session, node: str, change: Change, emit: Callable[[str, str], None],
                *, timeout: float = COME_BACK_SECONDS) -> tuple[bool, str]:
        """Restart ``node``'s workers when its turn comes and wait for them: (ok, what happened)."""
        emit(node, "waiting for its turn to restart workers")
        with self.lock:
            if self.halted:
                return False, f"not restarted: {self.halted}"
            started = time.monotonic()
            before = set(self._workers(node))
            emit(node, "restarting workers (each finishes the task in hand)")
            result = session.script(change.script, timeout=600)
            if not result.ok:
                self.halted = f"restarting the workers of {node} failed"
                return False, (result.stderr or result.stdout).strip() or self.halted
            stopped = time.monotonic() - started
            if self.target is None:
                self.done += 1
                return True, f"restarted workers, node {self.done} of the roll (in {stopped:.0f} s)"
            emit(node, "waiting for its new workers")
            deadline = time.monotonic() + timeout
            while True:
                new = {name: v for name, v in self._workers(node).items() if name not in before}
                if new:
                    break
                if time.monotonic() > deadline:
                    self.halted = f"the new workers of {node} did not register within {timeout:.0f} s"
                    return False, self.halted + f" (see `journalctl -u {WORKER_UNIT}` on {node})"
                time.sleep(0.5)
            self.done += 1
            versions = ", ".join(sorted({v or "unknown" for v in new.values()}))
            work = f"; {self.in_progress}" if self.in_progress else ""
            return True, (f"restarted workers, node {self.done} of the roll{work}: old workers stopped after "
                          f"{stopped:.0f} s, new ones back after {time.monotonic() - started:.0f} s on piblade "
                          f"{versions}")
