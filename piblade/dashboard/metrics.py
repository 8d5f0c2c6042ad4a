"""The snapshot as Prometheus text (exposition format 0.0.4), for users who already run Grafana.

Pure: a function of the snapshot dict, so it is tested without a server. A
value a node cannot tell (no temperature sensor) is left out rather than
written as 0, which Prometheus would chart as a real reading; while Redis
cannot be read, every node and queue series is left out.

Names follow Prometheus's conventions: base units in the name (``_celsius``,
``_bytes``, ``_bytes_per_second``, ``_seconds``), shares of a whole as 0-1
``_ratio``, and ``_total`` only on counters (tasks finished and failed per node
and queue, from :mod:`piblade.taskcounts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from piblade.healthmodel import READINGS, SHARE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Throttling flags as ``flag`` label values, in the order the firmware's bits go.
THROTTLE_FLAGS = (
    "under_voltage",
    "freq_capped",
    "throttled",
    "soft_temp_limit",
    "under_voltage_since_boot",
    "freq_capped_since_boot",
    "throttled_since_boot",
    "soft_temp_limit_since_boot",
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def add(self, labels: dict[str, str], value: float | bool | None) -> None:
        if value is None:
            return
        self.lines.append(f"{self.name}{_labels(labels)} {_number(float(value))}")


#: Families whose values are read from the node's sample: (name, sample field, help).
_SAMPLE_GAUGES = (
    ("piblade_node_memory_total_bytes", "mem_total", "Memory the node has."),
    ("piblade_node_memory_used_bytes", "mem_used", "Memory in use."),
    ("piblade_node_network_receive_bytes_per_second", "net_rx_bps", "Bytes received per second, all interfaces."),
    ("piblade_node_network_transmit_bytes_per_second", "net_tx_bps", "Bytes sent per second, all interfaces."),
)


def render(snapshot: dict[str, Any], task_counts: Mapping[tuple[str, str, str], int] | None = None) -> str:
    """Prometheus text for a snapshot dict (:meth:`Snapshot.to_dict`) and the task counters
    (:func:`piblade.taskcounts.read`: (node, queue, outcome) -> count)."""
    fam = {
        name: _Family(name, kind, text)
        for name, kind, text in (
            ("piblade_node_up", "gauge", "1 while the node's heartbeat is fresh."),
            ("piblade_node_paused", "gauge", "1 while the node's workers take no new jobs (hot, under-voltage)."),
            ("piblade_node_last_seen_timestamp_seconds", "gauge", "Unix time of the node's last heartbeat."),
            ("piblade_node_temperature_celsius", "gauge", "SoC temperature."),
            *((r.metric, "gauge", r.help) for r in READINGS),
            *((name, "gauge", text) for name, _, text in _SAMPLE_GAUGES),
            ("piblade_node_load1", "gauge", "One-minute load average."),
            ("piblade_node_throttled", "gauge", "Firmware throttling flags (vcgencmd get_throttled), 1 when set."),
            ("piblade_node_running_jobs", "gauge", "Jobs the node's workers are running."),
            ("piblade_tasks_finished_total", "counter", "Tasks the node's workers finished, per queue."),
            ("piblade_tasks_failed_total", "counter", "Task attempts that failed on the node, per queue."),
            ("piblade_queue_depth", "gauge", "Jobs waiting in the queue."),
            ("piblade_queue_started", "gauge", "Jobs of the queue being run."),
            ("piblade_queue_failed", "gauge", "Jobs in the queue's failed registry."),
            ("piblade_queue_workers", "gauge", "Workers listening on the queue."),
            ("piblade_share_size_bytes", "gauge", "Size of the NAS share's file system."),
            ("piblade_share_free_bytes", "gauge", "Free bytes on the NAS share."),
            (SHARE.metric, "gauge", SHARE.help),
            ("piblade_redis_up", "gauge", "1 when the dashboard could read Redis for this scrape."),
        )
    }
    current = snapshot.get("error") is None
    # While Redis cannot be read, nothing is known about nodes, queues or counts: no series at all (an
    # alert on piblade_node_up == 0 or on its absence fires), only piblade_redis_up 0.
    for node in snapshot.get("nodes", ()) if current else ():
        key = {"node": node["name"]}
        fam["piblade_node_up"].add({**key, "role": node.get("role") or ""}, node.get("up"))
        fam["piblade_node_paused"].add(key, bool(node.get("paused")) if node.get("up") else None)
        fam["piblade_node_last_seen_timestamp_seconds"].add(key, node.get("last_seen"))
        if not node.get("up"):
            continue  # an expired node's last numbers are not current readings
        sample = node.get("sample") or {}
        fam["piblade_node_temperature_celsius"].add(key, node.get("temp_c"))
        for r in READINGS:
            fam[r.metric].add(key, r.metric_value(node.get(r.key)))
        for name, field, _ in _SAMPLE_GAUGES:
            value = sample.get(field)
            fam[name].add(key, value if isinstance(value, int | float) else None)
        load = sample.get("load_avg")
        fam["piblade_node_load1"].add(key, load[0] if load else None)
        fam["piblade_node_running_jobs"].add(key, len(node.get("running_jobs") or ()))
        flags = sample.get("flags")
        if flags is not None:
            for flag in THROTTLE_FLAGS:
                fam["piblade_node_throttled"].add({**key, "flag": flag}, bool(flags.get(flag)))
    for (node_name, queue_name, outcome), count in sorted((task_counts or {}).items()) if current else ():
        fam[f"piblade_tasks_{outcome}_total"].add({"node": node_name, "queue": queue_name}, count)
    for queue in snapshot.get("queues", ()) if current else ():
        key = {"queue": queue["name"]}
        fam["piblade_queue_depth"].add(key, queue.get("queued"))
        fam["piblade_queue_started"].add(key, queue.get("started"))
        fam["piblade_queue_failed"].add(key, queue.get("failed"))
        fam["piblade_queue_workers"].add(key, queue.get("workers"))
    share = snapshot.get("share") if current else None
    if share:
        key = {"path": share["path"]}
        fam["piblade_share_size_bytes"].add(key, share.get("total"))
        fam["piblade_share_free_bytes"].add(key, share.get("free"))
        fam[SHARE.metric].add(key, SHARE.metric_value(share.get("percent")))
    fam["piblade_redis_up"].add({}, current)
    return _join(f.lines for f in fam.values())


def _join(families: Iterable[list[str]]) -> str:
    return "\n".join(line for lines in families for line in lines) + "\n"
