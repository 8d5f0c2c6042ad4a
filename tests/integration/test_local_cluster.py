"""`piblade local up/status/down` and `piblade submit` as a user runs them: real processes, real output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, TEST_JOBS

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose environment or command line mentions ``text`` (our private state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if text.encode() in blob and state != "Z":
            found.append(int(entry.name))
    return found


class Cli:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = dict(os.environ)
        self.env.update(
            PIBLADE_STATE_DIR=str(state),
            PIBLADE_JOB_MODULES=TEST_JOBS,
            PYTHONPATH=str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
            COLUMNS="200",
        )
        self.env.pop("PIBLADE_REDIS_URL", None)

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "piblade", *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.state,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path / "state")
    runner.state.mkdir()
    yield runner
    runner("local", "down")
    for pid in processes_mentioning(str(runner.state)) + redis_servers_on(runner.state):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_local_cluster_lifecycle(cli: Cli) -> None:
    first = cli("local", "up", "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "local cluster up" in first.stdout
    again = cli("local", "up", "--workers", "2")
    assert again.returncode == 0 and "already running" in again.stdout

    info = json.loads(cli("local", "status", "--json").stdout)
    assert info["running"] is True
    assert len(info["workers"]) == 2

    # Secrets: 0600 password file, the ACL file holds only a hash, nothing in redis.conf.
    password_file = cli.state / "local" / "secrets" / "redis.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert password not in (cli.state / "local" / "redis" / "users.acl").read_text()
    assert password not in (cli.state / "local" / "redis" / "redis.conf").read_text()

    run = cli("submit", "mandelbrot", "-p", "width=200", "-p", "height=120", "-p", "tiles=50", "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "finished" in run.stdout and "50/50 tasks done" in run.stdout
    assert password not in run.stdout + run.stderr
    output_line = next(line for line in run.stdout.splitlines() if line.startswith("output: "))
    assert (Path(output_line.removeprefix("output: ")) / "mandelbrot.png").is_file()

    as_json = cli("submit", "montecarlo-pi", "-p", "samples=200000", "--wait", "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["result"]["samples"] == 200000

    failed = cli("submit", "test-fail", "-p", "message=no disk", "--wait")
    assert failed.returncode == 1
    assert "ValueError: test failure: no disk" in failed.stdout

    refused = cli("submit", "mandelbrot", "-p", "width=0")
    assert refused.returncode == 1
    assert "width=0" in refused.stderr and "out of range" in refused.stderr
    listing = json.loads(cli("jobs", "status", "--json").stdout)
    assert [r["job"] for r in listing] == ["test-fail", "montecarlo-pi", "mandelbrot"]

    down = cli("local", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert processes_mentioning(str(cli.state)) == []
    assert cli("local", "status").returncode == 3

    # AOF persistence: the runs are still there after a restart.
    assert cli("local", "up", "--workers", "1").returncode == 0
    listing = json.loads(cli("jobs", "status", "--json").stdout)
    assert len(listing) == 3 and listing[2]["state"] == "finished"


def test_clear_errors_without_a_cluster(cli: Cli) -> None:
    result = cli("submit", "noop")
    assert result.returncode == 1
    assert "no cluster to talk to" in result.stderr and "piblade local up" in result.stderr
    unknown = cli("submit", "mandelbrott")
    assert unknown.returncode == 1 and 'did you mean "mandelbrot"' in unknown.stderr


def redis_servers_on(state: Path) -> list[int]:
    """redis-servers working in this state dir's AOF directory (redis-server overwrites its argv and environ)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if b"redis-server" in (entry / "cmdline").read_bytes() and Path(os.readlink(entry / "cwd")) == (
                state / "local" / "redis"
            ).resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def daemon_pid(state: Path) -> int:
    return int(json.loads((state / "local" / "cluster.json").read_text())["pid"])


def test_down_stops_what_a_killed_daemon_left(cli: Cli) -> None:
    assert cli("local", "up", "--workers", "1").returncode == 0
    os.kill(daemon_pid(cli.state), 9)
    status = cli("local", "status")
    assert status.returncode == 3 and "daemon dead" in status.stdout and "local down" in status.stdout
    down = cli("local", "down")
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(cli.state)) == []


