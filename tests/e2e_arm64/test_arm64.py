"""An emulated aarch64 worker (what a Pi runs) in a mixed cluster: provisioned, working, failing.

The testbed: tb-nas and tb-w1 (x86_64) and tb-arm1 (aarch64 under qemu-user-static).
Each test stands on its own fixtures: the refusals compare the node before and
after, the tests that need a provisioned cluster ask for ``provisioned`` (one
`piblade provision` per module), and the power loss boots tb-arm1 again if needed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from piblade.testbed import Testbed
from tests.e2e.conftest import piblade, wait_for_workers

pytestmark = pytest.mark.e2e

ARM = "tb-arm1"
#: Small enough that the emulated node takes a tile in seconds, big enough for both to take some.
PARAMS = {"width": 320, "height": 200, "max_iter": 200, "tiles": 10,
          "x_min": -2.2, "x_max": 0.8, "y_min": -1.1, "y_max": 1.1}


def provision_json(inventory: Path, *extra: str) -> dict[str, Any]:
    run = piblade("provision", "-i", str(inventory), "--json", *extra)
    assert run.stdout, run.stderr
    return {**json.loads(run.stdout), "returncode": run.returncode, "stderr": run.stderr}


def hosts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in report["hosts"]}


@pytest.fixture(scope="module")
def provisioned(testbed: Testbed) -> dict[str, Any]:
    """The first `piblade provision` of the mixed cluster (every node running)."""
    for node in testbed.status().nodes:
        if not node.running:
            testbed.start(node.name)
    report = provision_json(Path(testbed.info().inventory))
    assert report["returncode"] == 0, json.dumps(report, indent=1)
    return report


def reference_png(params: dict[str, Any]) -> np.ndarray:
    """The image computed here in one piece (the tile kernel equals render_reference: tests/unit/test_jobs.py)."""
    from jobs.mandelbrot import colorize, render_tile

    p = params
    counts = render_tile(0, 0, p["width"], p["height"], p["width"], p["height"], p["max_iter"],
                         p["x_min"], p["x_max"], p["y_min"], p["y_max"], 1)
    return np.asarray(colorize(counts, int(p["max_iter"])))


def result_png(testbed: Testbed, output: str) -> np.ndarray:
    from PIL import Image

    png = testbed.run("tb-nas", f"sudo base64 -w0 /srv/piblade/{output}/mandelbrot.png").stdout
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))


def submit_args(params: dict[str, Any]) -> list[str]:
    return [a for k, v in params.items() for a in ("-p", f"{k}={v}")]


# The first test of the module brings the testbed up, and on a machine's first run that builds
# the arm64 image, whose dpkg runs emulated: 3–10 minutes with the CPUs shared (measured), on
# top of the x86_64 image if that is not cached either. Only this test gets the longer bound.
@pytest.mark.timeout(1800)
def test_an_arm64_node_boots_beside_the_x86_64_ones(testbed: Testbed) -> None:
    status = testbed.status()
    assert {n.name: (n.machine, n.emulated, n.running, n.ssh) for n in status.nodes} == {
        "tb-nas": ("x86_64", False, True, True), "tb-w1": ("x86_64", False, True, True),
        ARM: ("aarch64", True, True, True)}
    assert status.stray_pids == ()
    assert testbed.run(ARM, "uname -m; dpkg --print-architecture; getconf LONG_BIT").stdout.split() == [
        "aarch64", "arm64", "64"]
    shown = piblade("testbed", "status")
    assert shown.returncode == 0, shown.stderr
    assert any(ARM in line and "aarch64 (emulated)" in line and "running" in line for line in shown.stdout.splitlines())


@pytest.fixture
def refusal_inventory(testbed: Testbed, tmp_path: Path) -> Path:
    """Two logins on tb-arm1 through its real sshd, whose login environments report what refused nodes do.

    ``armv7`` finds a ``uname`` that says armv7l where the real one says aarch64, whatever
    it is asked (a Pi on 32-bit Raspberry Pi OS);
    ``oldpy`` a ``python3`` that says 3.9 (Raspberry Pi OS bullseye). sshd's own
    ``SetEnv`` puts them first in PATH; both users have passwordless sudo like ``pi``.
    """
    setup = r"""
