"""The controller's supervisor started the way its systemd unit starts it, and stopped the way systemd stops it.

This machine (and CI) has no systemd as PID 1, so the test plays systemd's part
with the rendered unit itself: the ExecStart command and Environment, a bare
environment like a unit's, and KillMode=mixed's SIGTERM to the main process
alone. What it checks is what the unit relies on: the supervisor started by
someone other than `piblade local up` records its own pid, brings up the
cluster's Redis, and on SIGTERM leaves nothing behind.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from piblade import local
from piblade.provision.controllerunit import controller_unit
from piblade.redisconn import connect

pytestmark = pytest.mark.integration


def test_the_units_command_runs_the_controller_and_sigterm_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    paths = local.LocalPaths(state / "clusters" / "home")
    unit = controller_unit("home", root=paths.root, state_dir=state, python=sys.executable, uid=os.getuid(),
                           home=tmp_path)
    text = unit.content.decode().splitlines()
    (start,) = [shlex.split(line.split("=", 1)[1]) for line in text if line.startswith("ExecStart=")]
    env = dict(item.split("=", 1) for line in text if line.startswith("Environment=")
               for item in shlex.split(line.split("=", 1)[1]))
    env["PATH"] = os.environ["PATH"]  # systemd gives a unit its default PATH and little else
    started: list[subprocess.Popen[bytes]] = []

    def launch() -> Callable[[], int | None]:
        proc = subprocess.Popen(start, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc.poll

    try:
        config, now = local.up(0, paths=paths, node="ctl", results=False, launch=launch)
        (proc,) = started
        assert now and config.pid == proc.pid  # the supervisor said who it is
        assert local.read_config(paths) == config
        target = local.target(paths)
        assert target is not None
        conn = connect(target)
        conn.set("survives", "yes")
        conn.close()
        # Asked again while it runs: nothing is started twice.
        assert local.up(0, paths=paths, node="ctl", results=False, launch=launch) == (config, False)
        assert len(started) == 1
        children = local.leftovers(paths)
        assert len(children) >= 3  # the supervisor, redis-server, the agent, the alert service
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: the main process alone
        assert proc.wait(timeout=120) == 0  # a clean stop: Restart=on-failure does not start it again
        deadline = time.monotonic() + 10
        while local.leftovers(paths) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert local.leftovers(paths) == []
        assert any(paths.redis_dir.rglob("appendonly*")), "redis flushed its AOF on the way down"
    finally:
        local.down(paths=paths)
