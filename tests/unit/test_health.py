"""Health facts, parsers and the pause decision, without any service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from piblade.agent import MAX_BACKOFF, backoff
from piblade.cli.agent_cmd import build_parser
from piblade.clusterstatus import node_of_worker
from piblade.health import Sampler, SensorPaths
from piblade.healthmodel import (
    DiskUsage,
    HealthSample,
    PauseGate,
    ThrottleFlags,
    decode_throttled,
    parse_clock,
    parse_millidegrees,
    parse_model,
    parse_throttled,
    still_hot,
    why_pause,
)

# -- vcgencmd get_throttled ---------------------------------------------------------


def test_zero_means_nothing_now_or_since_boot() -> None:
    flags = decode_throttled(0x0)
    assert flags == ThrottleFlags()
    assert flags.now_reason() is None
    assert flags.labels() == ()


def test_0x50005_is_under_voltage_and_throttled_now_and_since_boot() -> None:
    flags = decode_throttled(0x50005)
    assert flags.under_voltage and flags.throttled
    assert flags.under_voltage_since_boot and flags.throttled_since_boot
    assert not flags.freq_capped and not flags.soft_temp_limit
    assert not flags.freq_capped_since_boot and not flags.soft_temp_limit_since_boot
    assert flags.now_reason() == "under-voltage"
    assert flags.labels() == ("under-voltage", "throttled")


def test_0x50000_is_only_since_boot() -> None:
    flags = decode_throttled(0x50000)
    assert not (flags.under_voltage or flags.freq_capped or flags.throttled or flags.soft_temp_limit)
    assert flags.under_voltage_since_boot and flags.throttled_since_boot
    assert flags.now_reason() is None
    assert flags.labels() == ("under-voltage since boot", "throttled since boot")


def test_0x80008_is_the_soft_temperature_limit() -> None:
    flags = decode_throttled(0x80008)
    assert flags == ThrottleFlags(soft_temp_limit=True, soft_temp_limit_since_boot=True)
    assert flags.now_reason() is None  # a soft limit alone does not pause work
    assert flags.labels() == ("soft temperature limit",)


def test_throttled_now_without_under_voltage() -> None:
    flags = decode_throttled(0x60006)
    assert flags.freq_capped and flags.throttled and not flags.under_voltage
    assert flags.now_reason() == "throttled"


@pytest.mark.parametrize(
    ("output", "value"),
    [("throttled=0x50005\n", 0x50005), ("throttled=0x0", 0), ("throttled=0xe0000\n", 0xE0000), ("throttled=7", 7)],
)
def test_parse_get_throttled_output(output: str, value: int) -> None:
    assert parse_throttled(output) == value


@pytest.mark.parametrize("output", ["", "error=1 error_msg=\"Command not registered\"", "throttled=", "0x5"])
def test_parse_get_throttled_refuses_other_output(output: str) -> None:
    with pytest.raises(ValueError):
        parse_throttled(output)


def test_other_pi_facts() -> None:
    assert parse_clock("frequency(48)=1500345728\n") == pytest.approx(1500.345728)
    with pytest.raises(ValueError):
        parse_clock("frequency(48)=")
    assert parse_model(b"Raspberry Pi 4 Model B Rev 1.4\x00") == "Raspberry Pi 4 Model B Rev 1.4"
    assert parse_model(b"\x00") is None
    assert parse_millidegrees("48312\n") == pytest.approx(48.312)
    assert parse_millidegrees("garbage") is None


def test_flags_round_trip() -> None:
    flags = decode_throttled(0x50005)
    assert ThrottleFlags.from_dict(json.loads(json.dumps(flags.to_dict()))) == flags


# -- pause decision -------------------------------------------------------------------


def test_hot_has_hysteresis() -> None:
    gate = PauseGate(max_temp=80)
    seen = [gate.update(t, None) for t in (70, 79.9, 80, 79, 76, 75.1, 75, 79, 85, 74)]
    assert seen == [None, None, "hot", "hot", "hot", "hot", None, None, "hot", None]


def test_missing_temperature_never_pauses() -> None:
    assert still_hot(True, None, 80) is False
    gate = PauseGate(max_temp=80)
    assert gate.update(90, None) == "hot"
    assert gate.update(None, None) is None


def test_firmware_flags_pause_without_hysteresis() -> None:
    gate = PauseGate(max_temp=80)
    assert gate.update(50, decode_throttled(0x50005)) == "under-voltage"
    assert gate.update(50, decode_throttled(0x4)) == "throttled"
    assert gate.update(50, decode_throttled(0x50000)) is None  # since boot only
    assert gate.update(50, decode_throttled(0x80008)) is None


def test_reason_priority_under_voltage_then_hot_then_throttled() -> None:
    assert why_pause(True, decode_throttled(0x1)) == "under-voltage"
    assert why_pause(True, decode_throttled(0x4)) == "hot"
    assert why_pause(False, decode_throttled(0x4)) == "throttled"
    assert why_pause(False, None) is None


# -- sensors ----------------------------------------------------------------------------


def fake_vcgencmd(tmp_path: Path, throttled: str = "throttled=0x0", exit_code: int = 0) -> Path:
    """A stand-in for the Pi's vcgencmd: reads its answer from a file the test can change."""
    answer = tmp_path / "throttled"
    answer.write_text(throttled + "\n")
    script = tmp_path / "vcgencmd"
    script.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -eq 0 ] || {{ echo 'VCHI initialization failed' >&2; exit {exit_code}; }}\n"
        'case "$1" in\n'
        f"  get_throttled) cat '{answer}' ;;\n"
        "  measure_clock) echo 'frequency(48)=600000000' ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


