"""A node that is the controller, under a real systemd: the controller role's unit, enabled, restarted and booted.

This machine and CI have no systemd as PID 1, so the unit `piblade provision`
installs for the controller (Redis, the recorder and the alert service under one
supervisor) is exercised on a testbed node, which boots systemd like a Pi: there
piblade, as root, provisions a controller-only cluster of its own. The unit must
be enabled, bring Redis up with the cluster's password, be left alone by a
re-run, come back after its supervisor is SIGKILLed, and start again when the
node boots.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piblade.testbed import Testbed
from tests.e2e.test_provision import hosts, provision_json

pytestmark = pytest.mark.e2e

NODE = "tb-w2"
UNIT = "piblade-controller-ctlcheck.service"
PIBLADE = "/opt/piblade/venv/bin/piblade"
PYTHON = "/opt/piblade/venv/bin/python"
INVENTORY = """\
all:
  vars:
    piblade_cluster_name: ctlcheck
  children:
    controller:
      hosts:
        ctl:
          ansible_host: 127.0.0.1
          ansible_connection: local
          piblade_redis_port: 6390
"""
#: Redis answers with the cluster's password, and the supervisor that systemd runs is the one piblade knows.
PROBE = """
import json, sys
from piblade import local
from piblade.context import cluster_state
from piblade.redisconn import connect
paths = cluster_state("ctlcheck")
config = local.read_config(paths)
conn = connect(local.target(paths), timeout=5)
if sys.argv[1:] == ["keep"]:
    conn.set("kept", "yes")
kept = conn.get("kept")
print(json.dumps({"pid": config.pid, "ping": conn.ping(), "kept": kept.decode() if isinstance(kept, bytes) else kept}))
"""


def root(bed: Testbed, command: str, timeout: float = 300) -> str:
    done = bed.run(NODE, f"sudo -H bash -c {shlex.quote(command)}", timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


def provision(bed: Testbed) -> dict[str, Any]:
    out = root(bed, f"{PIBLADE} provision -i /root/ctlcheck.yml --tags controller --json")
    return json.loads(out)["hosts"][0]


def main_pid(bed: Testbed) -> int:
    return int(root(bed, f"systemctl show --property=MainPID --value {UNIT}").strip() or 0)


def probe(bed: Testbed, timeout: float = 120) -> dict[str, Any]:
    """Until Redis answers under the unit's supervisor (it starts a moment after systemd does)."""
    deadline = time.monotonic() + timeout
    while True:
        done = bed.run(NODE, f"sudo -H {PYTHON} -c {shlex.quote(PROBE)}", timeout=60)
        if done.returncode == 0:
            found: dict[str, Any] = json.loads(done.stdout)
            if found["pid"] == main_pid(bed):
                return found
        assert time.monotonic() < deadline, f"the controller did not come up under {UNIT}: {done.stderr[-2000:]}"
        time.sleep(1)


def redis_parents(bed: Testbed) -> list[int]:
    """The parent pid of each redis-server on the node."""
    return [int(p) for p in root(bed, "ps -o ppid= -C redis-server || true").split()]


@pytest.fixture(scope="module")
def controller_node(testbed: Testbed) -> Iterator[Testbed]:
    """A provisioned worker node (piblade installed there) with a controller-only inventory of its own.

    Like the Ansible module, this one starts from fresh nodes and leaves fresh ones (and no cluster
    Redis) behind, so the modules after it still meet unprovisioned nodes.
    """
    testbed.down()
    testbed.up(workers=2)
    try:
        report = provision_json(Path(testbed.info().inventory))
        assert report["returncode"] == 0, json.dumps(hosts(report), indent=1)
        root(testbed, f"umask 077 && cat > /root/ctlcheck.yml <<'EOF'\n{INVENTORY}EOF")
        yield testbed
    finally:
        testbed.down()
        testbed.up(workers=2)


def test_the_controller_runs_as_a_systemd_unit_that_survives_a_crash_and_a_reboot(controller_node: Testbed) -> None:
    bed = controller_node
    first = provision(bed)
    assert not first["error"], first
    steps = {s["step"]: s for s in first["plan"]}
    unit_step = steps[f"systemd unit /etc/systemd/system/{UNIT}"]
    assert unit_step["status"] == "changed"
    assert root(bed, f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert root(bed, f"systemctl is-active {UNIT}").strip() == "active"
    up = probe(bed)
    assert up["ping"] is True
    # One Redis, and it is the child of the supervisor systemd runs, not a stray.
    assert redis_parents(bed) == [up["pid"]]
    assert json.loads(root(bed, f"{PYTHON} -c {shlex.quote(PROBE)} keep"))["kept"] == "yes"

    again = provision(bed)  # nothing to do: the unit and its supervisor are as they should be
    assert not again["error"] and again["changed"] == 0, again["changes"]
    assert main_pid(bed) == up["pid"]

    # The supervisor dies hard: systemd clears the unit and starts it again; Redis kept its data (AOF).
    root(bed, f"systemctl kill --signal=SIGKILL --kill-whom=main {UNIT}")
    deadline = time.monotonic() + 120
    while main_pid(bed) in (0, up["pid"]):
        assert time.monotonic() < deadline, f"systemd did not start {UNIT} again"
        time.sleep(0.5)
    after_crash = probe(bed)
    assert after_crash["pid"] != up["pid"] and after_crash["kept"] == "yes"
    assert redis_parents(bed) == [after_crash["pid"]]  # the old Redis went with the old supervisor

    # The node restarts: the unit starts at boot, with nobody running piblade.
    bed.stop(NODE)
    bed.start(NODE)
    booted = probe(bed, timeout=240)
    assert booted["ping"] is True and booted["kept"] == "yes"
