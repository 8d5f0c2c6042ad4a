"""Real services for integration tests: a redis-server with piblade's ACL config, a PostgreSQL, real workers.

Everything binds to loopback on free ports and is stopped at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from piblade import local, pgserver, resultsdb
from piblade.nas.smb import SmbShare
from piblade.redisconn import RedisTarget, connect
from piblade.resultsdb import ResultsTarget
from tests.integration.receivers import http_receiver, smtp_receiver  # noqa: F401 - fixtures for the alert tests
from tests.integration.smbd import SambaServer, start_smbd

ROOT = Path(__file__).resolve().parents[2]
TEST_JOBS = "tests.integration.testjobs"


@dataclass
class RedisServer:
    target: RedisTarget
    admin: redis.Redis
    proc: subprocess.Popen[bytes]
    paths: local.LocalPaths


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    root = tmp_path_factory.mktemp("redis")
    paths = local.LocalPaths(root / "local")
    paths.log_dir.mkdir(parents=True)
    password = "test-" + os.urandom(8).hex()
    paths.password_file.parent.mkdir(parents=True)
    paths.password_file.write_text(password)
    paths.password_file.chmod(0o600)
    port = local.free_port()
    local.write_redis_config(paths, port, password)
    # The tests also need an admin user to wipe the database between tests.
    admin_password = os.urandom(8).hex()
    with paths.acl_file.open("a") as acl:
        acl.write(f"user admin on #{hashlib.sha256(admin_password.encode()).hexdigest()} ~* &* +@all\n")
    proc = subprocess.Popen([local.find_redis_server(), str(paths.redis_conf)])
    target = RedisTarget("127.0.0.1", port, "piblade", paths.password_file)
    admin = redis.Redis(host="127.0.0.1", port=port, username="admin", password=admin_password)
    deadline = time.monotonic() + 20
    while True:
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield RedisServer(target, admin, proc, paths)
    admin.close()  # left to the garbage collector, its socket is a ResourceWarning at the end of the session
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A clean database for each test, connected as piblade's own (non-admin) user."""
    redis_server.admin.flushdb()
    client = connect(redis_server.target)
    yield client
    client.close()


def worker_env(server: RedisServer, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIBLADE_REDIS_URL=server.target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(server.target.password_file),
        PIBLADE_JOB_MODULES=TEST_JOBS,
        PIBLADE_STATE_DIR=str(state),
        # One Numba cache for the session: each pool compiling every kernel afresh
        # cost ~20 s of CPU, on the same two cores as the test's own deadlines.
        NUMBA_CACHE_DIR=str(server.paths.root.parent / "numba-cache"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


@dataclass
class WorkerPool:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def stop(self) -> None:
        """Stop the supervisor as systemd would (SIGTERM), and fail if any worker outlives it.

        The pool runs in its own session, so its process group holds every
        worker it forked. A straggler would take jobs from later tests (on the
        same Redis) with the wrong registry and data directory.
        """
        slow = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                slow = True
                self.proc.kill()
                self.proc.wait()
        left = self.reap_group(timeout=10)
        assert not slow, f"the worker supervisor ignored SIGTERM for 30 s; log: {self.log}"
        assert not left, f"worker processes {left} outlived their supervisor; log: {self.log}"

    def reap_group(self, timeout: float) -> list[int]:
        """Wait for the pool's processes to exit; SIGKILL and return those that did not."""
        left = wait_for_group_to_exit(self.proc.pid, timeout)
        if left:
            os.killpg(self.proc.pid, signal.SIGKILL)
        return left


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for_group_to_exit(pgid: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


_started_pools: list[WorkerPool] = []


@pytest.fixture(autouse=True)
def _stop_every_pool() -> Iterator[None]:
    """Stop the pools a test started, also when it failed before its own cleanup.

    A pool left running takes the next tests' jobs from the shared Redis.
    """
    yield
    errors = []
    while _started_pools:
        try:
            _started_pools.pop().stop()
        except AssertionError as exc:  # stop the others first, then report
            errors.append(str(exc))
    assert not errors, "; ".join(errors)


def start_workers(
    server: RedisServer, tmp: Path, processes: int = 2, node: str = "testnode", queues: str = "default",
    env: dict[str, str] | None = None,
) -> WorkerPool:
    from rq.worker import BaseWorker

    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / f"workers-{node}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piblade", "worker", "--processes", str(processes), "--queues", queues,
             "--data-dir", str(data), "--node", node],
            env={**worker_env(server, tmp / "state"), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pool = WorkerPool(proc, data, log)
    _started_pools.append(pool)
    client = connect(server.target)
    deadline = time.monotonic() + 120
    try:
        # Count this pool's own workers: a pool killed earlier stays registered for a while.
        while sum(w.name.startswith(f"{node}.") for w in BaseWorker.all(connection=client)) < processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                pool.stop()
                pytest.fail(f"workers did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
    finally:
        client.close()
    return pool


@pytest.fixture
def workers(redis_server: RedisServer, conn: redis.Redis, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = start_workers(redis_server, tmp_path)
    yield pool
    pool.stop()


@dataclass
class PostgresServer:
    """A real PostgreSQL made like the local cluster's: initdb with scram-sha-256 and a 0600 --pwfile."""

    server: pgserver.PgServer
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> ResultsTarget:
        return ResultsTarget("127.0.0.1", self.port, password_file=self.server.password_file)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.server.argv(self.port, fsync=False), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                resultsdb.connect(self.target, timeout=2, migrate_schema=False).close()
                return
            except resultsdb.ResultsUnavailable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown (clients are cut off), as when the results node's PostgreSQL restarts."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(pgserver.STOP_SIGNAL)
            self.proc.wait(timeout=60)
        self.proc = None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    root = tmp_path_factory.mktemp("postgres")
    server = pgserver.PgServer(root / "postgres", root / "secrets" / "postgres.password")
    server.initdb(sync=False)
    pg = PostgresServer(server, local.free_port(), root / "postgres.log")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def results(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The server with an empty ``piblade`` database (no schema yet), running."""
    if postgres_server.proc is None or postgres_server.proc.poll() is not None:
        postgres_server.start()  # a test that stopped it failed before starting it again
    with resultsdb.connect(postgres_server.target, migrate_schema=False) as db:
        db.execute("DROP SCHEMA public CASCADE")
        db.execute("CREATE SCHEMA public")
        db.commit()
    yield postgres_server


@pytest.fixture(scope="module")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    """A real smbd on loopback for one test module (modules with their own share setup define their own)."""
    try:
        server = start_smbd(tmp_path_factory.mktemp("smbd"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def share(smbd: SambaServer) -> Iterator[SmbShare]:
    """An open session on an empty share."""
    for child in smbd.share_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    with SmbShare(smbd.target()) as opened:
        yield opened