def test_sensor_paths_from_env(tmp_path: Path) -> None:
    paths = SensorPaths.from_env(
        {"PIBLADE_THERMAL_FILE": "/t", "PIBLADE_MODEL_FILE": "/m", "PIBLADE_VCGENCMD": "/usr/local/bin/vc"}
    )
    assert paths == SensorPaths(Path("/t"), Path("/m"), "/usr/local/bin/vc", thermal_override=True)
    assert SensorPaths.from_env({"PIBLADE_VCGENCMD": ""}).vcgencmd is None  # empty: never run it
    defaults = SensorPaths.from_env({"PATH": str(tmp_path)})
    assert defaults.thermal_file == Path("/sys/class/thermal/thermal_zone0/temp")
    assert defaults.model_file == Path("/proc/device-tree/model")
    assert not defaults.thermal_override


def test_missing_sensors_are_none_not_a_crash(tmp_path: Path) -> None:
    sensors = SensorPaths(tmp_path / "no-thermal", tmp_path / "no-model", str(tmp_path / "no-vcgencmd"),
                          thermal_override=True)
    sample = Sampler("n1", sensors=sensors).sample()
    assert sample.temp_c is None
    assert sample.model is None
    assert sample.throttled is None and sample.flags is None
    assert sample.cpu_percent >= 0 and sample.mem_total > 0 and "/" in sample.disks


def test_broken_vcgencmd_is_none(tmp_path: Path) -> None:
    failing = SensorPaths(tmp_path / "x", tmp_path / "y", str(fake_vcgencmd(tmp_path, exit_code=1)), True)
    assert Sampler("n1", sensors=failing).sample().throttled is None
    garbled = SensorPaths(tmp_path / "x", tmp_path / "y", str(fake_vcgencmd(tmp_path, "nonsense")), True)
    assert Sampler("n1", sensors=garbled).sample().flags is None


def test_injected_sensors_make_a_hot_throttled_pi(tmp_path: Path) -> None:
    (tmp_path / "temp").write_text("85123\n")
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    sensors = SensorPaths(tmp_path / "temp", tmp_path / "model", str(fake_vcgencmd(tmp_path, "throttled=0x50005")),
                          thermal_override=True)
    sampler = Sampler("pi1", "workers", max_temp=80, sensors=sensors)
    sample = sampler.sample()
    assert sample.temp_c == 85.1
    assert sample.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert sample.throttled == 0x50005
    assert sample.flags == decode_throttled(0x50005)
    assert sample.cpu_freq_mhz == 600  # throttled now: the real ARM clock, from measure_clock
    assert sample.max_temp == 80
    (tmp_path / "throttled").write_text("throttled=0x0\n")
    assert sampler.sample().flags == ThrottleFlags()


def test_mount_is_reported_only_when_mounted(tmp_path: Path) -> None:
    sensors = SensorPaths(tmp_path / "x", tmp_path / "y", None, True)
    assert Sampler("n", mount=str(tmp_path), sensors=sensors).sample().mount is None
    sample = Sampler("n", mount="/", sensors=sensors).sample()
    assert sample.mount == "/" and "/" in sample.disks


def test_rates_come_from_the_previous_sample(tmp_path: Path) -> None:
    sampler = Sampler("n", sensors=SensorPaths(tmp_path / "x", tmp_path / "y", None, True))
    first, second = sampler.sample(), sampler.sample()
    for sample in (first, second):
        assert sample.net_rx_bps is not None and sample.net_rx_bps >= 0
        assert len(sample.cpu_per_core) >= 1 and len(sample.load_avg) == 3


