"""One snapshot of the whole cluster: nodes (health, jobs, pauses), queues, the NAS share.

``piblade status`` renders it as a table and the dashboard as cards; both call
:func:`gather`, so they never disagree about what "down" or "paused" means.

* A node is *up* while its heartbeat key exists (``healthstore``); a node listed
  in the inventory that never sent one is down too, with ``last_seen`` None.
* Running jobs come from RQ's worker records: piblade names its workers
  ``<node>.<pid>`` (``piblade.worker._serve``), so busy workers are counted per node.
* A worker process whose supervisor reported it dead is *lost*: RQ keeps its
  key for up to 35 s, but it is neither counted as a worker nor as running a job.
* Reading never changes anything: registry counts skip RQ's cleanup (which would
  re-queue or fail abandoned jobs as a side effect of looking at them).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from piblade import healthstore, tasks
from piblade.healthmodel import READINGS, SHARE, Level, Reading, ThrottleFlags, human_bytes, temp_level
from piblade.inventory import Cluster, Node


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as status and the dashboard show it. ``sample`` is ``HealthSample.to_dict()``."""

    name: str
    role: str
    up: bool
    in_inventory: bool
    last_seen: float | None
    seen_ago: float | None
    paused: str | None
    running_jobs: tuple[str, ...]
    workers: int
    max_temp: float | None
    sample: Mapping[str, Any] | None
    #: Dead worker processes RQ still lists: "vm.1234 (killed by SIGKILL)".
    lost_workers: tuple[str, ...] = ()
    #: The piblade code its live workers run (one, unless an upgrade is under way on it).
    versions: tuple[str, ...] = ()

    def _get(self, key: str) -> Any:
        return self.sample.get(key) if self.sample else None

    def _number(self, key: str) -> float | None:
        value = self._get(key)
        return float(value) if isinstance(value, int | float) else None

    @property
    def temp_c(self) -> float | None:
        return self._number("temp_c")

    @property
    def cpu_percent(self) -> float | None:
        return self._number("cpu_percent")

    @property
    def mem_percent(self) -> float | None:
        return self._number("mem_percent")

    @property
    def disk_percent(self) -> float | None:
        """Use of the root file system."""
        disks = self._get("disks") or {}
        root = disks.get("/")
        value = root.get("percent") if root else None
        return float(value) if isinstance(value, int | float) else None

    @property
    def model(self) -> str | None:
        value = self._get("model")
        return str(value) if value is not None else None

    @property
    def flags(self) -> ThrottleFlags | None:
        raw = self._get("flags")
        return ThrottleFlags.from_dict(raw) if raw is not None else None

    @property
    def throttling(self) -> tuple[str, ...]:
        """Active throttling flags as labels, e.g. ``("under-voltage", "throttled since boot")``."""
        flags = self.flags
        return flags.labels() if flags is not None else ()

    @property
    def hot(self) -> bool:
        return self.temp_level is Level.BAD

    @property
    def temp_level(self) -> Level:
        return temp_level(self.temp_c, self.max_temp)

    def reading(self, reading: Reading) -> float | None:
        """The value of one of :data:`~piblade.healthmodel.READINGS`: a property here, or the sample's field."""
        if isinstance(getattr(type(self), reading.key, None), property):
            value = getattr(self, reading.key)
            return float(value) if isinstance(value, int | float) else None
        return self._number(reading.key)

    @property
    def state(self) -> str:
        """One word for colours and badges: ``down``, ``paused``, ``hot``, ``throttled`` or ``up``."""
        if not self.up:
            return "down"
        if self.paused:
            return "paused"
        if self.hot:
            return "hot"
        flags = self.flags
        if flags is not None and flags.now_reason():
            return "throttled"
        return "up"

    def to_dict(self) -> dict[str, Any]:
        values = {r.key: self.reading(r) for r in READINGS}  # each reading once
        return {
            "name": self.name,
            "role": self.role,
            "up": self.up,
            "state": self.state,
            "in_inventory": self.in_inventory,
            "last_seen": self.last_seen,
            "seen_ago": self.seen_ago,
            "paused": self.paused,
            "running_jobs": list(self.running_jobs),
            "workers": self.workers,
            "lost_workers": list(self.lost_workers),
            "versions": list(self.versions),
            "max_temp": self.max_temp,
            "temp_c": self.temp_c,
            "throttling": list(self.throttling),
            "cpu_percent": self.cpu_percent,
            "mem_percent": self.mem_percent,
            "disk_percent": self.disk_percent,
            "model": self.model,
            **values,
            "levels": {"temp": str(self.temp_level), **{r.key: str(r.level(values[r.key])) for r in READINGS}},
            "readings": [
                {"key": r.key, "label": r.label, "value": values[r.key], "text": r.text(values[r.key]),
                 "level": str(r.level(values[r.key])), "bar": r.bar}
                for r in READINGS
            ],
            "sample": dict(self.sample) if self.sample is not None else None,
        }


