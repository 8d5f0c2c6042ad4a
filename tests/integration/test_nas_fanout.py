"""`piblade submit image --input/--over` through a real smbd and real workers whose data dir IS the share."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from piblade import runs
from tests.integration.conftest import RedisServer, WorkerPool, worker_env
from tests.integration.smbd import SambaServer, start_smbd
from tests.unit.test_imaging import blur_reference, max_diff, sobel_reference

pytestmark = pytest.mark.integration

FILES = 24


@pytest.fixture
def nas_on_workers(workers: WorkerPool, tmp_path: Path) -> Iterator[SambaServer]:
    """smbd exporting the workers' data directory: what the workers read is what the share holds."""
    try:
        server = start_smbd(tmp_path / "smbd", share_dir=workers.data_dir)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


def make_photos(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    photos: dict[str, np.ndarray] = {}
    for i in range(FILES):
        h, w = int(rng.integers(16, 90)), int(rng.integers(16, 90))
        channels = 1 if i % 5 == 0 else 3
        img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        rel = f"{'day2/' if i % 3 == 0 else ''}img{i:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[:, :, 0] if channels == 1 else img).save(root / rel)
        photos[rel] = img
    (root / "notes.txt").write_text("not a picture")
    return photos


def submit(redis_server: RedisServer, smb_env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(redis_server, tmp_path / "controller-state")
    env = {k: v for k, v in env.items() if not k.startswith("PIBLADE_SMB_")}
    env.update(smb_env, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "piblade", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def test_submit_over_files_on_the_share_with_real_workers(
    redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool, nas_on_workers: SambaServer, tmp_path: Path
) -> None:
    photos = make_photos(tmp_path / "vacation")

    # --input uploads the directory to inputs/vacation/ and the glob is relative to it.
    proc = submit(redis_server, nas_on_workers.env(), tmp_path, "submit", "image", "--input", "vacation", "--over", "**/*.png",
                  "-p", "op=blur", "-p", "sigma=1.5", "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == "finished" and status["total"] == FILES
    assert status["params"]["over"] == "inputs/vacation/**/*.png"
    result = status["result"]
    assert result["count"] == FILES and result["ops"] == {"blur": FILES}
    assert result["pixels"] == sum(img.shape[0] * img.shape[1] for img in photos.values())
    run_dir = workers.data_dir / status["output"]
    assert status["output"] == f"runs/{status['run']}" and result["output_dir"] == status["output"]
    for rel, img in photos.items():
        out = run_dir / "inputs" / "vacation" / rel
        got = np.asarray(Image.open(out))
        got = got[:, :, None] if got.ndim == 2 else got
        assert max_diff(got, blur_reference(img, 1.5)) <= 1, rel
    assert sorted(result["outputs"]) == sorted(f"{status['output']}/inputs/vacation/{rel}" for rel in photos)
    assert (workers.data_dir / "inputs" / "vacation" / "notes.txt").exists()  # uploaded, not matched

    # Plain --over on what is already there: edges, checked exactly; the upload is not repeated.
    proc = submit(redis_server, nas_on_workers.env(), tmp_path, "submit", "image", "--over", "inputs/vacation/**/*.png",
                  "-p", "op=edges", "--wait")
    assert proc.returncode == 0, proc.stderr
    assert f"inputs/vacation/**/*.png: {FILES} file(s) on the share" in proc.stderr
    run_id = runs.recent_runs(conn, 1)[0].id
    for rel, img in photos.items():
        gray = img[:, :, 0] if img.shape[2] == 1 else np.asarray(Image.fromarray(img).convert("L"))
        got = np.asarray(Image.open(workers.data_dir / "runs" / run_id / "inputs" / "vacation" / rel))
        assert np.array_equal(got, sobel_reference(gray)), rel

    shown = submit(redis_server, nas_on_workers.env(), tmp_path, "jobs", "status", run_id)
    assert shown.returncode == 0 and f"runs/{run_id}" in shown.stdout


def test_a_job_without_a_path_is_refused_before_anything_is_queued(
    redis_server: RedisServer, conn: redis.Redis, tmp_path: Path
) -> None:
    nowhere = {"PIBLADE_SMB_SERVER": "127.0.0.1:1", "PIBLADE_SMB_PASSWORD": "unused"}  # never contacted
    proc = submit(redis_server, nowhere, tmp_path, "submit", "montecarlo-pi", "--over", "*.png")
    assert proc.returncode == 1
    assert "error: montecarlo-pi has no `path` parameter, so it cannot run --over files" in proc.stderr
    assert "image" in proc.stderr  # the hint names the jobs that can
    assert runs.recent_runs(conn) == []
    proc = submit(redis_server, nowhere, tmp_path, "submit", "image", "--over", "../*.png")
    assert proc.returncode == 1 and "climbs out with '..'" in proc.stderr
    assert runs.recent_runs(conn) == []