def test_sample_round_trips_through_json() -> None:
    sample = HealthSample(
        node="pi1", role="workers", time=1700000000.5, model="Raspberry Pi 4 Model B Rev 1.4",
        cpu_percent=12.5, cpu_per_core=(10.0, 15.0, 12.0, 13.0), load_avg=(0.5, 0.4, 0.3), cpu_freq_mhz=1500.0,
        mem_total=4 << 30, mem_used=1 << 30, mem_percent=25.0, swap_total=100 << 20, swap_used=0, swap_percent=0.0,
        disks={"/": DiskUsage(32 << 30, 8 << 30, 24 << 30, 25.0), "/mnt/piblade": DiskUsage(1 << 40, 1 << 39, 1 << 39, 50.0)},
        mount="/mnt/piblade", net_rx_bps=1234.5, net_tx_bps=None, uptime_s=3600.0, processes=123, temp_c=61.3,
        max_temp=80.0, throttled=0x50000, flags=decode_throttled(0x50000), paused=None,
    )
    data = json.loads(json.dumps(sample.to_dict()))
    assert data["disks"]["/mnt/piblade"] == {"total": 1 << 40, "used": 1 << 39, "free": 1 << 39, "percent": 50.0}
    assert data["flags"]["under_voltage_since_boot"] is True
    assert HealthSample.from_dict(data) == sample


# -- agent plumbing ----------------------------------------------------------------------


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff(n, 5) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, MAX_BACKOFF, MAX_BACKOFF]
    assert backoff(3, 120) == 120  # never faster than the interval


def test_agent_options_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLADE_HEALTH_INTERVAL", "2.5")
    monkeypatch.setenv("PIBLADE_MAX_TEMP", "70")
    monkeypatch.setenv("PIBLADE_NODE", "pi7")
    monkeypatch.setenv("PIBLADE_MOUNT", "/mnt/x")
    args = build_parser().parse_args([])
    assert (args.node, args.interval, args.max_temp, args.mount, args.history) == ("pi7", 2.5, 70.0, "/mnt/x", None)
    assert build_parser().parse_args(["--interval", "1"]).interval == 1.0


def test_agent_refuses_bad_values(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--interval", "0"])
    assert "must be a number > 0" in capsys.readouterr().err
    monkeypatch.setenv("PIBLADE_HEALTH_INTERVAL", "soon")
    with pytest.raises(SystemExit, match=r"\$PIBLADE_HEALTH_INTERVAL: not a valid value: 'soon'"):
        build_parser()


def test_agent_imports_stay_light() -> None:
    """The agent's RSS budget: no Numba, NumPy, RQ, Typer, pydantic or rich in its process."""
    code = (
        "import sys, runpy; sys.argv = ['piblade', 'agent', '--help']\n"
        "try:\n    runpy.run_module('piblade', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "import piblade.agent\n"
        "heavy = {'numba', 'numpy', 'rq', 'typer', 'pydantic', 'rich', 'yaml'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--interval" in out
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("name", "node"), [("pi1.1234", "pi1"), ("pi1.lan.99", "pi1.lan"), ("5f2a9c", None), ("pi1.x", None)])
def test_worker_names_map_to_nodes(name: str, node: str | None) -> None:
    assert node_of_worker(name) == node


# -- one health model for the CLI, the page and /metrics ---------------------------


def test_temperature_levels_have_one_definition() -> None:
    from piblade.healthmodel import DEFAULT_MAX_TEMP, HOT_MARGIN, Level, temp_level

    assert temp_level(None, 80.0) is Level.NONE
    assert temp_level(74.9, 80.0) is Level.OK
    assert temp_level(80.0 - HOT_MARGIN, 80.0) is Level.WARN  # warm is the band a hot node must cool through
    assert temp_level(80.0, 80.0) is Level.BAD
    assert temp_level(70.0, 70.0) is Level.BAD  # the node's own limit, not a constant
    assert temp_level(DEFAULT_MAX_TEMP, None) is Level.BAD
    gate = PauseGate(80.0)
    assert gate.update(80.0, None) == "hot" and gate.update(75.1, None) == "hot" and gate.update(75.0, None) is None


def test_readings_judge_and_show_values() -> None:
    from piblade.healthmodel import SHARE, Level, human_bytes, reading

    mem = reading("mem_percent")
    assert [mem.level(v) for v in (None, 10.0, 80.0, 95.0)] == [Level.NONE, Level.OK, Level.WARN, Level.BAD]
    assert reading("cpu_percent").level(100.0) is Level.WARN  # a busy CPU is what a blade is for
    assert mem.text(33.3) == "33%" and mem.text(None) == "-"
    assert SHARE.level(96.0) is Level.BAD
    assert [human_bytes(n) for n in (512, 1500, 64_000_000_000, 4e12)] == ["512 B", "1.5 kB", "64.0 GB", "4.0 TB"]


def test_status_and_the_dashboard_judge_health_without_psutil() -> None:
    code = (
        "import sys, piblade.clusterstatus, piblade.cli.status_cmd, piblade.dashboard.metrics, "
        "piblade.dashboard.snapshot; print('psutil' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
