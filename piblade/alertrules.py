"""When to alert the owner, as pure functions: an observation of the cluster in, episode transitions out.

An *episode* is one stretch of time during which a condition holds (pi3 is
down, pi1 is hot, run 1204-c468b2e0 failed). It is announced twice: once when it
starts (*fire*) and once when it ends (*clear*), never once per heartbeat.
Which episodes are open is the caller's state (``alertstore`` keeps it in
Redis, so a restarted or standby alert service carries on where the last one
stopped); :func:`evaluate` only compares that state with a new observation.

Hysteresis is :func:`piblade.healthmodel.still_over`, the same rule the agent's
pause gate uses: a node is hot at its ``max_temp`` and stays hot until it has
cooled :data:`~piblade.healthmodel.HOT_MARGIN` below it; a disk is full at its
threshold until :data:`~piblade.healthmodel.USAGE_MARGIN` points below. Down is
"no heartbeat for ``down_after`` intervals", back up is the next heartbeat.

A rule that cannot tell (the node is down, the board has no sensor) leaves its
episode as it is. Nothing here touches Redis, the clock or the network.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from piblade.healthmodel import DEFAULT_MAX_TEMP, HOT_MARGIN, USAGE_MARGIN, still_over

#: Rules whose subject is a node (the others watch the share or a run).
NODE_RULES = frozenset({"down", "temp", "under_voltage", "throttled", "disk", "share_mount"})
#: Each rule's name (the first part of an episode key) and what it watches, for docs and `alerts list`.
RULES: Mapping[str, str] = {
    "down": "no heartbeat from a node for piblade_alert_down_after intervals; clears at its next heartbeat",
    "temp": f"a node at or over its piblade_max_temp; clears {HOT_MARGIN:g} °C below it",
    "under_voltage": "the firmware reports under-voltage now (a weak power supply)",
    "throttled": "the firmware reports the CPU throttled now",
    "disk": f"a node's root disk over piblade_alert_disk_percent; clears {USAGE_MARGIN:g} points below",
    "share": f"the NAS share over piblade_alert_share_percent; clears {USAGE_MARGIN:g} points below",
    "share_mount": "a worker whose share is not mounted",
    "run_failed": "a run ended with failed tasks; clears if a retry finishes it",
}


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The thresholds of the rules (the inventory's ``piblade_alert_*``); temperature is each node's own."""

    down_after: int = 3
    disk_percent: float = 90.0
    share_percent: float = 90.0
    #: Nodes that must have the share mounted (the workers of a cluster with a NAS node).
    mount_nodes: frozenset[str] = frozenset()
    #: Runs created longer ago than this are no longer watched; their episodes close silently.
    run_window: float = 24 * 3600.0
    #: The inventory's nodes; None watches every node with a heartbeat (the local cluster). A node
    #: taken out of the inventory is not reported down while its last heartbeat is still stored,
    #: and its open episodes close silently.
    nodes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the health store has it: when it last beat, how often it should, its latest sample."""

    name: str
    last_seen: float
    interval: float
    #: ``HealthSample.to_dict()``, or None once the heartbeat key expired.
    sample: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class RunView:
    id: str
    job: str
    state: str  # dispatch.RunStatus.state: queued, running, finished, failed
    failed: int
    total: int
    created: float


@dataclass(frozen=True, slots=True)
class Observation:
    time: float
    nodes: tuple[NodeView, ...] = ()
    runs: tuple[RunView, ...] = ()


@dataclass(frozen=True, slots=True)
class Episode:
    """A condition that holds now: ``key`` is ``<rule>:<subject>`` (``temp:pi1``)."""

    key: str
    rule: str
    subject: str
    started: float
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "rule": self.rule, "subject": self.subject, "started": self.started,
                "summary": self.summary}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        return cls(str(data["key"]), str(data["rule"]), str(data["subject"]), float(data["started"]),
                   str(data["summary"]))


class Change(enum.StrEnum):
    FIRE = "fire"  # the condition started: tell the owner
    CLEAR = "clear"  # it ended: tell the owner
    CLOSE = "close"  # no longer watched (an old run): forget it without a message


@dataclass(frozen=True, slots=True)
class Transition:
    change: Change
    episode: Episode
    at: float
    #: What ended it ("pi1 cooled to 74.0 °C"); empty when it fired.
    detail: str = ""

    @property
    def notify(self) -> bool:
        return self.change is not Change.CLOSE


@dataclass(frozen=True, slots=True)
class _Verdict:
    rule: str
    subject: str
    #: True: the condition holds; False: it does not; None: cannot tell (leave the episode as it is).
    over: bool | None
    text: str

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.subject}"


def evaluate(settings: AlertSettings, obs: Observation, firing: Mapping[str, Episode]) -> list[Transition]:
    """The episodes that start, end or close between ``firing`` and ``obs``, in a stable order."""
    out: list[Transition] = []
    judged: set[str] = set()
    for verdict in _judge(settings, obs, firing):
        judged.add(verdict.key)
        episode = firing.get(verdict.key)
        if verdict.over and episode is None:
            out.append(Transition(Change.FIRE, Episode(verdict.key, verdict.rule, verdict.subject, obs.time,
                                                       verdict.text), obs.time))
        elif verdict.over is False and episode is not None:
            out.append(Transition(Change.CLEAR, episode, obs.time, verdict.text))
    for key in sorted(firing):
        episode = firing[key]
        gone = (episode.rule in NODE_RULES and settings.nodes is not None and episode.subject not in settings.nodes)
        if key not in judged and (episode.rule == "run_failed" or gone):
            out.append(Transition(Change.CLOSE, episode, obs.time))
    return out


def _judge(settings: AlertSettings, obs: Observation, firing: Mapping[str, Episode]) -> Iterator[_Verdict]:
    for node in sorted(obs.nodes, key=lambda n: n.name):
        if settings.nodes is not None and node.name not in settings.nodes:
            continue  # removed from the inventory; its heartbeat has not expired yet
        down = yield from _node(settings, obs.time, node, firing)
        if not down and node.name in settings.mount_nodes and node.sample is not None:
            mounted = bool(node.sample.get("mount"))
            yield _Verdict("share_mount", node.name, not mounted,
                           f"{node.name} has the share mounted again" if mounted
                           else f"{node.name} does not have the share mounted: its jobs cannot read or write it")
    yield from _share(settings, obs, firing)
    for run in sorted(obs.runs, key=lambda r: r.id):
        yield from _run(settings, obs.time, run)


def _node(
    settings: AlertSettings, now: float, node: NodeView, firing: Mapping[str, Episode]
) -> Generator[_Verdict, None, bool]:
    """Down and back up, then (when up) temperature, power, throttling and disk. Returns "is down"."""
    name = node.name
    silent = max(0.0, now - node.last_seen)
    down = silent > settings.down_after * node.interval
    yield _Verdict("down", name, down,
                   f"{name} is down: no heartbeat for {_duration(silent)}" if down else f"{name} is back up")
    sample = node.sample
    if down or sample is None:
        return True

    temp = _number(sample.get("temp_c"))
    if temp is not None:
        limit = _number(sample.get("max_temp")) or DEFAULT_MAX_TEMP
        hot = still_over(f"temp:{name}" in firing, temp, limit, HOT_MARGIN)
        yield _Verdict("temp", name, hot, f"{name} is hot: {temp:.1f} °C (limit {limit:g} °C)" if hot
                       else f"{name} cooled to {temp:.1f} °C")

    flags = sample.get("flags")
    if isinstance(flags, Mapping):
        for rule, flag, label in (("under_voltage", "under_voltage", "under-voltage"),
                                  ("throttled", "throttled", "throttled")):
            now_on = bool(flags.get(flag))
            yield _Verdict(rule, name, now_on, f"{name} reports {label} now" if now_on
                           else f"{name} no longer reports {label}")

    root = (sample.get("disks") or {}).get("/")
    percent = _number(root.get("percent")) if isinstance(root, Mapping) else None
    if percent is not None:
        full = still_over(f"disk:{name}" in firing, percent, settings.disk_percent, USAGE_MARGIN)
        yield _Verdict("disk", name, full,
                       f"{name}'s disk is {percent:.0f}% full (alert at {settings.disk_percent:g}%)" if full
                       else f"{name}'s disk is down to {percent:.0f}% full")
    return False


def _share(settings: AlertSettings, obs: Observation, firing: Mapping[str, Episode]) -> Iterator[_Verdict]:
    """The share is one thing, seen by every node that mounts it: the first up node that reports it."""
    for node in sorted(obs.nodes, key=lambda n: n.name):
        sample = node.sample
        mount = sample.get("mount") if sample else None
        disk = (sample.get("disks") or {}).get(mount) if sample and isinstance(mount, str) else None
        percent = _number(disk.get("percent")) if isinstance(disk, Mapping) else None
        if percent is None:
            continue
        full = still_over("share:share" in firing, percent, settings.share_percent, USAGE_MARGIN)
        yield _Verdict("share", "share", full,
                       f"the NAS share is {percent:.0f}% full (alert at {settings.share_percent:g}%)" if full
                       else f"the NAS share is down to {percent:.0f}% full")
        return


def _run(settings: AlertSettings, now: float, run: RunView) -> Iterator[_Verdict]:
    if now - run.created > settings.run_window:
        return
    if run.state == "failed":
        yield _Verdict("run_failed", run.id, True,
                       f"run {run.id} ({run.job}) failed: {run.failed} of {run.total} task(s) failed")
    elif run.state == "finished":
        yield _Verdict("run_failed", run.id, False, f"run {run.id} ({run.job}) finished after a retry")
    else:  # queued or running (a retry in progress): still watched, no change either way
        yield _Verdict("run_failed", run.id, None, "")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def message(cluster: str, transition: Transition) -> tuple[str, str]:
    """(title, body) of the notification for a transition: short enough for a phone's lock screen."""
    episode = transition.episode
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(episode.started))
    if transition.change is Change.FIRE:
        title = f"[{cluster}] {episode.summary}"
        body = f"{episode.summary}.\nSince {started} (cluster {cluster}, alert {episode.key})."
    else:
        lasted = _duration(transition.at - episode.started)
        title = f"[{cluster}] resolved: {transition.detail}"
        body = (f"{transition.detail} (resolved after {lasted}).\nIt began {started}: {episode.summary} "
                f"(cluster {cluster}, alert {episode.key}).")
    return title, body
