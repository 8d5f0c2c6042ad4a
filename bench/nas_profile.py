"""Where the time of many small SMB transfers goes: cProfile of piblade's put and get in process.

A throwaway loopback smbd (as in ``bench/nas.py``), 1,000 files of 4 KiB on tmpfs,
one untimed warm-up each way, one timed run each way without the profiler, then one
profiled put and get of the whole tree (plan and copy, as `piblade nas put/get` do).
Prints wall and CPU time per file, the CPU split by where it is spent (smbprotocol's
message structures, piblade, the cipher, sockets and locks, the local files) and
the top functions by their own time. cProfile follows the calling thread only: the
receive thread's work shows as the time the caller waits. Run as root (smbd).

    sudo .venv/bin/python bench/nas_profile.py [--top N]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.nas import transfer
from piblade.nas.smb import SmbShare
from tests.integration.smbd import start_smbd

COUNT, SIZE = 1000, 4096

#: Where a function's own time is counted, by the first match in its file name.
GROUPS = (
    ("smbprotocol message structures and session", ("smbprotocol", "smbclient")),
    ("piblade", ("piblade",)),
    ("cipher (AES-GCM, cryptography)", ("cryptography",)),
    ("local files (os, io, pathlib)", ("<built-in method posix", "<method 'read' of", "<method 'write' of",
                                       "<built-in method io.open", "pathlib", "<built-in method _io")),
    ("waiting for answers (locks, events, queues, select)", ("threading", "<method 'acquire'", "SimpleQueue",
                                                             "<built-in method select")),
    ("socket", ("<method 'sendmsg'", "<method 'recv", "socket")),
)


def group_of(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    for label, needles in GROUPS:
        if any(n in where for n in needles):
            return label
    return "other Python (struct, uuid, dicts, ...)"


def plain(label: str, fn: object) -> None:
    """Wall and CPU time (both threads) of one run without the profiler."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}, no profiler: wall {wall:.2f} s ({wall / COUNT * 1e3:.2f} ms/file), "
          f"process CPU {cpu:.2f} s ({cpu / COUNT * 1e3:.2f} ms/file)")


def profile(label: str, fn: object, top: int) -> None:
    prof = cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    prof.runcall(fn)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = pstats.Stats(prof)
    groups: dict[str, float] = {}
    total = 0.0
    for key, (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        groups[group_of(key)] = groups.get(group_of(key), 0.0) + tt
        total += tt
    print(f"\n{label}: {COUNT} files of {SIZE // 1024} KiB, wall {wall:.2f} s ({wall / COUNT * 1e3:.2f} ms/file), "
          f"process CPU {cpu:.2f} s ({cpu / COUNT * 1e3:.2f} ms/file, both threads; under cProfile)")
    print(f"  calling thread's own time by where it is spent ({total:.2f} s profiled):")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<46} {seconds:6.2f} s  {seconds / COUNT * 1e3:6.3f} ms/file")
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="piblade-bench-nasprof-", dir=shm))
    server = start_smbd(work / "smbd")
    try:
        small = work / "small"
        small.mkdir()
        for i in range(COUNT):
            (small / f"f{i:04d}.bin").write_bytes(os.urandom(SIZE))
        with SmbShare(server.target()) as share:
            def put() -> None:
                shutil.rmtree(server.share_dir / "small", ignore_errors=True)
                transfer.run_put(share, transfer.plan_put(share, small, "small"), lambda _n: None)

            def get() -> None:
                shutil.rmtree(work / "back", ignore_errors=True)
                transfer.run_get(share, transfer.plan_get(share, "small", work / "back"), lambda _n: None)

            put()
            get()
            print(f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
            plain("put", put)
            plain("get", get)
            profile("put", put, top)
            profile("get", get, top)
            for f in small.iterdir():
                if (work / "back" / f.name).read_bytes() != f.read_bytes():
                    raise RuntimeError(f"{f.name} came back different")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
