"""An upgrade under load: new piblade code provisioned while a 200-tile fan-out runs on the testbed.

The new code is a copy of this checkout with one harmless module added (the real
tree is untouched), so its wheel has the same version number and another source
hash; `piblade provision` runs from that copy, as after a `git pull`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import piblade, wait_for_workers
from tests.e2e.test_provision import hosts, provision_json

pytestmark = pytest.mark.e2e

#: Heavy enough that the run outlasts building, pushing and the node-by-node restart.
PARAMS = {"width": 2000, "height": 1500, "max_iter": 60000, "tiles": 200,
          "x_min": -2.0, "x_max": 1.0, "y_min": -1.0, "y_max": 1.0}


@pytest.fixture(scope="module")
def inventory(testbed) -> Path:  # type: ignore[no-untyped-def]
    for node in testbed.status().nodes:  # an earlier test may have powered one off
        if not node.running:
            testbed.start(node.name)
    return Path(testbed.info().inventory)


@pytest.fixture(scope="module")
def provisioned(inventory: Path) -> dict[str, Any]:
    report = provision_json(inventory)
    assert report["returncode"] == 0, json.dumps(report, indent=1)
    return report


def newer_checkout(into: Path) -> tuple[Path, str]:
    """A copy of this checkout with one module more: new code, same version. Returns it and its version."""
    from piblade.provision.wheelhouse import source_hash

    root = Path(__file__).resolve().parents[2]
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "requirements.lock", "piblade", "jobs"):
        if (root / name).is_dir():
            shutil.copytree(root / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(root / name, into / name)
    (into / "piblade" / "_upgrade_marker.py").write_text('"""Planted by tests/e2e/test_upgrade.py."""\n')
    version = tomllib.loads((into / "pyproject.toml").read_text())["project"]["version"]
    return into, f"{version}+{source_hash(into)}"


def piblade_from(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI of another checkout, as its owner runs it there."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(checkout)}
    return subprocess.run([sys.executable, "-m", "piblade", *args], check=False, capture_output=True, text=True,
                          timeout=900, env=env, cwd=checkout)


def status(inventory: Path) -> dict[str, Any]:
    return json.loads(piblade("status", "-i", str(inventory), "--json").stdout)


def run_state(inventory: Path, run_id: str) -> dict[str, Any]:
    return json.loads(piblade("jobs", "status", run_id, "-i", str(inventory), "--json").stdout)


def test_an_upgrade_mid_run_restarts_workers_one_node_at_a_time_and_loses_no_tile(
    provisioned: dict[str, Any], testbed, inventory: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from jobs.mandelbrot import colorize, render_tile
    from piblade import tasks
    from piblade.context import resolve_cluster
    from piblade.redisconn import connect
    from piblade.runs import load_run

    workers = {"tb-w1", "tb-w2"}
    wait_for_workers(inventory, workers)
    before = status(inventory)["versions"]
    assert len(before) == 1, before
    (old,) = before
    checkout, new = newer_checkout(tmp_path / "piblade-next")
    assert new != old

    # The reference, computed in one piece with the same parameters while the cluster works
    # (the kernel equals jobs.mandelbrot.render_reference: tests/unit/test_jobs.py).
    p = PARAMS
    reference = ThreadPoolExecutor(1).submit(
        render_tile, 0, 0, p["width"], p["height"], p["width"], p["height"], p["max_iter"],
        p["x_min"], p["x_max"], p["y_min"], p["y_max"], os.cpu_count() or 1)
    submitted = piblade("submit", "mandelbrot", "-i", str(inventory), *(a for k, v in PARAMS.items()
                        for a in ("-p", f"{k}={v}")), "--json")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run"]
    started = time.monotonic()
    while run_state(inventory, run_id)["done"] < 5:  # mid-run: some tiles done, most to go
        assert time.monotonic() - started < 120, "no tile finished in 2 minutes"
        time.sleep(1)

    # --check names the restarts and says a run is in progress.
    check = piblade_from(checkout, "provision", "-i", str(inventory), "--check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    restarts = {h: c["summary"] for h, host in hosts(json.loads(check.stdout)).items() for c in host["changes"]
                if c["step"] == "restart piblade-worker.service"}
    assert set(restarts) == workers, check.stdout
    assert all("one node at a time: a run is in progress" in s for s in restarts.values()), restarts

    upgraded_at = time.monotonic()
    report = piblade_from(checkout, "provision", "-i", str(inventory), "--json")
    upgrade_seconds = time.monotonic() - upgraded_at
    assert report.returncode == 0, report.stdout + report.stderr
    rolled = {h: c["summary"] for h, host in hosts(json.loads(report.stdout)).items() for c in host["changes"]
              if c["step"] == "restart piblade-worker.service"}
    assert set(rolled) == workers, report.stdout
    # The recap shows the roll: each node restarted in its own turn, back on the new code.
    assert sorted(s.split("node ", 1)[1][:9] for s in rolled.values()) == ["1 of the ", "2 of the "], rolled
    assert all(f"on piblade {new}" in s for s in rolled.values()), rolled

    deadline = time.monotonic() + 900
    while (state := run_state(inventory, run_id))["state"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(2)
    run_seconds = time.monotonic() - started
    # Complete, nothing lost: every tile finished once as far as RQ knows, and the reduce ran.
    assert state["state"] == "finished", state
    assert state["counts"] == {"finished": 200}, state
    # Mid-run for real: tiles ran on the old code and on the new.
    conn = connect(resolve_cluster(inventory).redis_target())
    try:
        ran = {r.value.get("piblade") for r in tasks.fetch_results(conn, load_run(conn, run_id).task_ids)
               if r is not None and isinstance(r.value, dict)}
    finally:
        conn.close()
    assert ran == {old, new}, (ran, f"upgrade took {upgrade_seconds:.0f} s, the run {run_seconds:.0f} s")
    # Every worker ends on the new code, and status sees one version again.
    assert status(inventory)["versions"] == {new: sorted(workers)}

    # Exact: the image equals the one computed in one piece with the same parameters.
    from PIL import Image

    png = testbed.run("tb-nas", f"sudo base64 -w0 /srv/piblade/{state['output']}/mandelbrot.png").stdout
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    assert np.array_equal(got, colorize(reference.result(), int(p["max_iter"])))
    print(f"upgrade {upgrade_seconds:.0f} s during a run of {run_seconds:.0f} s;",
          "; ".join(f"{h}: {s}" for h, s in sorted(rolled.items())))
