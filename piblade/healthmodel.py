"""What node health means, defined once: the sample, its thresholds, levels and units. Pure.

The agent fills a :class:`HealthSample` (``piblade.health``, the only module
that imports psutil); ``piblade status``, the dashboard page and ``/metrics``
read samples as dicts and judge them here, so they never disagree about when a
node is warm or hot, when a disk counts as nearly full, or what a gigabyte is.

* **Temperature.** A node is *hot* at its ``max_temp`` (``piblade_max_temp``,
  80 °C unless set) and stays hot until it has cooled to ``max_temp - HOT_MARGIN``
  (hysteresis, so a node hovering at the limit does not flap between taking and
  refusing jobs). *Warm* is that band below the limit: the same 5 °C.
* **Usage** (CPU, memory, disks, the share): the thresholds of each reading
  are in :data:`READINGS`; a new reading is one entry there plus its sampler.
* **Units.** Bytes in decimal units (kB, MB, GB), as disks are sold and as the
  file managers people compare with show them.
* **Throttling** is the firmware's word (``vcgencmd get_throttled``), decoded
  by a pure parser tested on captured output.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

#: ``piblade_max_temp`` when the inventory does not set it.
DEFAULT_MAX_TEMP = 80.0
#: A "hot" node resumes only once it is this many degrees below its max_temp;
#: the same band is "warm" for people.
HOT_MARGIN = 5.0
#: A disk or the share that crossed an alert threshold counts as full until it is
#: this many percentage points below it again (see :func:`still_over`).
USAGE_MARGIN = 2.0


class Level(enum.StrEnum):
    """How a reading looks: the colour the CLI and the page give it."""

    NONE = "none"  # the node cannot tell
    OK = "ok"
    WARN = "warn"
    BAD = "bad"


def temp_level(temp_c: float | None, max_temp: float | None) -> Level:
    """Bad at the node's limit, warn within :data:`HOT_MARGIN` below it."""
    if temp_c is None:
        return Level.NONE
    limit = DEFAULT_MAX_TEMP if max_temp is None else max_temp
    if temp_c >= limit:
        return Level.BAD
    if temp_c >= limit - HOT_MARGIN:
        return Level.WARN
    return Level.OK


@dataclass(frozen=True, slots=True)
class Reading:
    """One number a node reports, declared once for every renderer.

    ``key`` names the value in a node's status (``NodeStatus`` property, or the
    sample field of the same name); ``metric`` is its Prometheus family, in
    Prometheus's base units: a percentage is exported as a 0-1 ``_ratio``
    (``metric_divisor`` 100).
    """

    key: str
    label: str
    unit: str
    metric: str
    help: str
    warn: float | None = None
    bad: float | None = None
    digits: int = 0
    #: Shown as a bar (percentages) rather than as a number.
    bar: bool = False
    #: /metrics exports ``value / metric_divisor``.
    metric_divisor: float = 1.0

    def metric_value(self, value: float | None) -> float | None:
        if value is None or self.metric_divisor == 1:
            return value
        return round(value / self.metric_divisor, 9)  # 33.3 / 100 is 0.33299999999999996 in floats

    def level(self, value: float | None) -> Level:
        if value is None:
            return Level.NONE
        if self.bad is not None and value >= self.bad:
            return Level.BAD
        if self.warn is not None and value >= self.warn:
            return Level.WARN
        return Level.OK

    def text(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.{self.digits}f}{self.unit}"


READINGS: tuple[Reading, ...] = (
    Reading("cpu_percent", "CPU", "%", "piblade_node_cpu_usage_ratio",
            "CPU use over the last sample interval (0-1).", warn=90.0, bar=True, metric_divisor=100),
    Reading("mem_percent", "Mem", "%", "piblade_node_memory_used_ratio", "Memory in use (0-1).",
            warn=80.0, bad=95.0, bar=True, metric_divisor=100),
    Reading("disk_percent", "Disk", "%", "piblade_node_disk_used_ratio", "Use of the root file system (0-1).",
            warn=80.0, bad=95.0, bar=True, metric_divisor=100),
    Reading("fan_rpm", "Fan", " rpm", "piblade_node_fan_rpm", "Fan speed, where the board has one (Pi 5 active cooler)."),
)
#: The share is judged like a disk.
SHARE = Reading("share_percent", "Share", "%", "piblade_share_used_ratio", "Use of the NAS share (0-1).",
                warn=80.0, bad=95.0, metric_divisor=100)


def reading(key: str) -> Reading:
    return next(r for r in READINGS if r.key == key)


