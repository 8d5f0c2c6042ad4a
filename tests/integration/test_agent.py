"""The real health agent as a subprocess against a real redis-server, and `piblade status` reading it.

Pi sensors are files and a shell script in tmp_path (PIBLADE_THERMAL_FILE,
PIBLADE_VCGENCMD, PIBLADE_MODEL_FILE), so a test can make a node hot or
under-voltage and watch the agent pause it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from piblade import healthstore, local
from piblade.clusterstatus import gather
from piblade.redisconn import RedisTarget, connect
from tests.integration.conftest import ROOT, RedisServer, start_workers, worker_env

pytestmark = pytest.mark.integration

INTERVAL = 0.5


def wait_for(check: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Pi:
    """The files and script an agent reads as its Pi's sensors."""

    root: Path

    @property
    def thermal(self) -> Path:
        return self.root / "temp"

    def set_temp(self, celsius: float) -> None:
        tmp = self.root / "temp.tmp"
        tmp.write_text(f"{int(celsius * 1000)}\n")
        tmp.replace(self.thermal)

    def set_throttled(self, value: int) -> None:
        tmp = self.root / "throttled.tmp"
        tmp.write_text(f"throttled={value:#x}\n")
        tmp.replace(self.root / "throttled")

    def env(self) -> dict[str, str]:
        return {
            "PIBLADE_THERMAL_FILE": str(self.thermal),
            "PIBLADE_MODEL_FILE": str(self.root / "model"),
            "PIBLADE_VCGENCMD": str(self.root / "vcgencmd"),
        }


@pytest.fixture
def pi(tmp_path: Path) -> Pi:
    fake = Pi(tmp_path / "pi")
    fake.root.mkdir()
    (fake.root / "model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    fake.set_temp(45)
    fake.set_throttled(0)
    script = fake.root / "vcgencmd"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  get_throttled) cat '{fake.root / 'throttled'}' ;;\n"
        "  measure_clock) echo 'frequency(48)=600000000' ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return fake


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the agent ignored SIGTERM:\n{self.log.read_text()}")
        return self.proc.returncode


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    started: list[AgentProc] = []

    def start(target: RedisTarget, pi: Pi, node: str = "pi1.test", *args: str, env: dict[str, str] | None = None
              ) -> AgentProc:
        log = tmp_path / f"agent-{node}-{len(started)}.log"
        full_env = {**os.environ, **(env or {}), **pi.env(),
                    "PIBLADE_REDIS_URL": target.url(), "PIBLADE_REDIS_PASSWORD_FILE": str(target.password_file),
                    "PYTHONPATH": str(ROOT)}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "piblade", "agent", "--node", node, "--role", "workers",
                 "--interval", str(INTERVAL), *args],
                env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        agent = AgentProc(proc, log)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def sample_of(conn: redis.Redis, node: str) -> dict[str, Any] | None:
    return healthstore.current(conn, [node])[node]


