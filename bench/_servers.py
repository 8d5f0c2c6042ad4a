"""Shared benchmark plumbing: a throwaway redis-server, worker processes or a whole local cluster on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade import local
from piblade.redisconn import RedisTarget, connect


@contextmanager
def redis_server() -> Iterator[tuple[RedisTarget, str, Path]]:
    """A redis-server configured exactly as `piblade local up` does (ACL user, AOF)."""
    tmp = Path(tempfile.mkdtemp(prefix="piblade-bench-"))
    paths = local.LocalPaths(tmp / "local")
    paths.log_dir.mkdir(parents=True)
    password = os.urandom(12).hex()
    paths.password_file.parent.mkdir(parents=True)
    paths.password_file.write_text(password)
    paths.password_file.chmod(0o600)
    port = local.free_port()
    local.write_redis_config(paths, port, password)
    proc = subprocess.Popen([local.find_redis_server(), str(paths.redis_conf)])
    target = RedisTarget("127.0.0.1", port, "piblade", paths.password_file)
    deadline = time.monotonic() + 20
    while True:
        try:
            connect(target, timeout=1).close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield target, password, tmp
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def local_cluster(prefix: str, workers: int = 2) -> Iterator[tuple[Path, dict[str, str], RedisTarget]]:
    """A throwaway `piblade local up` in a temporary state directory: that directory, the
    environment piblade commands run in against it, and its Redis. Down and deleted after."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ, PIBLADE_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    for name in ("PIBLADE_INVENTORY", "PIBLADE_REDIS_URL", "PIBLADE_RESULTS_URL"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "piblade", "local"]
    try:
        up = subprocess.run([*cli, "up", "--workers", str(workers)], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
        if up.returncode:
            raise SystemExit(f"local up failed:\n{up.stdout}{up.stderr}")
        target = local.target(local.LocalPaths(state / "local"))
        assert target is not None and target.password_file is not None
        yield state, env, target
    finally:
        subprocess.run([*cli, "down"], env=env, cwd=ROOT, capture_output=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)


def env_for(target: RedisTarget, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIBLADE_REDIS_URL=target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(target.password_file),
        PIBLADE_STATE_DIR=str(tmp / "state"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def wait_workers(conn: redis.Redis, count: int, timeout: float = 120) -> None:
    from rq.worker import BaseWorker

    deadline = time.monotonic() + timeout
    while BaseWorker.count(connection=conn) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not register")
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def plain_rq_workers(target: RedisTarget, password: str, tmp: Path, count: int) -> list[subprocess.Popen[bytes]]:
    """`rq worker` processes (RQ's default forking Worker), authenticated like piblade's."""
    env = env_for(target, tmp)
    env["RQ_REDIS_URL"] = f"redis://piblade:{password}@127.0.0.1:{target.port}/0"
    rq = str(Path(sys.executable).parent / "rq")
    return [
        subprocess.Popen([rq, "worker", "--serializer", "rq.serializers.JSONSerializer", "-q", "default"],
                         env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        for _ in range(count)
    ]


def piblade_workers(target: RedisTarget, tmp: Path, processes: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "piblade", "worker", "--processes", str(processes), "--data-dir", str(tmp / "data")],
        env=env_for(target, tmp), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