set -e
for u in armv7 oldpy; do
  id "$u" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups sudo "$u"
  install -d -m 700 -o "$u" -g "$u" "/home/$u/.ssh"
  install -m 600 -o "$u" -g "$u" /home/pi/.ssh/authorized_keys "/home/$u/.ssh/authorized_keys"
  echo "$u ALL=(ALL) NOPASSWD: ALL" > "/etc/sudoers.d/030_$u"
  mkdir -p "/opt/login-$u/bin"
done
printf '#!/bin/sh\n/usr/bin/uname "$@" | sed "s/aarch64/armv7l/g"\n' > /opt/login-armv7/bin/uname
printf '#!/bin/sh\necho 3.9\n' > /opt/login-oldpy/bin/python3
chmod 755 /opt/login-armv7/bin/uname /opt/login-oldpy/bin/python3
cat > /etc/ssh/sshd_config.d/login-environments.conf <<'CONF'
Match User armv7
    SetEnv PATH=/opt/login-armv7/bin:/usr/local/bin:/usr/bin:/bin
Match User oldpy
    SetEnv PATH=/opt/login-oldpy/bin:/usr/local/bin:/usr/bin:/bin
CONF
systemctl reload ssh
"""
    done = testbed.run(ARM, setup, user="root", timeout=120)
    assert done.returncode == 0, done.stderr
    # sshd re-executes itself on reload (seconds, emulated) and refuses connections meanwhile.
    deadline = time.monotonic() + 60
    while (login := testbed.run(ARM, "true", user="armv7")).returncode != 0:
        assert time.monotonic() < deadline, login.stderr
        time.sleep(0.5)
    tree = yaml.safe_load(Path(testbed.info().inventory).read_text())
    address = testbed.info().node(ARM).address
    tree["all"]["children"]["workers"]["hosts"] = {
        f"{ARM}-{user}": {"ansible_host": address, "ansible_user": user} for user in ("armv7", "oldpy")}
    path = tmp_path / "refused.yml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_a_32_bit_node_and_an_old_python_are_refused_before_anything_is_pushed(
    testbed: Testbed, refusal_inventory: Path
) -> None:
    # The logins really report what they should, through sshd.
    for user, command, says in (("armv7", "uname -m", "armv7l"), ("oldpy", "python3 -V", "3.9")):
        assert testbed.run(ARM, command, user=user).stdout.strip() == says
    snapshot = ("ls -la --time-style=+%s.%N /etc/hostname /etc/piblade /opt/piblade /var/lib/piblade "
                "/etc/systemd/system 2>&1; ls -d /tmp/piblade-* 2>&1; getent passwd piblade; cat /etc/hostname")
    before = testbed.run(ARM, snapshot, user="root").stdout
    run = piblade("provision", "-i", str(refusal_inventory), "--limit", f"{ARM}-armv7,{ARM}-oldpy")
    text = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0, text
    assert f"{ARM}-armv7: the node runs a 32-bit OS (armv7l)" in text, text
    assert "flash Raspberry Pi OS Lite (64-bit)" in text, text
    assert f"{ARM}-oldpy: the node's Python is 3.9; the wheelhouse has wheels for Python >=3.11 only" in text, text
    assert "Raspberry Pi OS (64-bit) bookworm or later" in text, text
    assert testbed.run(ARM, snapshot, user="root").stdout == before  # nothing was pushed or changed


# Its setup is the module's first provisioning; on a clean cache that downloads the aarch64
# wheelhouse and builds the node's tree from it first.
@pytest.mark.timeout(1800)
def test_provision_installs_the_aarch64_wheelhouse_on_the_arm64_node(
    provisioned: dict[str, Any], testbed: Testbed, inventory: Path
) -> None:
    from piblade.provision import sitetree
    from piblade.provision.roles import VENV
    from piblade.provision.wheelhouse import build, requirements_for
    from piblade.state import state_dir

    by_host = hosts(provisioned)
    assert set(by_host) == {"tb-ctl", "tb-nas", "tb-w1", ARM}
    assert all(h["failed"] == 0 for h in by_host.values()), provisioned
    assert ", aarch64, " in by_host[ARM]["facts"] and ", x86_64, " in by_host["tb-w1"]["facts"]
    print(f"provisioned: {ARM} in {by_host[ARM]['seconds']:.0f} s, tb-w1 in {by_host['tb-w1']['seconds']:.0f} s")
    # The node got a tree built here from the controller's aarch64 wheelhouse, not the wheels.
    house = build(state_dir() / "wheelhouse", "aarch64", "3.11")
    node_python = testbed.run(ARM, "python3 -c 'import platform; print(platform.python_version())'").stdout.strip()
    tree = sitetree.build(house, "aarch64", node_python, VENV)
    assert any(c["step"] == f"piblade in {VENV}" and "a tree built from the wheelhouse" in c["summary"]
               for c in by_host[ARM]["changes"]), by_host[ARM]["changes"]
    # Its distributions are the locked versions, and nothing else: no pip in the venv, nothing built there.
    listed = testbed.run(ARM, f"{VENV}/bin/python -c 'import importlib.metadata as m; "
                              "print(*sorted(d.name + \"==\" + d.version for d in m.distributions()))'", timeout=180)
    on_node = set(listed.stdout.split())
    assert on_node == set(tree.distributions), listed.stderr
    lock = (Path(__file__).resolve().parents[2] / "requirements.lock").read_text()
    for_node = requirements_for(lock, "aarch64", node_python)  # the lock's lines whose markers hold there
    locked = dict(line.split()[0].lower().replace("_", "-").split("==") for line in for_node.splitlines())
    for name, version in (d.split("==") for d in on_node if not d.startswith("piblade==")):
        assert locked[name.lower().replace("_", "-").replace(".", "-")] == version, name
    assert {"numba", "llvmlite", "numpy"} <= {d.split("==")[0] for d in on_node}
    assert testbed.run(ARM, f"ls {VENV}/bin/pip {VENV}/lib/python3.11/site-packages/pip").returncode != 0
    # The compiled parts on the node are the files of the locked aarch64 wheels, byte for byte.
    expected = {}
    for wheel in house.wheels:
        if wheel.name.split("-")[0] in ("numba", "llvmlite", "numpy"):
            with zipfile.ZipFile(wheel) as archive:
                record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
                for row in csv.reader(io.StringIO(archive.read(record).decode())):
                    if row[0].endswith(".so") and row[1].startswith("sha256="):
                        digest = base64.urlsafe_b64decode(row[1][7:] + "==").hex()
                        expected[row[0]] = digest
    assert any("aarch64" in path for path in expected), expected
    summed = testbed.run(ARM, f"cd {VENV}/lib/python3.11/site-packages && sha256sum " + " ".join(sorted(expected)),
                         timeout=300).stdout.split()
    assert dict(zip(summed[1::2], summed[0::2], strict=True)) == expected
    probe = (f"{VENV}/bin/python -c 'import platform, numba, llvmlite, numpy; "
             "print(platform.machine(), numba.__version__)'")
    assert testbed.run(ARM, probe, timeout=180).stdout.split() == ["aarch64", lock.split("numba==")[1].split()[0]]
    # The recap a person reads names the architecture; and a second run changes nothing, pushes nothing.
    recap = piblade("provision", "-i", str(inventory))
    print(recap.stdout)  # with -s: the recap the README shows
    assert recap.returncode == 0, recap.stdout + recap.stderr
    row = recap.stdout[recap.stdout.index(f"│ {ARM} "):]  # tb-arm1's row, however the table wraps its facts
    assert "aarch64," in row[:row.index("└")], recap.stdout
    assert "0 changed" in recap.stdout or "changed=0" in recap.stdout, recap.stdout
    again = hosts(provision_json(inventory))[ARM]
    assert again["changed"] == 0 and any(
        p["step"] == f"piblade in {VENV}" and p["reason"] == f"{VENV} has the tree {tree.key[5:17]} installed"
        for p in again["plan"]), again


def test_a_fan_out_runs_tiles_on_both_architectures_and_equals_the_reference(
    provisioned: dict[str, Any], testbed: Testbed, inventory: Path
) -> None:
    wait_for_workers(inventory, {"tb-w1", ARM}, timeout=600)
    run = piblade("submit", "mandelbrot", "-i", str(inventory), *submit_args(PARAMS), "--wait", "--json",
                  timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    status = json.loads(run.stdout)
    assert status["state"] == "finished" and status["counts"] == {"finished": PARAMS["tiles"]}, status
    assert {"tb-w1", ARM} <= set(status["nodes"]), status  # x86_64 and aarch64 tiles
    assert np.array_equal(result_png(testbed, status["output"]), reference_png(PARAMS))


def test_status_shows_the_arm64_nodes_health_from_its_own_agent(
    provisioned: dict[str, Any], testbed: Testbed, inventory: Path
) -> None:
    if not next(n for n in testbed.status().nodes if n.name == ARM).running:
        testbed.start(ARM)
    deadline = time.monotonic() + 120
    while True:
        data = json.loads(piblade("status", "-i", str(inventory), "--json").stdout)
        node = next(n for n in data["nodes"] if n["name"] == ARM)
        if node["up"] and node["workers"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert node["up"], node
    assert node["workers"] == 1, node  # one worker process on the emulated node
    assert node["mem_percent"] is not None and node["cpu_percent"] is not None, node  # its agent's heartbeat
    # The heartbeat is the node's own: its agent runs on tb-arm1, under emulation.
    agent = testbed.run(ARM, "systemctl is-active piblade-agent; uname -m").stdout.split()
    assert agent == ["active", "aarch64"]


def test_the_arm64_node_loses_power_mid_fan_out_and_its_tiles_rerun_on_the_x86_64_worker(
    provisioned: dict[str, Any], testbed: Testbed, inventory: Path
) -> None:
    from rq.serializers import JSONSerializer

    from piblade.context import resolve_cluster
    from piblade.redisconn import connect
    from piblade.runs import load_run
    from piblade.worker import BladeJob

    if not next(n for n in testbed.status().nodes if n.name == ARM).running:
        testbed.start(ARM)
    wait_for_workers(inventory, {"tb-w1", ARM}, timeout=600)
    # Tiles that take the emulated node ≈10 s each (≈1 s natively): the power cut lands mid-tile.
    params = {**PARAMS, "width": 640, "height": 400, "max_iter": 20000, "tiles": 8}
    submitted = piblade("submit", "mandelbrot", "-i", str(inventory), *submit_args(params), "--retries", "2",
                        "--json")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run"]
    conn = connect(resolve_cluster(inventory).redis_target())
    try:
        def on_arm() -> list[str]:
            jobs = BladeJob.fetch_many(load_run(conn, run_id).task_ids, connection=conn, serializer=JSONSerializer)
            return [j.id for j in jobs
                    if j and j.get_status() == "started" and (j.worker_name or "").startswith(f"{ARM}.")]

        deadline = time.monotonic() + 180
        while not (in_flight := on_arm()):
            assert time.monotonic() < deadline, f"{ARM} never started a tile"
            time.sleep(0.2)
        testbed.kill(ARM)  # power cut: SIGKILL to its nspawn and its (emulated) init
        gone = testbed.status()
        assert not next(n for n in gone.nodes if n.name == ARM).running and gone.stray_pids == ()
        # What the node still had in hand when it died (a tile may have finished just before the cut).
        in_flight = [j.id for j in BladeJob.fetch_many(in_flight, connection=conn, serializer=JSONSerializer)
                     if j and j.get_status() == "started"]
        assert in_flight, f"every tile {ARM} had started finished before the power cut"

        deadline = time.monotonic() + 600
        while (state := json.loads(piblade("jobs", "status", run_id, "-i", str(inventory), "--json").stdout)
               )["state"] not in ("finished", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(2)
        assert state["state"] == "finished" and state["counts"] == {"finished": params["tiles"]}, state
        # The tiles the node had in hand ran again, on the x86_64 worker.
        again = BladeJob.fetch_many(in_flight, connection=conn, serializer=JSONSerializer)
        assert all(j is not None and (j.worker_name or "").startswith("tb-w1.") for j in again), [
            j.worker_name for j in again if j]
    finally:
        conn.close()
    assert np.array_equal(result_png(testbed, state["output"]), reference_png(params))


def test_stop_powers_the_arm64_node_off_from_inside_and_leaves_nothing(testbed: Testbed) -> None:
    if not next(n for n in testbed.status().nodes if n.name == ARM).running:
        testbed.start(ARM)
    console = testbed.root / f"{ARM}.log"
    offset = console.stat().st_size
    testbed.stop(ARM)
    status = testbed.status()
    assert not next(n for n in status.nodes if n.name == ARM).running and status.stray_pids == ()
    shutdown = console.read_text(errors="replace")[offset:]
    # A clean power-off from inside, not the rescue mode a SIGTERM to an emulated nspawn ends in.
    assert "Power-Off" in shutdown or "Powering off" in shutdown, shutdown[-2000:]
    assert "rescue" not in shutdown.lower(), shutdown[-2000:]
