"""What the page is sent: a lean view of the snapshot, and the difference between two views.

The page used to get the whole snapshot (every node's raw sample, per-core
CPU, disks…) on each push, about every 2 s while a run was going: 63-72 KB a
minute per open tab, which ngrok's 1 GB a month would not last. Now:

* :func:`view` keeps what the page draws: nodes, queues and runs keyed by
  name, each node's readings keyed by reading. A running run carries no
  duration (it changed on every read): the page counts from ``created``.
* :func:`diff` gives only what changed between two views, as a patch of nested
  objects (an object merges into the one it replaces, key by key; anything else
  replaces; ``{"$del": 1}`` removes a key). :func:`apply` is its inverse, and
  ``static/dashboard.js`` does the same in the browser.
"""

from __future__ import annotations

from typing import Any

from piblade.dashboard.snapshot import Snapshot

DELETE = {"$del": 1}
_TERMINAL = {"finished", "failed"}


def node_view(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("state") == "unknown":
        return dict(node)
    sample = node.get("sample") or {}
    load = sample.get("load_avg")
    last_seen = node.get("last_seen")
    return {
        "name": node["name"],
        "role": node.get("role"),
        "state": node.get("state"),
        "up": node.get("up"),
        "paused": node.get("paused"),
        "last_seen": round(last_seen, 1) if isinstance(last_seen, int | float) else None,
        "max_temp": node.get("max_temp"),
        "temp_c": node.get("temp_c"),
        "temp_level": (node.get("levels") or {}).get("temp", "none"),
        "throttling": node.get("throttling") or [],
        "model": node.get("model"),
        "load1": round(load[0], 2) if load else None,
        "workers": node.get("workers", 0),
        "running": len(node.get("running_jobs") or ()),
        "versions": node.get("versions") or [],  # the piblade code its workers run
        "readings": {
            r["key"]: {"label": r["label"], "value": r["value"], "text": r["text"], "level": r["level"],
                       "bar": r["bar"]}
            for r in node.get("readings") or ()
        },
    }


def job_row(job: dict[str, Any]) -> dict[str, Any]:
    row = dict(job)
    if row.get("state") not in _TERMINAL:
        row["seconds"] = None  # the page counts a running run's time from `created`
    return row


def view(snap: Snapshot) -> dict[str, Any]:
    share = snap.share
    return {
        "cluster": snap.cluster,
        "error": snap.error,
        "unknown_since": snap.unknown_since,
        "share": {k: share[k] for k in ("free_text", "total_text", "level")} if share else None,
        "node_order": [n["name"] for n in snap.nodes],
        "nodes": {n["name"]: node_view(n) for n in snap.nodes},
        "queue_order": [q["name"] for q in snap.queues],
        "queues": {q["name"]: dict(q) for q in snap.queues},
        "alerts": {"service": snap.alert_service,
                   "firing": [{k: a[k] for k in ("key", "rule", "summary", "started")} for a in snap.alerts]},
        "job_order": [j["run"] for j in snap.jobs],
        "jobs": {j["run"]: job_row(j) for j in snap.jobs},
    }


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The patch that turns ``old`` into ``new`` (empty when they are equal)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            before = old[key]
            if isinstance(before, dict) and isinstance(value, dict) and not _is_delete(value):
                patch[key] = diff(before, value)
            else:
                patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = DELETE
    return patch


def apply(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``target`` with ``patch`` applied (a new dict; ``target`` is left as it was)."""
    out = dict(target)
    for key, value in patch.items():
        if _is_delete(value):
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply(out[key], value)
        else:
            out[key] = value
    return out


def _is_delete(value: Any) -> bool:
    return isinstance(value, dict) and value == DELETE
