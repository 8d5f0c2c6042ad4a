"""Real processes for dashboard tests: a redis-server a test may stop, and a `piblade dashboard` process.

The session's ``redis_server`` (conftest.py) serves every test and must never
stop; :class:`OwnRedis` is one test's own, so "Redis is gone" is the real thing
(the process terminated, connections refused), not a mock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from piblade import local
from piblade.redisconn import RedisTarget, connect
from tests.integration.conftest import ROOT


@dataclass
class OwnRedis:
    paths: local.LocalPaths
    port: int
    proc: subprocess.Popen[bytes] | None = None
    clients: list[redis.Redis] = field(default_factory=list)

    @property
    def target(self) -> RedisTarget:
        return RedisTarget("127.0.0.1", self.port, "piblade", self.paths.password_file)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [local.find_redis_server(), str(self.paths.redis_conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                connect(self.target, timeout=1).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        client = connect(self.target)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Stop redis-server (SIGTERM, as systemd would) and wait until it has exited."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server for this test alone (piblade's ACL config, loopback, a free port)."""
    paths = local.LocalPaths(tmp_path / "own-redis")
    paths.log_dir.mkdir(parents=True)
    paths.password_file.parent.mkdir(parents=True, exist_ok=True)
    paths.password_file.write_text(os.urandom(8).hex())
    paths.password_file.chmod(0o600)
    port = local.free_port()
    local.write_redis_config(paths, port, paths.password_file.read_text())
    server = OwnRedis(paths, port)
    server.start()
    try:
        yield server
    finally:
        for client in server.clients:
            client.close()
        server.stop()


def dashboard_env(target: RedisTarget, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGROK_", "PIBLADE_NGROK_"))}
    env.update(
        PIBLADE_REDIS_URL=target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(target.password_file),
        PIBLADE_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        **extra,
    )
    return env


@dataclass
class DashboardProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    state: Path

    @property
    def token(self) -> str:
        return (self.state / "dashboard.token").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_dashboard(env: dict[str, str], log: Path, *args: str, wait: bool = True) -> DashboardProc:
    """`piblade dashboard --port <free>` as a user runs it; waits for /healthz unless told not to."""
    port = local.free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piblade", "dashboard", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dash = DashboardProc(proc, f"http://127.0.0.1:{port}", log, Path(env["PIBLADE_STATE_DIR"]))
    if wait:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(dash.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                dash.stop()
                pytest.fail(f"the dashboard did not start:\n{log.read_text()}")
            time.sleep(0.1)
    return dash


def http_get(url: str, token: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    all_headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    request = urllib.request.Request(url, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
