"""Interrupted `piblade nas put/get` resume, against a real smbd, with the real CLI killed for real.

The source files live on /dev/shm (tmpfs) so the local disk does not set the pace;
each copy is stopped once its resume record says at least one block arrived.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piblade.nas.resume import BLOCK
from piblade.nas.transfer import sha256_local as sha
from tests.integration.conftest import ROOT
from tests.integration.smbd import SambaServer, start_smbd

pytestmark = pytest.mark.integration
SIZE = 24 * BLOCK + 12345  # 384 MiB and a bit: many blocks, and a last one that is not full


@pytest.fixture(scope="module")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    server = start_smbd(tmp_path_factory.mktemp("smb-resume"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    shm = Path("/dev/shm")
    folder = Path(tmp_path_factory.mktemp("resume-src")) if not shm.is_dir() else shm / f"piblade-resume-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    path = folder / "big.bin"
    with open(path, "wb") as fh:
        fh.writelines(hashlib.sha256(str(i).encode()).digest() * (1 << 15) for i in range(SIZE // (1 << 20) + 1))
        fh.truncate(SIZE)
    yield path
    path.unlink(missing_ok=True)
    if folder.parent == shm:
        folder.rmdir()


class Nas:
    def __init__(self, smbd: SambaServer, state: Path) -> None:
        self.state = state
        self.env = {**os.environ, **smbd.env(), "PIBLADE_STATE_DIR": str(state),
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "piblade", "nas", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=300)

    def records(self) -> list[Path]:
        return sorted((self.state / "nas-resume").glob("*.json"))

    def interrupt(self, sig: int, *args: str) -> subprocess.CompletedProcess[str]:
        """Start a copy, wait until its record holds a block, send ``sig``."""
        proc = subprocess.Popen(self.argv(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            recorded = [json.loads(p.read_text() or "{}").get("hashes", []) for p in self.records() if p.stat().st_size]
            if any(len(h) >= 2 for h in recorded):
                proc.send_signal(sig)
                break
            time.sleep(0.002)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the copy did not stop within 60 s of {signal.Signals(sig).name}:\n{err[-2000:]}")
        assert proc.returncode != 0, "the copy finished before it could be interrupted"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def nas(smbd: SambaServer, tmp_path: Path) -> Iterator[Nas]:
    yield Nas(smbd, tmp_path / "state")
    for leftover in smbd.share_dir.rglob("*"):
        if leftover.is_file():
            leftover.unlink()


def parts_on(smbd: SambaServer) -> list[Path]:
    return sorted(p for p in smbd.share_dir.rglob(".*.part"))


def test_a_killed_put_resumes_and_its_part_is_hidden(nas: Nas, smbd: SambaServer, big: Path) -> None:
    killed = nas.interrupt(signal.SIGKILL, "put", str(big), "data/big.bin")
    assert killed.returncode == -signal.SIGKILL
    (part,) = parts_on(smbd)
    assert part.stat().st_size >= 2 * BLOCK
    listing = json.loads(nas.run("ls", "data", "--json").stdout)
    assert listing == []  # the part is not a file of the share
    again = nas.run("put", str(big), "data/big.bin", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["resumed_bytes"] >= 2 * BLOCK and report["resumed_bytes"] % BLOCK == 0
    assert report["bytes"] == SIZE - report["resumed_bytes"]
    assert sha(smbd.share_dir / "data" / "big.bin") == sha(big)
    assert parts_on(smbd) == [] and nas.records() == []


def test_sigterm_stops_a_put_as_ctrl_c_does_and_it_resumes(nas: Nas, smbd: SambaServer, big: Path) -> None:
    stopped = nas.interrupt(signal.SIGTERM, "put", str(big), "data/big.bin")
    assert stopped.returncode == 130
    assert "run the same command again to resume" in stopped.stderr
    assert len(parts_on(smbd)) == 1 and len(nas.records()) == 1
    again = nas.run("put", str(big), "data/big.bin")
    assert again.returncode == 0, again.stderr
    assert "kept from an interrupted copy" in again.stdout
    assert sha(smbd.share_dir / "data" / "big.bin") == sha(big)


def test_a_part_whose_writer_is_alive_is_left_alone(nas: Nas, smbd: SambaServer, big: Path) -> None:
    nas.interrupt(signal.SIGKILL, "put", str(big), "data/big.bin")
    (part,) = parts_on(smbd)
    before = sha(part)
    (record,) = nas.records()
    with open(record.with_suffix(".lock"), "ab") as held:  # its writer is still running, as far as anyone knows
        fcntl.flock(held, fcntl.LOCK_EX)
        again = nas.run("put", str(big), "data/big.bin", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed_bytes"] == 0
        assert sha(part) == before  # not taken over, not removed
    assert sha(smbd.share_dir / "data" / "big.bin") == sha(big)


def test_a_part_that_does_not_check_out_is_sent_again(nas: Nas, smbd: SambaServer, big: Path) -> None:
    nas.interrupt(signal.SIGKILL, "put", str(big), "data/big.bin")
    (part,) = parts_on(smbd)
    hashes = json.loads(nas.records()[0].read_text())["hashes"]
    with open(part, "r+b") as fh:  # the server's copy of the last recorded block changed under us
        fh.seek(len(hashes) * BLOCK - 100)
        fh.write(b"\xff" * 10)
    again = nas.run("put", str(big), "data/big.bin", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_bytes"] == 0
    assert sha(smbd.share_dir / "data" / "big.bin") == sha(big)


def test_a_killed_get_resumes(nas: Nas, smbd: SambaServer, big: Path, tmp_path: Path) -> None:
    (smbd.share_dir / "data").mkdir(exist_ok=True)
    served = smbd.share_dir / "data" / "big.bin"
    served.write_bytes(big.read_bytes())
    os.chown(served, smbd.share_dir.stat().st_uid, smbd.share_dir.stat().st_gid)
    target = tmp_path / "here" / "big.bin"
    target.parent.mkdir()
    killed = nas.interrupt(signal.SIGKILL, "get", "data/big.bin", str(target))
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists() and len(list(target.parent.glob(".*.part"))) == 1
    again = nas.run("get", "data/big.bin", str(target), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_bytes"] >= 2 * BLOCK
    assert sha(target) == sha(big)
    assert list(target.parent.glob(".*.part")) == [] and nas.records() == []
