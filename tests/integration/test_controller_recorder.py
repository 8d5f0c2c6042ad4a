"""A Pi cluster's controller runs the recorder under its supervisor, into a results database elsewhere.

The controller's daemon (what `piblade provision` starts on this machine) runs no PostgreSQL of its
own: its recorder drains the cluster's record stream into the results node's server, here a real
PostgreSQL on loopback standing in for the NAS node's, and the supervisor starts it again when it dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piblade import dispatch, local, resultsdb
from piblade.redisconn import connect
from piblade.registry import load_registry
from tests.integration.conftest import TEST_JOBS, PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def controller(results: PostgresServer, tmp_path: Path) -> Iterator[local.LocalPaths]:
    paths = local.LocalPaths(tmp_path / "cluster")
    paths.postgres_password_file.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(results.server.password_file, paths.postgres_password_file)  # the cluster's 0600 secret
    os.chmod(paths.postgres_password_file, 0o600)
    # As `piblade provision` starts it: in a process of its own that leaves the daemon running.
    start = (f"from pathlib import Path; from piblade import local; local.up(0, paths=local.LocalPaths(Path({str(paths.root)!r})),"
             f" node='ctl', results=False, results_url={results.target.display!r})")
    subprocess.run([sys.executable, "-c", start], check=True, timeout=180)
    yield paths
    local.down(paths=paths)


def recorder_pids(paths: local.LocalPaths) -> list[int]:
    found = []
    for pid in local.leftovers(paths):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"recorder" in argv and b"piblade" in argv:
            found.append(pid)
    return found


def recorded_runs(results: PostgresServer, want: int, timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with resultsdb.connect(results.target) as db:
                runs = {r.id for r in resultsdb.list_runs(db)}
        except resultsdb.ResultsUnavailable:
            runs = set()
        if len(runs) >= want or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def test_the_controllers_supervisor_runs_the_recorder_into_the_results_node_and_restarts_it(
    controller: local.LocalPaths, results: PostgresServer
) -> None:
    config = local.read_config(controller)
    assert config is not None and config.pg_port == 0 and config.results_url == results.target.display
    assert not controller.postgres_dir.exists()  # no PostgreSQL of its own
    target = local.target(controller)
    assert target is not None
    conn = connect(target)
    registry = load_registry([TEST_JOBS])
    first = dispatch.submit(conn, registry, "test-sleep", {"count": "3", "seconds": "0"})
    assert recorded_runs(results, 1) == {first.id}
    (pid,) = recorder_pids(controller)
    os.kill(pid, signal.SIGKILL)  # the recorder dies: its supervisor starts another
    deadline = time.monotonic() + 30
    while not (again := recorder_pids(controller)) or again == [pid]:
        assert time.monotonic() < deadline, "the recorder was not started again"
        time.sleep(0.1)
    second = dispatch.submit(conn, registry, "test-sleep", {"count": "3", "seconds": "0"})
    assert recorded_runs(results, 2) == {first.id, second.id}
    assert local.status(controller)["results"] == results.target.display
    conn.close()