@dataclass(frozen=True, slots=True)
class QueueStatus:
    name: str
    queued: int
    started: int
    failed: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "queued": self.queued, "started": self.started, "failed": self.failed,
                "workers": self.workers}


@dataclass(frozen=True, slots=True)
class ShareStatus:
    """Free space of the NAS share, as seen by a node that has it mounted."""

    node: str
    path: str
    total: int
    used: int
    free: int
    percent: float

    @property
    def level(self) -> Level:
        return SHARE.level(self.percent)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "path": self.path, "total": self.total, "used": self.used, "free": self.free,
                "percent": self.percent, "level": str(self.level),
                "free_text": human_bytes(self.free), "total_text": human_bytes(self.total)}


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    name: str | None
    time: float
    nodes: tuple[NodeStatus, ...]
    queues: tuple[QueueStatus, ...]
    share: ShareStatus | None
    #: Every dead worker process RQ still lists, also of nodes without a heartbeat.
    lost_workers: tuple[str, ...] = ()

    @property
    def down(self) -> tuple[str, ...]:
        """Inventory nodes without a heartbeat: the reason `piblade status` exits 1."""
        return tuple(n.name for n in self.nodes if n.in_inventory and not n.up)

    @property
    def versions(self) -> dict[str, tuple[str, ...]]:
        """piblade version → the nodes whose live workers run it; more than one key: half-upgraded."""
        out: dict[str, list[str]] = {}
        for node in self.nodes:
            for version in node.versions:
                out.setdefault(version, []).append(node.name)
        return {v: tuple(names) for v, names in sorted(out.items())}

    def node(self, name: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.name,
            "time": self.time,
            "nodes": [n.to_dict() for n in self.nodes],
            "queues": [q.to_dict() for q in self.queues],
            "share": self.share.to_dict() if self.share else None,
            "down": list(self.down),
            "lost_workers": list(self.lost_workers),
            "versions": {v: list(names) for v, names in self.versions.items()},
        }


def node_of_worker(worker_name: str) -> str | None:
    """``pi1.lan.1234`` → ``pi1.lan``; None for a worker not named by piblade."""
    node, _, pid = worker_name.rpartition(".")
    return node if node and pid.isdigit() else None


def heartbeat_name(node: Node, index: Mapping[str, Any]) -> str:
    """The name ``node`` beats under: its own, or this host's name for the inventory's local host.

    The local cluster's inventory calls this machine ``localhost`` while its
    agent and workers report under the host name (as they would on a Pi).
    """
    if node.name in index:
        return node.name
    if node.is_local or node.name == "localhost" or node.address in ("127.0.0.1", "::1"):
        return socket.gethostname()
    return node.name


