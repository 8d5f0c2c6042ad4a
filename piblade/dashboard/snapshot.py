"""What the dashboard shows, read from Redis in one go: nodes and queues, recent runs, history.

Nodes and queues come from :func:`piblade.clusterstatus.gather`, the same
function behind ``piblade status``, so the page and the terminal never disagree
about "down" or "paused". Recent runs come from :mod:`piblade.runs` and
:func:`piblade.dispatch.run_status` while Redis knows them, and from the
results database (:mod:`piblade.resultsdb`) after it forgot them: the table is
filled up to :data:`JOBS_SHOWN` with recorded runs (read at most every
:data:`HISTORY_REFRESH` seconds; a database that does not answer only leaves
them out);
the alerts firing now from :mod:`piblade.alertstore`, as ``piblade alerts list``
shows them.

Reads here are synchronous (redis-py); the web layer runs them in a worker
thread. A finished run never changes, so its details (per-node counts, failure
reason, duration) are read once and cached; runs still going are read without
details, which costs one small pipeline however many tasks they have. A
finished run whose report page is on the share (``piblade report``) gets
``"report": true``, and the page links it to ``/reports/<id>``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from piblade import alertstore, healthstore, runs, taskcounts
from piblade.inventory import Cluster

if TYPE_CHECKING:
    from piblade.dashboard.reports import ReportShelf
    from piblade.history import RunSummary
    from piblade.resultsdb import ResultsTarget

#: Recent runs listed on the page and by /api/jobs.
JOBS_SHOWN = 15
#: Seconds between reads of the run history in PostgreSQL (recorded runs change rarely).
HISTORY_REFRESH = 10.0
#: Points per history chart: plenty for a phone-width chart, small enough to send often.
HISTORY_POINTS = 360
_TERMINAL = {"finished", "failed"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page needs at one moment; ``error`` says why it may be stale."""

    cluster: str | None
    time: float
    nodes: tuple[dict[str, Any], ...] = ()
    queues: tuple[dict[str, Any], ...] = ()
    jobs: tuple[dict[str, Any], ...] = ()
    share: dict[str, Any] | None = None
    error: str | None = None
    #: While Redis cannot be read: when the last good read was (None: never, or Redis is fine).
    unknown_since: float | None = None
    #: What is firing now (``alertstore`` episodes, oldest first) and whether an alert service is active.
    alerts: tuple[dict[str, Any], ...] = ()
    alert_service: bool | None = None
    #: Tasks finished/failed per (node, queue, outcome), for /metrics only (not sent to the page).
    task_counts: dict[tuple[str, str, str], int] = field(default_factory=dict, compare=False)
    #: JSON of the content without clocks: equal fingerprints mean nothing worth pushing changed.
    fingerprint: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "time": self.time,
            "nodes": list(self.nodes),
            "queues": list(self.queues),
            "jobs": list(self.jobs),
            "share": self.share,
            "alerts": list(self.alerts),
            "alert_service": self.alert_service,
            "error": self.error,
            "unknown_since": self.unknown_since,
        }


def unknown(last: Snapshot | None, cluster: str | None, now: float, error: str) -> Snapshot:
    """What can be said while Redis cannot be read: which nodes there were, and nothing about them.

    Re-serving the last readings would show a dead controller's cluster as up
    and healthy (with a green dot, and ``piblade_node_up 1`` for alerts that
    should fire). The nodes keep their names and roles, so their cards stay
    where they were, with state ``unknown`` since the last good read; queues
    and runs are the last ones known, which the page marks as of that time.
    """
    since = last.time if last is not None else None
    nodes = tuple(
        {"name": n["name"], "role": n.get("role"), "state": "unknown", "up": None,
         "in_inventory": n.get("in_inventory"), "last_seen": n.get("last_seen"), "unknown_since": since}
        for n in (last.nodes if last is not None else ())
    )
    queues = last.queues if last is not None else ()
    jobs = last.jobs if last is not None else ()
    return Snapshot(cluster, now, nodes, queues, jobs, None, error, unknown_since=since,
                    fingerprint=_fingerprint(nodes, queues, jobs, None, error))


def _fingerprint(nodes: Any, queues: Any, jobs: Any, share: Any, error: str | None, alerts: Any = None) -> str:
    steady = [{k: v for k, v in n.items() if k != "seen_ago"} for n in nodes]
    return json.dumps([steady, queues, jobs, share, error, alerts], sort_keys=True, default=str)


def job_view(status: dict[str, Any], now: float, failed_nodes: dict[str, int] | None = None) -> dict[str, Any]:
    """A run as a row of the jobs table: what, how far, how long, where (finished and failed), why it failed."""
    failures = status.get("failures") or []
    # RunStatus decides what counts as done and failed (an expired task is failed), not this view.
    failed = status["failed"]
    seconds = status.get("seconds")
    if seconds is None and status["state"] not in _TERMINAL:
        seconds = max(0.0, now - status["created"])
    return {
        "run": status["run"],
        "job": status["job"],
        "queue": status.get("queue"),
        "state": status["state"],
        "total": status["total"],
        "done": status["done"],
        "failed": failed,
        "created": status["created"],
        "seconds": round(seconds, 2) if seconds is not None else None,
        "nodes": status.get("nodes") or {},
        "failed_nodes": failed_nodes or {},
        "failure": failures[0]["error"] if failures else None,
    }


def history_view(run: RunSummary) -> dict[str, Any]:
    """A recorded run (Redis forgot it) as a row of the jobs table."""
    return {
        "run": run.id,
        "job": run.job,
        "queue": run.queue,
        "state": run.state,
        "total": run.tasks,
        "done": min(run.done, run.tasks),
        "failed": run.failed,
        "created": run.submitted,
        "seconds": round(run.seconds, 2) if run.seconds is not None else None,
        "nodes": {},
        "failed_nodes": {},
        "failure": None,
        "recorded": True,
    }


