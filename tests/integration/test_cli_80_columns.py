"""`piblade status` and `piblade jobs list` in an 80-column terminal: nothing cut, nothing wrapped to column 0.

The real CLI in a subprocess with COLUMNS=80, against a real redis-server holding
heartbeats written as agents write them. Before, the status table cut
"throttling" and the role column ("contr…"), and jobs list wrapped parameter
help back to column 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from piblade import healthstore
from tests.integration.conftest import RedisServer
from tests.integration.dashboard_procs import dashboard_env
from tests.integration.test_dashboard_app import fake_sample


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "piblade", *args], env={**env, "COLUMNS": "80"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def test_status_fits_80_columns(redis_server: RedisServer, conn: redis.Redis, tmp_path: Path) -> None:
    healthstore.publish(conn, "pi-controller", fake_sample("pi-controller", role="controller,workers"),
                        interval=30, role="controller,workers")
    healthstore.publish(conn, "pi-nas-01", fake_sample("pi-nas-01", throttled=0x50005, temp=81.2, role="nas,workers"),
                        interval=30, role="nas,workers", pause="under-voltage")
    out = _run(dashboard_env(redis_server.target, tmp_path / "state"), "status")
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    assert "…" not in out, out
    header = next(line for line in lines if line.startswith("node "))
    assert header.split() == ["node", "role", "state", "temp", "throttling", "cpu", "mem", "disk", "jobs"], out
    text = " ".join(out.split())
    for word in ("pi-controller", "controller,", "workers", "pi-nas-01", "under-voltage,", "throttled", "81.2°C"):
        assert word in text, (word, out)
    assert "paused: pi-nas-01 (under-voltage)" in out


def test_jobs_list_wraps_under_its_own_text(tmp_path: Path) -> None:
    from piblade.registry import load_registry

    names = {spec.name for spec in load_registry()}
    out = _run(dashboard_env_free(tmp_path), "jobs", "list")
    lines = [line.rstrip() for line in out.splitlines()]
    assert all(len(line) <= 80 for line in lines), out
    for line in lines:
        if not line.startswith(" "):
            assert line.split(" ")[0] in names, f"wrapped back to column 0: {line!r}"
    # A parameter's help that wraps continues under the help, not under the parameter name.
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("op:"))
    assert lines[at + 1].startswith(" " * 8) and "what to do with it" in " ".join(lines[at:at + 2]), out


def dashboard_env_free(tmp_path: Path) -> dict[str, str]:
    import os

    from tests.integration.conftest import ROOT

    return {**os.environ, "PIBLADE_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
