"""`piblade submit` and `piblade status` against a real Redis import none of the heavy modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from piblade import runs
from tests.integration.conftest import RedisServer, worker_env
from tests.unit.test_cli_imports import HEAVY, RUN_CLI, top_level

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_cli(redis_server: RedisServer, tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp_path / "modules.txt"
    env = worker_env(redis_server, tmp_path / "state")
    env.pop("PIBLADE_JOB_MODULES")  # the bundled jobs only, as a user has them
    env.update(MODULES_OUT=str(out), COLUMNS="100")
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return done, set(out.read_text().split())


def test_submit_enqueues_without_the_heavy_modules(redis_server: RedisServer, conn: redis.Redis,
                                                    tmp_path: Path) -> None:
    done, modules = run_cli(redis_server, tmp_path, "submit", "mandelbrot", "-p", "tiles=4", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert runs.load_run(conn, run["run"]).total == 4 == conn.llen("rq:queue:default")  # really enqueued
    assert sorted(top_level(modules) & set(HEAVY)) == []
    assert sorted(top_level(modules) & {"typer", "pydantic", "click"}) == []  # parsed without Typer
    assert {"redis", "rq", "jobs.mandelbrot"} <= modules


def test_status_renders_the_cluster_without_the_heavy_modules(redis_server: RedisServer, conn: redis.Redis,
                                                              tmp_path: Path) -> None:
    done, modules = run_cli(redis_server, tmp_path, "status")
    assert done.returncode == 0, done.stderr
    assert "queues" in done.stdout
    assert sorted(top_level(modules) & set(HEAVY)) == []
    assert sorted(top_level(modules) & {"typer", "pydantic", "click"}) == []
