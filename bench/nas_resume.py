"""A 500 MB `piblade nas put` killed half way, then run again: how long the resumed put takes beside a fresh one.

Same run, same loopback smbd (piblade's provisioning template, encrypted SMB3),
the file on tmpfs. Each repeat: a fresh put of the whole file (timed), then a
put killed with SIGKILL once its resume record holds half the file, then the
same command again (timed). Both timings are whole `piblade nas put` processes.
Target: the resumed put takes about half the time of a fresh one. Run as root (smbd).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.nas.resume import BLOCK
from tests.integration.smbd import start_smbd

SIZE = 500 * 1000 * 1000
REPEAT = int(os.environ.get("BENCH_RESUME_REPEAT", "5"))


def main() -> int:
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=shm, prefix="piblade-bench-resume-") as tmp:
        work = Path(tmp)
        source = work / "big.bin"
        with open(source, "wb") as fh:
            block = os.urandom(1 << 20)
            fh.writelines(block for _ in range(SIZE // len(block)))
            fh.truncate(SIZE)
        server = start_smbd(work / "smb")
        state = work / "state"
        env = {**os.environ, **server.env(), "PIBLADE_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "piblade", "nas", "put", str(source), "big.bin", "--json"]
        fresh: list[float] = []
        resumed: list[float] = []
        kept: list[int] = []
        try:
            for _ in range(REPEAT):
                (server.share_dir / "big.bin").unlink(missing_ok=True)
                started = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                fresh.append(time.perf_counter() - started)
                (server.share_dir / "big.bin").unlink()
                proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while proc.poll() is None:
                    records = list((state / "nas-resume").glob("*.json"))
                    text = records[0].read_text() if records else ""
                    if text and len(json.loads(text)["hashes"]) * BLOCK >= SIZE // 2:
                        proc.send_signal(signal.SIGKILL)
                        break
                    time.sleep(0.002)
                proc.wait()
                started = time.perf_counter()
                out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
                resumed.append(time.perf_counter() - started)
                kept.append(json.loads(out)["resumed_bytes"])
        finally:
            server.stop()
    f, r = statistics.median(fresh), statistics.median(resumed)
    print(f"500 MB put, {REPEAT} repeats, whole process (median, min-max):")
    print(f"  fresh put          {f:.2f} s ({min(fresh):.2f}-{max(fresh):.2f})")
    print(f"  resumed after kill {r:.2f} s ({min(resumed):.2f}-{max(resumed):.2f}), "
          f"{statistics.median(kept) / 1e6:.0f} MB kept (median)")
    print(f"  ratio resumed / fresh: {r / f:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