class SnapshotSource:
    """Reads snapshots; keeps the details of finished runs and the last good snapshot."""

    def __init__(
        self, conn: redis.Redis, cluster: Cluster | None = None, *, jobs_shown: int = JOBS_SHOWN,
        reports: ReportShelf | None = None, results: ResultsTarget | None = None,
    ) -> None:
        self.conn = conn
        #: The results database whose recorded runs fill the table after Redis forgot them.
        self.results = results
        self._history: list[dict[str, Any]] = []
        self._history_read = 0.0
        self.cluster = cluster
        self.jobs_shown = jobs_shown
        #: Where finished runs' report pages are looked for (None: no links).
        self.reports = reports
        self._finished: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last: Snapshot | None = None

    @property
    def name(self) -> str | None:
        return self.cluster.name if self.cluster is not None else None

    def read(self) -> Snapshot:
        """A fresh snapshot; if Redis fails, one that says what is unknown since when (see :func:`unknown`)."""
        now = time.time()
        try:
            snap = self._read(now)
        except (redis.RedisError, OSError) as exc:
            error = f"cannot read Redis: {exc.__class__.__name__}: {exc}"
            return unknown(self._last, self.name, now, error)
        self._last = snap
        return snap

    def _read(self, now: float) -> Snapshot:
        from piblade.clusterstatus import gather

        status = gather(self.conn, self.cluster, now=now)
        nodes = tuple(n.to_dict() for n in status.nodes)
        queues = tuple(q.to_dict() for q in status.queues)
        share = status.share.to_dict() if status.share else None
        jobs = tuple(self.jobs(now))
        alerts = tuple(e.to_dict() for e in sorted(alertstore.firing(self.conn).values(), key=lambda e: e.started))
        service = alertstore.leader(self.conn) is not None
        return Snapshot(
            self.name, now, nodes, queues, jobs, share, alerts=alerts, alert_service=service,
            task_counts=taskcounts.read(self.conn),
            fingerprint=_fingerprint(nodes, queues, jobs, share, None, [alerts, service]),
        )

    def jobs(self, now: float | None = None) -> list[dict[str, Any]]:
        from piblade.dispatch import run_status
        from piblade.errors import NotFound

        now = time.time() if now is None else now
        out = []
        with self._lock:
            recent = runs.recent_runs(self.conn, self.jobs_shown)
            for record in recent:
                cached = self._finished.get(record.id)
                if cached is None:
                    try:
                        quick = run_status(self.conn, record.id, details=False)
                        if quick.state in _TERMINAL:
                            done = run_status(self.conn, record.id, details=True).to_dict()
                            cached = job_view(done, now, self._failed_nodes(done))
                            self._finished[record.id] = cached
                        else:
                            cached = job_view(quick.to_dict(), now)
                    except NotFound:  # expired between the index and the record
                        continue
                out.append(cached)
            keep = {r.id for r in recent}
            for run_id in [r for r in self._finished if r not in keep]:
                del self._finished[run_id]
            if len(out) < self.jobs_shown:
                older = [h for h in self._recorded(now) if h["run"] not in keep]
                out.extend(older[: self.jobs_shown - len(out)])
        if self.reports is not None:
            over = [j["run"] for j in out if j["state"] in _TERMINAL]
            have = self.reports.which(over) if over else set()
            out = [{**j, "report": True} if j["run"] in have else j for j in out]
        return out

    def _recorded(self, now: float) -> list[dict[str, Any]]:
        """The newest recorded runs, from PostgreSQL at most every HISTORY_REFRESH seconds."""
        if self.results is None or now - self._history_read < HISTORY_REFRESH:
            return self._history
        from piblade import resultsdb

        self._history_read = now
        try:
            with resultsdb.connect(self.results, timeout=2.0) as db:
                self._history = [history_view(r) for r in resultsdb.list_runs(db, limit=self.jobs_shown)]
        except resultsdb.ResultsUnavailable:
            self._history = []  # the live runs from Redis are still shown
        return self._history

    def _failed_nodes(self, status: dict[str, Any]) -> dict[str, int]:
        """Where a finished run's failed tasks ran (RQ's worker name is ``<node>.<pid>``); read once per run."""
        from piblade import tasks
        from piblade.clusterstatus import node_of_worker
        from piblade.errors import NotFound

        out: dict[str, int] = {}
        for failure in status.get("failures") or ():
            task = failure.get("job")
            if not task:
                continue
            try:
                node = node_of_worker(tasks.task_info(self.conn, task).get("worker") or "")
            except NotFound:
                continue
            if node:
                out[node] = out.get(node, 0) + 1
        return out

    def history(self, node: str, seconds: float, points: int = HISTORY_POINTS) -> list[dict[str, Any]] | None:
        """Chart points (time, temperature, CPU, memory) of ``node``; None for a node never seen."""
        from piblade.clusterstatus import heartbeat_name

        index = healthstore.nodes(self.conn)
        member = next((n for n in self.cluster.nodes if n.name == node), None) if self.cluster is not None else None
        if member is None and node not in index:
            return None
        # An inventory's `localhost` beats under this machine's host name (as the cards do).
        beat = heartbeat_name(member, index) if member is not None else node
        return [history_point(s) for s in healthstore.history(self.conn, beat, seconds, limit=points)]


def history_point(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "t": sample.get("time"),
        "temp_c": sample.get("temp_c"),
        "cpu_percent": sample.get("cpu_percent"),
        "mem_percent": sample.get("mem_percent"),
    }