def gather(conn: redis.Redis, cluster: Cluster | None = None, *, now: float | None = None) -> ClusterStatus:
    """Read everything status needs. Nodes: the inventory's if given, else every node that ever beat."""
    now = time.time() if now is None else now
    index = healthstore.nodes(conn)
    if cluster is not None:
        names = [n.name for n in cluster.nodes]
        beats = {n.name: heartbeat_name(n, index) for n in cluster.nodes}
        roles = {n.name: ",".join(sorted(n.roles)) for n in cluster.nodes}
        max_temps: dict[str, float | None] = {n.name: n.settings.max_temp for n in cluster.nodes}
        queue_names = {q for n in cluster.nodes for q in n.settings.queues}
    else:
        names = sorted(index)
        beats = {n: n for n in names}
        roles = {}
        max_temps = {}
        queue_names = set()
    beat_names = [beats[n] for n in names]
    samples = healthstore.current(conn, beat_names)
    paused = healthstore.pauses(conn, beat_names)

    jobs: dict[str, list[str]] = {}
    worker_count: dict[str, int] = {}
    queue_workers: dict[str, int] = {}
    lost: dict[str, list[str]] = {}
    versions: dict[str, set[str]] = {}
    rq_workers = tasks.workers(conn)
    dead = healthstore.lost_workers(conn, [w.name for w in rq_workers])
    for worker in rq_workers:
        if worker.name in dead:
            lost.setdefault(node_of_worker(worker.name) or "", []).append(f"{worker.name} ({dead[worker.name]})")
            continue
        for qname in worker.queues:
            queue_workers[qname] = queue_workers.get(qname, 0) + 1
        node = node_of_worker(worker.name)
        if node is None:
            continue
        worker_count[node] = worker_count.get(node, 0) + 1
        if worker.version:
            versions.setdefault(node, set()).add(worker.version)
        if worker.job:
            jobs.setdefault(node, []).append(worker.job)

    nodes = []
    for name in names:
        beat = beats[name]
        sample = samples.get(beat)
        seen = index.get(beat, {}).get("last_seen")
        role = roles.get(name) or (sample or {}).get("role") or index.get(beat, {}).get("role", "")
        max_temp = max_temps.get(name) if cluster is not None else (sample or {}).get("max_temp")
        nodes.append(NodeStatus(
            name=name,
            role=role,
            up=sample is not None,
            in_inventory=cluster is not None,
            last_seen=seen,
            seen_ago=round(max(0.0, now - seen), 1) if seen is not None else None,
            paused=paused.get(beat),
            running_jobs=tuple(sorted(jobs.get(beat, ()))),
            workers=worker_count.get(beat, 0),
            max_temp=max_temp,
            sample=sample,
            lost_workers=tuple(sorted(lost.get(beat, ()))),
            versions=tuple(sorted(versions.get(beat, ()))),
        ))

    queue_names |= tasks.queue_names(conn) | set(queue_workers)
    queues = []
    for qname in sorted(queue_names or {"default"}):
        counts = tasks.queue_counts(conn, qname)
        queues.append(QueueStatus(
            name=qname,
            queued=counts.queued,
            started=counts.started,
            failed=counts.failed,
            workers=queue_workers.get(qname, 0),
        ))

    return ClusterStatus(
        name=cluster.name if cluster is not None else None,
        time=now,
        nodes=tuple(nodes),
        queues=tuple(queues),
        share=_share(nodes),
        lost_workers=tuple(sorted(w for names in lost.values() for w in names)),
    )


def _share(nodes: list[NodeStatus]) -> ShareStatus | None:
    """Every node mounts the same share; the first up node that reports it will do."""
    for node in nodes:
        if not node.sample:
            continue
        mount = node.sample.get("mount")
        disk = (node.sample.get("disks") or {}).get(mount) if isinstance(mount, str) else None
        if isinstance(mount, str) and disk:
            return ShareStatus(node.name, mount, disk["total"], disk["used"], disk["free"], disk["percent"])
    return None
