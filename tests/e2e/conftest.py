"""The e2e tier: one nspawn testbed (a NAS node and two worker nodes) for the whole session.

It needs root, Linux, systemd-nspawn and debootstrap (`make test` installs the
Debian packages). Nothing is skipped: without them every e2e test fails and says
how to get them. The first run builds the node image (≈1 min, cached under the
state dir); later sessions start the testbed in a few seconds. The testbed is
always taken down at the end, also when a test fails or the run is interrupted
(Ctrl-C); one left by a killed run is removed by the next `up`.

The ``testbed`` fixture is a :class:`piblade.testbed.Testbed`: ``testbed.info()``
has the nodes, key, known_hosts and inventory; ``testbed.run(node, cmd)`` runs a
command over SSH; ``kill``/``stop``/``start`` power a node. A test that powers a
node off need not power it on again; a test that needs every node running asks
for ``every_node_up`` instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from piblade.testbed import Testbed, TestbedError, check_host

ROOT = Path(__file__).resolve().parents[2]


def require_testbed_host() -> None:
    """Fail (never skip) with what to install when this machine cannot run the testbed."""
    try:
        check_host()
    except TestbedError as exc:
        pytest.fail(
            f"the e2e tests need the nspawn testbed, and {exc}. {exc.hint}. "
            "`make test` installs the Debian packages; run it as root on Linux.",
            pytrace=False,
        )


@pytest.fixture(scope="package")  # down before the other tiers run: its nodes share the CPUs
def testbed() -> Iterator[Testbed]:
    require_testbed_host()
    bed = Testbed(inventory=ROOT / "inventory" / "testbed.yml")
    try:
        bed.up(workers=2)
        yield bed
    finally:
        bed.down()


@pytest.fixture
def every_node_up(testbed: Testbed) -> Testbed:
    """The session's testbed with every node running: boots again any node an earlier test powered off."""
    for node in testbed.status().nodes:
        if not node.running:
            testbed.start(node.name)
    return testbed


def wait_for_workers(inventory: Path, nodes: set[str], timeout: float = 240) -> None:
    """Block until every one of ``nodes`` has a worker registered with the cluster Redis.

    Provisioning starts the worker services but does not wait for them: on fresh
    nodes they first compile every Numba kernel, on the same two cores as the
    rest of the testbed. A fan-out submitted before that runs on whichever node
    was ready first.
    """
    import time

    from rq.worker import BaseWorker

    from piblade.cli.common import open_redis
    from piblade.context import resolve_cluster

    conn = open_redis(resolve_cluster(inventory))
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready = {w.name.split(".", 1)[0] for w in BaseWorker.all(connection=conn)}
            if nodes <= ready:
                return
            assert time.monotonic() < deadline, f"no worker registered from {sorted(nodes - ready)} in {timeout:.0f} s"
            time.sleep(0.5)
    finally:
        conn.close()


def piblade(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The piblade CLI as a user runs it (wide output, so tables do not wrap)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "piblade", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def fan_out_on_both_workers(bed: Testbed, inventory: Path) -> None:
    """A mandelbrot fan-out through the cluster: tiles on both workers, the PNG on the NAS."""
    import json

    wait_for_workers(inventory, {"tb-w1", "tb-w2"})
    run = piblade("submit", "mandelbrot", "-i", str(inventory), "-p", "width=400", "-p", "height=240",
                  "-p", "tiles=24", "--wait", "--json", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    status = json.loads(run.stdout)
    assert status["state"] == "finished"
    assert set(status["nodes"]) == {"tb-w1", "tb-w2"}  # both workers took tiles
    png = f"/srv/piblade/{status['output']}/mandelbrot.png"
    assert bed.run("tb-nas", f"sudo test -s {png} && echo present").stdout.strip() == "present"
