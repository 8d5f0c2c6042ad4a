"""What a node's health is: psutil and Raspberry Pi sensors -> :class:`HealthSample`.

This module is the only one that imports psutil, and it imports nothing heavy
(no Numba, NumPy or RQ): the agent that runs it stays around 32 MiB.

Pi specifics are *facts*: a command or file plus a pure parser, tested on
captured output (``throttled=0x50005``). Their sources are injectable through
:class:`SensorPaths` (and the environment variables it reads), so tests can make
a node "hot" or "under-voltage" with a file and a shell script. A sensor that is
missing or unreadable gives ``None``, never an exception.

The pause decision (:class:`PauseGate`) is pure too: a node pauses at
``max_temp`` or when the firmware reports under-voltage or throttling *now*, and
resumes from "hot" only once it has cooled to ``max_temp - 5`` (hysteresis), so
a node hovering at the limit does not flap between taking and refusing jobs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import psutil

log = logging.getLogger("piblade.health")

THERMAL_FILE_ENV = "PIBLADE_THERMAL_FILE"
MODEL_FILE_ENV = "PIBLADE_MODEL_FILE"
VCGENCMD_ENV = "PIBLADE_VCGENCMD"
DEFAULT_THERMAL_FILE = Path("/sys/class/thermal/thermal_zone0/temp")
DEFAULT_MODEL_FILE = Path("/proc/device-tree/model")
#: A "hot" node resumes only once it is this many degrees below its max_temp.
HOT_MARGIN = 5.0
#: Seconds a vcgencmd call may take before its reading counts as missing.
VCGENCMD_TIMEOUT = 2.0

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


def still_hot(was_hot: bool, temp_c: float | None, max_temp: float, margin: float = HOT_MARGIN) -> bool:
    """Hot at ``max_temp`` or above; once hot, until cooled to ``max_temp - margin``.

    No reading means no reason to pause: a sensor that vanished must not stop a
    node forever (its agent would keep it paused with nothing to show why).
    """
    if temp_c is None:
        return False
    if temp_c >= max_temp:
        return True
    return was_hot and temp_c > max_temp - margin


def pause_reason(hot: bool, flags: ThrottleFlags | None) -> str | None:
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
        return pause_reason(self.hot, flags)


# -- sensors -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorPaths:
    """Where the Pi sensors are. ``thermal_override``: the file wins over psutil (tests, odd boards)."""

    thermal_file: Path = DEFAULT_THERMAL_FILE
    model_file: Path = DEFAULT_MODEL_FILE
    vcgencmd: str | None = None
    thermal_override: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SensorPaths:
        """Defaults, overridden by ``PIBLADE_THERMAL_FILE``, ``PIBLADE_MODEL_FILE``, ``PIBLADE_VCGENCMD``.

        ``PIBLADE_VCGENCMD`` names an executable; set it empty to never run vcgencmd.
        Without it, ``vcgencmd`` is used when it is on PATH.
        """
        env = os.environ if environ is None else environ
        thermal = env.get(THERMAL_FILE_ENV)
        vcgencmd = env.get(VCGENCMD_ENV)
        return cls(
            thermal_file=Path(thermal) if thermal else DEFAULT_THERMAL_FILE,
            model_file=Path(env.get(MODEL_FILE_ENV) or DEFAULT_MODEL_FILE),
            vcgencmd=(vcgencmd or None) if vcgencmd is not None else shutil.which("vcgencmd"),
            thermal_override=bool(thermal),
        )


def read_model(path: Path) -> str | None:
    try:
        return parse_model(path.read_bytes())
    except OSError:
        return None


def read_thermal_file(path: Path) -> float | None:
    try:
        return parse_millidegrees(path.read_text())
    except OSError:
        return None


def run_vcgencmd(executable: str, *args: str) -> str | None:
    """Output of ``vcgencmd ARGS``, or None if it is missing, fails or hangs."""
    try:
        done = subprocess.run(
            [executable, *args], capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("vcgencmd %s: %s", " ".join(args), exc)
        return None
    if done.returncode != 0:
        log.debug("vcgencmd %s exited %s: %s", " ".join(args), done.returncode, done.stderr.strip())
        return None
    return done.stdout


def _psutil_cpu_thermal() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    if reader is None:
        return None
    try:
        entries = reader().get("cpu_thermal")
    except (OSError, ValueError, RuntimeError):
        return None
    return float(entries[0].current) if entries else None


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


def _disk(path: str) -> DiskUsage | None:
    try:
        usage = psutil.disk_usage(path)
    except OSError:
        return None
    return DiskUsage(usage.total, usage.used, usage.free, round(usage.percent, 1))


class Sampler:
    """Takes :class:`HealthSample`s; keeps the previous counters so CPU and network are rates."""

    def __init__(
        self,
        node: str,
        role: str = "",
        *,
        mount: str | None = None,
        max_temp: float | None = None,
        sensors: SensorPaths | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.role = role
        self.mount = mount
        self.max_temp = max_temp
        self.sensors = sensors or SensorPaths.from_env()
        self.clock = clock
        self.model = read_model(self.sensors.model_file)
        # Probe once: psutil walks every hwmon file, so do not ask it each time if it has no cpu_thermal.
        self._psutil_temp = not self.sensors.thermal_override and _psutil_cpu_thermal() is not None
        self._boot_time = psutil.boot_time()
        self._warned_vcgencmd = False
        psutil.cpu_percent(None)
        psutil.cpu_percent(None, percpu=True)
        self._net = self._net_counters()

    @staticmethod
    def _net_counters() -> tuple[float, int, int]:
        """(monotonic time, rx bytes, tx bytes) over every interface but loopback."""
        rx = tx = 0
        try:
            for nic, counters in psutil.net_io_counters(pernic=True).items():
                if nic != "lo":
                    rx += counters.bytes_recv
                    tx += counters.bytes_sent
        except OSError:
            pass
        return time.monotonic(), rx, tx

    def temperature(self) -> float | None:
        if self._psutil_temp:
            value = _psutil_cpu_thermal()
            if value is not None:
                return round(value, 1)
        value = read_thermal_file(self.sensors.thermal_file)
        return round(value, 1) if value is not None else None

    def throttled(self) -> int | None:
        if not self.sensors.vcgencmd:
            return None
        out = run_vcgencmd(self.sensors.vcgencmd, "get_throttled")
        try:
            return parse_throttled(out) if out is not None else None
        except ValueError:
            if not self._warned_vcgencmd:
                log.warning("cannot read vcgencmd get_throttled output %r", out)
                self._warned_vcgencmd = True
            return None

    def cpu_freq(self, flags: ThrottleFlags | None) -> float | None:
        """cpufreq's value, unless the firmware throttles: then only ``measure_clock arm`` tells the truth."""
        if flags is not None and (flags.freq_capped or flags.throttled) and self.sensors.vcgencmd:
            out = run_vcgencmd(self.sensors.vcgencmd, "measure_clock", "arm")
            try:
                return round(parse_clock(out), 0) if out is not None else None
            except ValueError:
                pass
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError, RuntimeError):
            return None
        return round(freq.current, 0) if freq and freq.current else None

    def sample(self) -> HealthSample:
        now = self.clock()
        vm = psutil.virtual_memory()
        try:
            swap = psutil.swap_memory()
            swap_values = (swap.total, swap.used, round(swap.percent, 1))
        except (OSError, RuntimeError):
            swap_values = (0, 0, 0.0)
        disks = {}
        for path in ("/", self.mount):
            if path and (path == "/" or os.path.ismount(path)):
                usage = _disk(path)
                if usage is not None:
                    disks[path] = usage
        then, rx0, tx0 = self._net
        self._net = self._net_counters()
        elapsed = self._net[0] - then
        rx_rate = (self._net[1] - rx0) / elapsed if elapsed > 0 and self._net[1] >= rx0 else None
        tx_rate = (self._net[2] - tx0) / elapsed if elapsed > 0 and self._net[2] >= tx0 else None
        throttled = self.throttled()
        flags = decode_throttled(throttled) if throttled is not None else None
        try:
            load = os.getloadavg()
        except OSError:
            load = (0.0, 0.0, 0.0)
        try:
            processes = len(psutil.pids())
        except OSError:
            processes = 0
        return HealthSample(
            node=self.node,
            role=self.role,
            time=round(now, 3),
            model=self.model,
            cpu_percent=round(psutil.cpu_percent(None), 1),
            cpu_per_core=tuple(round(p, 1) for p in psutil.cpu_percent(None, percpu=True)),
            load_avg=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
            cpu_freq_mhz=self.cpu_freq(flags),
            mem_total=vm.total,
            mem_used=vm.total - vm.available,
            mem_percent=round(vm.percent, 1),
            swap_total=swap_values[0],
            swap_used=swap_values[1],
            swap_percent=swap_values[2],
            disks=disks,
            mount=self.mount if self.mount in disks else None,
            net_rx_bps=round(rx_rate, 1) if rx_rate is not None else None,
            net_tx_bps=round(tx_rate, 1) if tx_rate is not None else None,
            uptime_s=round(max(0.0, time.time() - self._boot_time), 0),
            processes=processes,
            temp_c=self.temperature(),
            max_temp=self.max_temp,
            throttled=throttled,
            flags=flags,
        )
