"""Taking a node's health: psutil and Raspberry Pi sensors -> :class:`HealthSample`.

This module is the only one that imports psutil, and it imports nothing heavy
(no Numba, NumPy or RQ): the agent that runs it stays around 32 MiB. What a
sample means (thresholds, levels, units, the pause decision) is
:mod:`piblade.healthmodel`, which readers use without psutil.

Pi specifics are *facts*: a command or file plus a pure parser, tested on
captured output (``throttled=0x50005``). Their sources are injectable through
:class:`SensorPaths` (and the environment variables it reads), so tests can make
a node "hot" or "under-voltage" with a file and a shell script. A sensor that is
missing or unreadable gives ``None``, never an exception.

The pause decision (:class:`~piblade.healthmodel.PauseGate`) is pure: a node
pauses at ``max_temp`` or when the firmware reports under-voltage or throttling
*now*, and resumes from "hot" only once it has cooled to ``max_temp - 5``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from piblade import envvars
from piblade.healthmodel import (
    DiskUsage,
    HealthSample,
    ThrottleFlags,
    decode_throttled,
    parse_clock,
    parse_millidegrees,
    parse_model,
    parse_throttled,
)

__all__ = ["Sampler", "SensorPaths"]

log = logging.getLogger("piblade.health")

THERMAL_FILE_ENV = envvars.THERMAL_FILE.name
MODEL_FILE_ENV = envvars.MODEL_FILE.name
VCGENCMD_ENV = envvars.VCGENCMD.name
FAN_FILE_ENV = envvars.FAN_FILE.name
DEFAULT_THERMAL_FILE = Path("/sys/class/thermal/thermal_zone0/temp")
DEFAULT_MODEL_FILE = Path("/proc/device-tree/model")
#: Seconds a vcgencmd call may take before its reading counts as missing.
VCGENCMD_TIMEOUT = 2.0

# -- sensors -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorPaths:
    """Where the Pi sensors are. ``thermal_override``: the file wins over psutil (tests, odd boards)."""

    thermal_file: Path = DEFAULT_THERMAL_FILE
    model_file: Path = DEFAULT_MODEL_FILE
    vcgencmd: str | None = None
    thermal_override: bool = False
    #: A file holding the fan's rpm (hwmon's ``fan1_input``); None: ask psutil.
    fan_file: Path | None = None

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
            fan_file=Path(env[FAN_FILE_ENV]) if env.get(FAN_FILE_ENV) else None,
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

    def fan(self) -> float | None:
        """The fan's rpm: the override file, else the first fan psutil finds (a Pi 5's cooler is ``pwmfan``)."""
        if self.sensors.fan_file is not None:
            try:
                return float(self.sensors.fan_file.read_text().strip())
            except (OSError, ValueError):
                return None
        try:
            fans = psutil.sensors_fans()
        except (AttributeError, OSError):
            return None
        return next((float(f.current) for entries in fans.values() for f in entries), None)

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
            fan_rpm=self.fan(),
        )