def test_heartbeats_arrive_with_the_pi_facts(redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents) -> None:
    agent = agents(redis_server.target, pi)
    first = wait_for(lambda: sample_of(conn, "pi1.test"), what="the first heartbeat")
    assert first["node"] == "pi1.test" and first["role"] == "workers"
    assert first["temp_c"] == 45.0
    assert first["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert first["throttled"] == 0 and not any(first["flags"].values())
    assert first["paused"] is None and first["max_temp"] == 80.0
    assert 0 < conn.ttl(healthstore.SAMPLE_KEY.format("pi1.test")) <= healthstore.ttl_for(INTERVAL)
    later = wait_for(lambda: (s := sample_of(conn, "pi1.test")) and s["time"] > first["time"] and s,
                     what="a second heartbeat")
    assert later["net_rx_bps"] is not None
    assert healthstore.nodes(conn)["pi1.test"]["interval"] == INTERVAL
    assert len(healthstore.history(conn, "pi1.test")) >= 2
    assert agent.stop() == 0
    assert "agent for pi1.test stopped" in agent.log.read_text()


def test_a_stopped_agent_makes_its_node_down_when_the_ttl_expires(
    redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents
) -> None:
    interval = 2.0  # a TTL of 6 s: stopping the agent on a busy machine must not outlast it
    agent = agents(redis_server.target, pi, "pi1.test", "--interval", str(interval))
    wait_for(lambda: sample_of(conn, "pi1.test"), what="the first heartbeat")
    assert agent.stop() == 0
    stopped = time.monotonic()
    assert sample_of(conn, "pi1.test") is not None  # still within its TTL
    wait_for(lambda: sample_of(conn, "pi1.test") is None, timeout=healthstore.ttl_for(interval) + 3,
             what="the heartbeat to expire")
    assert time.monotonic() - stopped <= healthstore.ttl_for(interval) + 1
    assert "pi1.test" in healthstore.nodes(conn)  # still listed, with when it was last seen
    node = gather(conn).node("pi1.test")
    assert node is not None and not node.up and node.seen_ago is not None


def test_history_stays_bounded(redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents) -> None:
    agent = agents(redis_server.target, pi, "pi1.test", "--history", "5", "--interval", "0.1")
    key = healthstore.HISTORY_KEY.format("pi1.test")
    wait_for(lambda: conn.xlen(key) >= 5, what="five history entries")
    first_id = conn.xrange(key, count=1)[0][0]
    # Twenty more beats: old entries go, the length stays at five.
    wait_for(lambda: int(conn.xrange(key, count=1)[0][0].split(b"-")[0]) - int(first_id.split(b"-")[0]) > 2000,
             what="two more seconds of beats")
    assert conn.xlen(key) == 5
    agent.stop()


def test_hot_node_pauses_and_resumes_with_hysteresis(
    redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents
) -> None:
    agents(redis_server.target, pi)
    wait_for(lambda: sample_of(conn, "pi1.test"), what="the first heartbeat")
    assert healthstore.read_pause(conn, "pi1.test") is None
    pi.set_temp(85)
    wait_for(lambda: healthstore.read_pause(conn, "pi1.test") == "hot", what="the pause key to say hot")
    assert sample_of(conn, "pi1.test")["paused"] == "hot"
    pi.set_temp(78)  # cooler than max_temp, not yet max_temp - 5
    wait_for(lambda: sample_of(conn, "pi1.test")["temp_c"] == 78.0, what="a sample at 78 C")
    assert healthstore.read_pause(conn, "pi1.test") == "hot"
    pi.set_temp(70)
    wait_for(lambda: healthstore.read_pause(conn, "pi1.test") is None, what="the pause to clear")
    assert sample_of(conn, "pi1.test")["paused"] is None
    assert gather(conn).node("pi1.test").paused is None


def test_under_voltage_now_pauses_and_since_boot_does_not(
    redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents
) -> None:
    agents(redis_server.target, pi)
    wait_for(lambda: sample_of(conn, "pi1.test"), what="the first heartbeat")
    pi.set_throttled(0x50005)
    wait_for(lambda: healthstore.read_pause(conn, "pi1.test") == "under-voltage", what="an under-voltage pause")
    sample = sample_of(conn, "pi1.test")
    assert sample["flags"]["under_voltage"] and sample["flags"]["throttled_since_boot"]
    assert sample["cpu_freq_mhz"] == 600  # the firmware's real clock while throttled
    node = gather(conn).node("pi1.test")
    assert node.paused == "under-voltage" and node.state == "paused"
    assert node.throttling == ("under-voltage", "throttled")
    pi.set_throttled(0x50000)
    wait_for(lambda: healthstore.read_pause(conn, "pi1.test") is None, what="the pause to clear")
    assert gather(conn).node("pi1.test").throttling == ("under-voltage since boot", "throttled since boot")


def start_redis(paths: local.LocalPaths, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([local.find_redis_server(), str(paths.redis_conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = RedisTarget("127.0.0.1", port, "piblade", paths.password_file)
    deadline = time.monotonic() + 20
    while True:
        try:
            connect(target, timeout=1).close()
            return proc
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def test_agent_survives_redis_outages(tmp_path: Path, pi: Pi, agents) -> None:
    """Redis absent at start, then up, then gone, then back: the agent never exits."""
    paths = local.LocalPaths(tmp_path / "outage")
    paths.log_dir.mkdir(parents=True)
    port = local.free_port()
    password = os.urandom(8).hex()
    paths.password_file.parent.mkdir(parents=True)
    paths.password_file.write_text(password)
    paths.password_file.chmod(0o600)
    local.write_redis_config(paths, port, password)
    target = RedisTarget("127.0.0.1", port, "piblade", paths.password_file)

    agent = agents(target, pi)
    wait_for(lambda: "cannot publish to Redis" in agent.log.read_text(), what="the agent to notice no Redis")
    time.sleep(1)
    assert agent.proc.poll() is None
    server = start_redis(paths, port)
    try:
        client = connect(target)
        wait_for(lambda: sample_of(client, "pi1.test"), timeout=20, what="a heartbeat once Redis is up")
        client.close()
        server.terminate()
        server.wait(timeout=20)
        time.sleep(2)
        assert agent.proc.poll() is None
        server = start_redis(paths, port)
        client = connect(target)
        client.delete(healthstore.SAMPLE_KEY.format("pi1.test"))  # AOF brought the old one back
        wait_for(lambda: sample_of(client, "pi1.test"), timeout=40, what="heartbeats after the second outage")
        client.close()
        # Logged just after the beat that got through: wait for it rather than race it.
        wait_for(lambda: "is back after" in agent.log.read_text(), what="the agent to say Redis is back")
        assert agent.stop() == 0
    finally:
        server.terminate()
        server.wait(timeout=20)


# -- `piblade status` -----------------------------------------------------------------------

INVENTORY = """\
all:
  children:
    controller:
      hosts:
        pi1.test:
          ansible_host: 10.9.9.1
    workers:
      hosts:
        pi1.test:
{extra}"""


def status_cli(server: RedisServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piblade", "status", "--json", *args],
        env=worker_env(server, tmp_path / "state"), capture_output=True, text=True, timeout=60, check=False,
    )


def test_status_shows_up_then_down_and_exits_1_for_a_down_inventory_node(
    redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents, tmp_path: Path
) -> None:
    agent = agents(redis_server.target, pi)
    wait_for(lambda: sample_of(conn, "pi1.test"), what="the first heartbeat")
    one = tmp_path / "one.yml"
    one.write_text(INVENTORY.format(extra=""))
    two = tmp_path / "two.yml"
    two.write_text(INVENTORY.format(extra="        pi2.test:\n          ansible_host: 10.9.9.2\n"))

    done = status_cli(redis_server, tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (node,) = data["nodes"]
    assert (node["name"], node["up"], node["state"], node["temp_c"]) == ("pi1.test", True, "up", 45.0)
    assert data["down"] == []
    assert [q["name"] for q in data["queues"]] == ["default"]

    done = status_cli(redis_server, tmp_path, "-i", str(one))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["down"] == []

    done = status_cli(redis_server, tmp_path, "-i", str(two))
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["down"] == ["pi2.test"]
    pi2 = next(n for n in data["nodes"] if n["name"] == "pi2.test")
    assert pi2["up"] is False and pi2["last_seen"] is None and pi2["role"] == "workers"

    agent.stop()
    wait_for(lambda: sample_of(conn, "pi1.test") is None, timeout=10, what="the heartbeat to expire")
    done = status_cli(redis_server, tmp_path)
    assert done.returncode == 0, done.stderr  # no inventory: nothing is expected to be up
    (node,) = json.loads(done.stdout)["nodes"]
    assert node["up"] is False and node["state"] == "down" and node["seen_ago"] >= 0

    done = status_cli(redis_server, tmp_path, "-i", str(one))
    assert done.returncode == 1
    assert json.loads(done.stdout)["down"] == ["pi1.test"]

    table = subprocess.run(
        [sys.executable, "-m", "piblade", "status", "-i", str(one)],
        env={**worker_env(redis_server, tmp_path / "state"), "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert table.returncode == 1
    assert "pi1.test" in table.stdout and "down" in table.stdout and "last seen" in table.stdout


def test_gather_counts_running_jobs_per_node_and_reads_the_share(
    redis_server: RedisServer, conn: redis.Redis, tmp_path: Path
) -> None:
    from piblade import dispatch
    from piblade.registry import load_registry
    from tests.integration.conftest import TEST_JOBS

    sample = {"node": "pi1.test", "role": "workers", "temp_c": 50.0, "max_temp": 80.0, "mount": "/mnt/piblade",
              "disks": {"/": {"total": 100, "used": 40, "free": 60, "percent": 40.0},
                        "/mnt/piblade": {"total": 1000, "used": 250, "free": 750, "percent": 25.0}}}
    healthstore.publish(conn, "pi1.test", sample, interval=30, role="workers")
    pool = start_workers(redis_server, tmp_path, processes=2, node="pi1.test")
    try:
        dispatch.submit(conn, load_registry([TEST_JOBS]), "test-sleep", {"count": 2, "seconds": 5})
        wait_for(lambda: len(gather(conn).node("pi1.test").running_jobs) == 2, what="two running jobs on pi1.test")
        # Paused while busy (workers finish the job in hand): status shows both.
        healthstore.publish(conn, "pi1.test", sample, interval=30, role="workers", pause="hot")
        status = gather(conn)
    finally:
        pool.stop()
    node = status.node("pi1.test")
    assert node.workers == 2 and node.paused == "hot" and node.state == "paused"
    assert node.disk_percent == 40.0
    assert status.share is not None and (status.share.path, status.share.free) == ("/mnt/piblade", 750)
    (queue,) = status.queues
    assert (queue.name, queue.workers, queue.started) == ("default", 2, 2)
    assert status.to_dict()["share"]["node"] == "pi1.test"


def test_status_watch_json_streams_until_ctrl_c(redis_server: RedisServer, conn: redis.Redis, tmp_path: Path) -> None:
    healthstore.publish(conn, "pi1.test", {"node": "pi1.test", "temp_c": 40.0}, interval=30, role="workers")
    # Ctrl-C as at a terminal: a suite started in the background (`make test &`) has SIGINT
    # ignored, the child would inherit that, and Python then never raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piblade", "status", "--watch", "--json", "--every", "0.2"],
            env=worker_env(redis_server, tmp_path / "state"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]  # type: ignore[union-attr]
        assert all(doc["nodes"][0]["name"] == "pi1.test" and doc["nodes"][0]["up"] for doc in lines)
        proc.send_signal(signal.SIGINT)
        # Keep reading while it exits: a full pipe would block its last write and flush.
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_fan_reading_goes_from_the_agent_to_status_and_metrics(
    redis_server: RedisServer, conn: redis.Redis, pi: Pi, agents, tmp_path: Path
) -> None:
    from piblade.dashboard import metrics
    from piblade.dashboard.snapshot import SnapshotSource

    fan = pi.root / "fan1_input"
    fan.write_text("3125\n")
    agents(redis_server.target, pi, env={"PIBLADE_FAN_FILE": str(fan)})
    wait_for(lambda: (s := sample_of(conn, "pi1.test")) and s.get("fan_rpm"), what="a heartbeat with the fan")
    doc = json.loads(status_cli(redis_server, tmp_path).stdout)
    (node,) = doc["nodes"]
    assert node["fan_rpm"] == 3125.0
    assert {"key": "fan_rpm", "label": "Fan", "value": 3125.0, "text": "3125 rpm", "level": "ok", "bar": False} in \
        node["readings"]
    table = subprocess.run(
        [sys.executable, "-m", "piblade", "status"], env={**worker_env(redis_server, tmp_path / "state"),
                                                         "COLUMNS": "160"},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "fan" in table and "3125 rpm" in table
    text = metrics.render(SnapshotSource(conn).read().to_dict())
    assert 'piblade_node_fan_rpm{node="pi1.test"} 3125\n' in text