def human_bytes(nbytes: float) -> str:
    """Bytes in decimal units, as disks are sold: ``1.5 GB``, ``512 B``."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# -- throttling flags (vcgencmd get_throttled) --------------------------------

_FLAG_BITS = (  # (field, bit of "now"; the "since boot" bit is 16 higher, label)
    ("under_voltage", 0, "under-voltage"),
    ("freq_capped", 1, "frequency capped"),
    ("throttled", 2, "throttled"),
    ("soft_temp_limit", 3, "soft temperature limit"),
)
_THROTTLED_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")
_CLOCK_RE = re.compile(r"frequency\(\d+\)=(\d+)")


@dataclass(frozen=True, slots=True)
class ThrottleFlags:
    """The firmware's throttling bits: bits 0-3 are *now*, bits 16-19 *has happened since boot*."""

    under_voltage: bool = False
    freq_capped: bool = False
    throttled: bool = False
    soft_temp_limit: bool = False
    under_voltage_since_boot: bool = False
    freq_capped_since_boot: bool = False
    throttled_since_boot: bool = False
    soft_temp_limit_since_boot: bool = False

    def now_reason(self) -> str | None:
        """Why this node must not take jobs now, as far as the firmware says."""
        if self.under_voltage:
            return "under-voltage"
        if self.throttled:
            return "throttled"
        return None

    def labels(self) -> tuple[str, ...]:
        """Active flags for people: ``("under-voltage", "throttled since boot")``."""
        out = []
        for name, _, label in _FLAG_BITS:
            if getattr(self, name):
                out.append(label)
            elif getattr(self, f"{name}_since_boot"):
                out.append(f"{label} since boot")
        return tuple(out)

    def to_dict(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThrottleFlags:
        return cls(**{f.name: bool(data.get(f.name, False)) for f in fields(cls)})


def decode_throttled(value: int) -> ThrottleFlags:
    """Decode the integer of ``vcgencmd get_throttled`` (e.g. ``0x50005``)."""
    kwargs = {}
    for name, bit, _ in _FLAG_BITS:
        kwargs[name] = bool(value >> bit & 1)
        kwargs[f"{name}_since_boot"] = bool(value >> (bit + 16) & 1)
    return ThrottleFlags(**kwargs)


def parse_throttled(output: str) -> int:
    """``"throttled=0x50005\\n"`` -> ``0x50005``; ValueError on anything else."""
    match = _THROTTLED_RE.search(output)
    if not match:
        raise ValueError(f"not get_throttled output: {output!r}")
    return int(match.group(1), 0)


def parse_clock(output: str) -> float:
    """``vcgencmd measure_clock arm`` output ``"frequency(48)=1500345728"`` -> MHz."""
    match = _CLOCK_RE.search(output)
    if not match:
        raise ValueError(f"not measure_clock output: {output!r}")
    return int(match.group(1)) / 1e6


def parse_model(raw: bytes) -> str | None:
    """``/proc/device-tree/model`` is NUL-terminated: ``b"Raspberry Pi 4 Model B Rev 1.4\\x00"``."""
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    return text or None


def parse_millidegrees(text: str) -> float | None:
    """A sysfs thermal file holds millidegrees Celsius: ``"48312\\n"`` -> 48.312."""
    try:
        return int(text.strip()) / 1000
    except ValueError:
        return None


# -- pause decision --------------------------------------------------------------


def still_over(was_over: bool, value: float | None, limit: float, margin: float) -> bool:
    """Over at ``limit`` or above; once over, until back down to ``limit - margin``.

    The one hysteresis of piblade: the pause gate (temperature) and the alert
    rules (temperature, disks, the share) all decide "still over" here, so a
    reading hovering at its limit neither flaps the pause nor the alerts.
    No reading means "not over": a sensor that vanished must not hold a state forever.
    """
    if value is None:
        return False
    if value >= limit:
        return True
    return was_over and value > limit - margin


def still_hot(was_hot: bool, temp_c: float | None, max_temp: float, margin: float = HOT_MARGIN) -> bool:
    """Hot at ``max_temp`` or above; once hot, until cooled to ``max_temp - margin``.

    No reading means no reason to pause: a sensor that vanished must not stop a
    node forever (its agent would keep it paused with nothing to show why).
    """
    return still_over(was_hot, temp_c, max_temp, margin)


def why_pause(hot: bool, flags: ThrottleFlags | None) -> str | None:
    """Under-voltage first (a power supply problem explains the rest), then hot, then throttled."""
    now = flags.now_reason() if flags is not None else None
    if now == "under-voltage":
        return now
    if hot:
        return "hot"
    return now


class PauseGate:
    """Remembers whether the node is hot between samples; :meth:`update` gives the pause reason."""

    __slots__ = ("hot", "margin", "max_temp")

    def __init__(self, max_temp: float, margin: float = HOT_MARGIN) -> None:
        self.max_temp = max_temp
        self.margin = margin
        self.hot = False

    def update(self, temp_c: float | None, flags: ThrottleFlags | None) -> str | None:
        self.hot = still_hot(self.hot, temp_c, self.max_temp, self.margin)
        return why_pause(self.hot, flags)


# -- the sample ----------------------------------------------------------------


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int
    percent: float


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One heartbeat's worth of facts about a node. ``None`` means "this node cannot tell"."""

    node: str
    role: str
    time: float
    model: str | None
    cpu_percent: float
    cpu_per_core: tuple[float, ...]
    load_avg: tuple[float, float, float]
    cpu_freq_mhz: float | None
    mem_total: int
    mem_used: int
    mem_percent: float
    swap_total: int
    swap_used: int
    swap_percent: float
    disks: Mapping[str, DiskUsage]
    mount: str | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    uptime_s: float
    processes: int
    temp_c: float | None
    max_temp: float | None
    throttled: int | None
    flags: ThrottleFlags | None
    paused: str | None = None
    fan_rpm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; the shape readers (status, dashboard) rely on."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cpu_per_core"] = list(self.cpu_per_core)
        out["load_avg"] = list(self.load_avg)
        out["disks"] = {path: d._asdict() for path, d in self.disks.items()}
        out["flags"] = self.flags.to_dict() if self.flags is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthSample:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        values["cpu_per_core"] = tuple(data.get("cpu_per_core") or ())
        values["load_avg"] = tuple(data.get("load_avg") or (0.0, 0.0, 0.0))
        values["disks"] = {
            path: DiskUsage(**d) if isinstance(d, Mapping) else DiskUsage(*d)
            for path, d in (data.get("disks") or {}).items()
        }
        flags = data.get("flags")
        values["flags"] = ThrottleFlags.from_dict(flags) if flags is not None else None
        return cls(**values)