def test_up_after_a_killed_daemon_keeps_one_redis(cli: Cli) -> None:
    assert cli("local", "up", "--workers", "1").returncode == 0
    assert len(redis_servers_on(cli.state)) == 1
    os.kill(daemon_pid(cli.state), 9)
    again = cli("local", "up", "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert len(redis_servers_on(cli.state)) == 1
    assert cli("local", "down").returncode == 0
    assert processes_mentioning(str(cli.state)) == []


def test_a_killed_worker_process_shows_as_lost(cli: Cli) -> None:
    assert cli("local", "up", "--workers", "2").returncode == 0
    before = json.loads(cli("local", "status", "--json").stdout)["workers"]
    victim = before[0]["name"]
    os.kill(int(victim.rpartition(".")[2]), 9)
    # Its RQ key lives on for up to 35 s; its supervisor reports it at once.
    deadline = time.monotonic() + 20
    while True:
        workers = {w["name"]: w["state"] for w in json.loads(cli("local", "status", "--json").stdout)["workers"]}
        if workers.get(victim, "").startswith("lost"):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.2)
    assert workers[victim] == "lost (killed by SIGKILL)"
    text = cli("local", "status").stdout
    assert f"worker {victim}: lost (killed by SIGKILL)" in text
    shown = cli("status")
    assert "lost worker processes:" in shown.stdout and victim in shown.stdout
    assert json.loads(cli("status", "--json").stdout)["lost_workers"] == [f"{victim} (killed by SIGKILL)"]


def test_inputs_missing_from_the_share_are_refused_before_enqueueing(cli: Cli) -> None:
    assert cli("local", "up", "--workers", "1").returncode == 0
    data = cli.state / "local" / "data"
    (data / "inputs").mkdir(exist_ok=True)
    (data / "inputs" / "sensor.f8").write_bytes(bytes(8 * 100))
    missing = cli("submit", "summary", "-p", "path=inputs/sensr.f8")
    assert missing.returncode == 1
    assert "summary: path=inputs/sensr.f8 does not exist on the share" in missing.stderr, missing.stderr
    assert "piblade nas ls" in missing.stderr
    folder = cli("submit", "summary", "-p", "path=inputs")
    assert folder.returncode == 1 and "is a directory on the share" in folder.stderr
    assert json.loads(cli("jobs", "status", "--json").stdout) == []  # nothing was enqueued
    ok = cli("submit", "summary", "-p", "path=inputs/sensor.f8", "-p", "parts=1", "--wait", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["result"]["count"] == 100


def test_ingest_loads_csv_files_on_the_share_into_the_local_results_database_once(cli: Cli) -> None:
    from piblade import local, resultsdb

    assert cli("local", "up", "--workers", "2").returncode == 0
    logs = cli.state / "logs"
    logs.mkdir()
    for day in (1, 2):
        (logs / f"day{day}.csv").write_text("sensor,value\n" + "".join(f"{i},{i / 4}\n" for i in range(150_000)))
    assert cli("nas", "put", str(logs), "logs").returncode == 0
    argv = ("submit", "ingest", "--over", "logs/*.csv", "-p", "table=readings", "-p", "chunk_mb=1", "--wait", "--json")
    first = cli(*argv)
    assert first.returncode == 0, first.stdout + first.stderr
    result = json.loads(first.stdout)["result"]
    chunks = sum(-(-f.stat().st_size // 2**20) for f in logs.iterdir())  # a task per MiB of each file
    assert (result["files"], result["chunks"], result["rows"], result["already_loaded"]) == (2, chunks, 300_000, 0)
    assert result["columns"] == ["sensor bigint", "value double precision"]
    again = json.loads(cli(*argv).stdout)["result"]
    assert (again["rows"], again["already_loaded"], again["rows_loaded_before"]) == (0, chunks, 300_000)
    target = local.results_target(local.LocalPaths(cli.state / "local"))
    assert target is not None
    with resultsdb.connect(target) as db:
        assert db.execute("SELECT count(*), sum(value) FROM readings").fetchone() == (300_000, 2 * sum(
            i / 4 for i in range(150_000)))
