"""Mandelbrot tile time on an emulated aarch64 node beside an x86_64 node, in the same run.

EMULATION, NOT PI HARDWARE: tb-arm1 runs aarch64 code through qemu-user-static
on this x86_64 machine, so its time says what emulation costs here and nothing
about a Raspberry Pi (whose cores run aarch64 natively).

Boots a testbed (tb-nas, tb-w1 x86_64, tb-arm1 aarch64; images cached), runs
`piblade provision` (printing its recap, which names each node's architecture),
then on tb-w1 and on tb-arm1 in turn, alone so they do not share the CPUs, times
the same tile with piblade's own kernel from the venv provisioning installed
(one Numba thread): the first call (compile + run) and the median of the next
runs. Prints both and the ratio, then takes the testbed down.
Usage (root, under the testbed lock): python bench/arm64_tiles.py

``--chroot`` measures the same without booting a testbed: the tile runs in this
checkout's venv (x86_64) and, emulated, in a chroot of the cached arm64 node image
(an overlay, so the image is not touched) with a venv installed from the same
aarch64 wheelhouse provisioning pushes. No bridge, no nodes, no lock needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.testbed import Testbed

#: One tile of an 800×480 image at max_iter 500: the part around the set, where work is uneven.
TILE = {"x0": 200, "y0": 120, "x1": 400, "y1": 240, "width": 800, "height": 480, "max_iter": 500,
        "x_min": -2.2, "x_max": 0.8, "y_min": -1.1, "y_max": 1.1}
REPEATS = 5

ON_NODE = f"""
import json, os, statistics, sys, time, tempfile
os.environ["NUMBA_NUM_THREADS"] = "1"
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-numba-")  # a cold cache: compile included
from jobs.mandelbrot import render_tile
t = {TILE!r}
args = (t["x0"], t["y0"], t["x1"], t["y1"], t["width"], t["height"], t["max_iter"],
        t["x_min"], t["x_max"], t["y_min"], t["y_max"], 1)
started = time.perf_counter(); first = render_tile(*args); first_s = time.perf_counter() - started
runs = []
for _ in range({REPEATS}):
    started = time.perf_counter(); render_tile(*args); runs.append(time.perf_counter() - started)
import platform
print(json.dumps({{"machine": platform.machine(), "first": first_s, "median": statistics.median(runs),
                  "checksum": int(first.sum())}}))
"""


def report(results: dict[str, dict[str, float]], x86_name: str, arm_name: str) -> None:
    x86, arm = results[x86_name], results[arm_name]
    assert x86["checksum"] == arm["checksum"], "the two architectures computed different tiles"
    tile = f"{TILE['x1'] - TILE['x0']}×{TILE['y1'] - TILE['y0']} px, max_iter {TILE['max_iter']}, 1 thread"
    print(f"mandelbrot tile ({tile}); aarch64 is EMULATED by qemu-user-static, not Pi hardware")
    print(f"{'where':<16}{'machine':<20}{'first call (compile+run)':>26}{'median of ' + str(REPEATS):>14}")
    for where, r in results.items():
        machine = r["machine"] + (" (emulated)" if where == arm_name else "")
        print(f"{where:<16}{machine:<20}{r['first']:>24.2f} s{r['median'] * 1000:>11.1f} ms")
    print(f"emulated aarch64 / native x86_64: tile {arm['median'] / x86['median']:.1f}×, "
          f"first call {arm['first'] / x86['first']:.1f}×; same counts on both (checksum {x86['checksum']})")


def in_chroot() -> None:
    """The tile natively in this venv and emulated in a chroot of the arm64 image, one after the other."""
    import shutil
    import tempfile

    from piblade.provision.wheelhouse import build
    from piblade.state import state_dir
    from piblade.testbed.emulation import ensure_aarch64, release
    from piblade.testbed.image import ensure_image
    from piblade.testbed.system import mount_overlay, unmount_all

    done = ensure_aarch64()
    house = build(state_dir() / "wheelhouse", "aarch64", "3.11")
    image, _ = ensure_image(state_dir() / "testbed", print, arch="arm64")
    results = {}
    native = subprocess.run([sys.executable, "-c", ON_NODE], capture_output=True, text=True, cwd=ROOT, check=True)
    results["this venv"] = json.loads(native.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="piblade-arm64-bench-", dir=state_dir()) as tmp:
        base = Path(tmp)
        for d in ("upper", "work", "root"):
            (base / d).mkdir()
        root = base / "root"
        if not mount_overlay(image, base / "upper", base / "work", root):
            raise SystemExit("could not mount an overlay of the arm64 image")
        try:
            subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
            shutil.copytree(house.directory, root / "wheelhouse")
            started = time.monotonic()
            subprocess.run(["chroot", str(root), "python3", "-m", "venv", "/venv"], check=True)
            subprocess.run(["chroot", str(root), "/venv/bin/pip", "install", "-q", "--no-index", "--find-links",
                            "/wheelhouse", house.requirement], check=True)
            print(f"emulated venv from the aarch64 wheelhouse in {time.monotonic() - started:.0f} s", flush=True)
            arm = subprocess.run(["chroot", str(root), "/venv/bin/python", "-c", ON_NODE], capture_output=True,
                                 text=True, check=True)
            results["arm64 chroot"] = json.loads(arm.stdout.strip().splitlines()[-1])
        finally:
            unmount_all(base)
    print("left over:", release(done) or "nothing")
    report(results, "this venv", "arm64 chroot")


def main() -> None:
    if "--chroot" in sys.argv[1:]:
        in_chroot()
        return
    bed = Testbed(inventory=ROOT / "inventory" / "testbed.yml")
    started = time.monotonic()
    info = bed.up(workers=1, arm64=1)
    print(f"testbed up in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{n.name} {n.machine}" for n in info.nodes), flush=True)
    try:
        env = {**os.environ, "COLUMNS": "100"}
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "piblade", "provision", "-i", str(info.inventory)],
                             capture_output=True, text=True, cwd=ROOT, env=env)
        print(run.stdout, flush=True)
        if run.returncode:
            raise SystemExit(f"provision failed:\n{run.stderr}")
        print(f"provisioned in {time.monotonic() - started:.0f} s", flush=True)
        # The worker services would share the CPUs with the timing: stop them for the measurement.
        for node in ("tb-w1", "tb-arm1"):
            bed.run(node, "systemctl stop piblade-worker", user="root", timeout=180, check=True)  # no sudo emulated
        results = {}
        for node in ("tb-w1", "tb-arm1"):
            done = bed.run(node, ["/opt/piblade/venv/bin/python", "-c", ON_NODE], timeout=1800)
            if done.returncode:
                raise SystemExit(f"{node}: {done.stderr}")
            results[node] = json.loads(done.stdout.strip().splitlines()[-1])
        report(results, "tb-w1", "tb-arm1")
    finally:
        bed.down()


if __name__ == "__main__":
    main()
