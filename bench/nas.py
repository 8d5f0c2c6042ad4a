"""NAS transfers: piblade's SMB client vs Samba's own `smbclient` CLI, same loopback smbd, same run.

A throwaway smbd configured from piblade's provisioning template (SMB3, no
guest, `server smb encrypt = desired`) serves a share on a free loopback port.

* one 256 MiB file up and down: `piblade nas put/get` vs `smbclient -c put/get` with
  `--client-protection=encrypt` (both encrypted, as piblade requires by default). Both are
  timed with the same clock: time.perf_counter() around the client's whole process (start,
  session setup, transfer, close), nothing taken from a client's own report. The clients
  alternate (A B A B ...) within each phase, REPEAT >= 5 times each; before every transfer
  the script runs `sync` and, as root, drops the page cache (`echo 3 > /proc/sys/vm/drop_caches`,
  skipped when not permitted), then sleeps SETTLE seconds so the server's writeback of the
  previous upload does not land on the next transfer. Medians, min-max and ratios printed.
* 1,000 files of 4 KiB up and down (skipped with --large-only): piblade in process and as the
  `piblade nas` CLI vs `smbclient` `mput`/`mget` (process wall time).

Files and the share live on tmpfs (/dev/shm) when there is one, so the disk does not set the
pace. Target: large-file throughput at least 0.8x smbclient both ways. Run as root (smbd).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.nas import transfer
from piblade.nas.smb import SmbShare
from tests.integration.smbd import SHARE, SambaServer, start_smbd

MiB = 1 << 20
BIG = 256 * MiB
SMALL_COUNT, SMALL_SIZE = 1000, 4096
REPEAT = int(os.environ.get("BENCH_NAS_REPEAT", "5"))
SMALL_REPEAT = 3
SETTLE = 2.0


def median_of(fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(SMALL_REPEAT))


def settle() -> None:
    """Flush dirty pages (the server's copy of the last upload), drop caches when root, wait."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
    time.sleep(SETTLE)


def smbclient(server: SambaServer, auth: Path, commands: str, *, encrypt: bool = True) -> tuple[float, str]:
    args = ["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(server.port), "-A", str(auth), "-c", commands]
    if encrypt:
        args.insert(1, "--client-protection=encrypt")
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, proc.stdout + proc.stderr


def smbclient_rate(output: str) -> float:
    """Bytes/s from smbclient's own "(123456.7 kb/s)" (KiB/s) report: transfer time, no process start."""
    found = re.findall(r"\(([\d.]+) (?:kb/s|KiloBytes/sec)\)", output)
    if not found:
        raise RuntimeError(f"no rate in smbclient's output:\n{output}")
    return float(found[0]) * 1024


def main() -> None:
    # On tmpfs when there is one: the disk under /tmp must not set the pace of either client.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="piblade-bench-nas-", dir=shm))
    server = start_smbd(work / "smbd")
    try:
        run(server, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(server: SambaServer, work: Path) -> None:
    auth = work / "smbclient.auth"
    auth.write_text(f"username = {server.user}\npassword = {server.password}\n")
    auth.chmod(0o600)
    big = work / "big.bin"
    with open(big, "wb") as fh:
        fh.writelines(os.urandom(16 * MiB) for _ in range(BIG // (16 * MiB)))
    small = work / "small"
    small.mkdir()
    for i in range(SMALL_COUNT):
        (small / f"f{i:04d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    share_dir = server.share_dir
    env = {**os.environ, **server.env()}
    with SmbShare(server.target()) as share:
        print(f"smbd {server.address}, share [{SHARE}], encrypted session: {share.encrypted}, SMB {share.dialect}")

    def piblade_cli(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "piblade", "nas", *args, "--json"], env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - started

    def put_piblade() -> float:
        (share_dir / "big.bin").unlink(missing_ok=True)
        settle()
        return piblade_cli("put", str(big), "big.bin")

    def put_smbclient() -> float:
        (share_dir / "big.bin").unlink(missing_ok=True)
        settle()
        return smbclient(server, auth, f"put {big} big.bin")[0]

    def get_piblade() -> float:
        (work / "big.back").unlink(missing_ok=True)
        settle()
        return piblade_cli("get", "big.bin", str(work / "big.back"))

    def get_smbclient() -> float:
        (work / "big.back").unlink(missing_ok=True)
        settle()
        return smbclient(server, auth, f"get big.bin {work / 'big.back'}")[0]

    def startup_piblade() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "piblade", "--help"], env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {k: [] for k in ("put piblade", "put smbclient", "get piblade", "get smbclient")}
    for i in range(REPEAT):  # upload phase, interleaved; the order flips each round (ABBA...)
        pair = [("put piblade", put_piblade), ("put smbclient", put_smbclient)]
        for name, fn in (pair if i % 2 == 0 else pair[::-1]):
            times[name].append(fn())
    shutil.copyfile(big, share_dir / "big.bin")
    for i in range(REPEAT):  # download phase, interleaved
        pair = [("get piblade", get_piblade), ("get smbclient", get_smbclient)]
        for name, fn in (pair if i % 2 == 0 else pair[::-1]):
            times[name].append(fn())
            if (work / "big.back").stat().st_size != BIG:
                raise RuntimeError(f"{name}: short download")
    start_s = statistics.median(startup_piblade() for _ in range(REPEAT))

    print(f"\n256 MiB file, encrypted; wall time of each client's whole process, same clock; "
          f"interleaved, median of {REPEAT} (min-max); sync + settle {SETTLE:.0f} s before each")
    for name, ts in times.items():
        rates = sorted(BIG / t / 1e6 for t in ts)
        print(f"  {name:<16} {BIG / statistics.median(ts) / 1e6:6.0f} MB/s  ({rates[0]:.0f}-{rates[-1]:.0f})  "
              f"median {statistics.median(ts):.3f} s")
    print(f"  piblade process start (--help): {start_s:.3f} s (included in its times above)")
    ratios = {}
    for op in ("put", "get"):
        r = [s / p for p, s in zip(times[f"{op} piblade"], times[f"{op} smbclient"])]
        ratios[op] = statistics.median(times[f"{op} smbclient"]) / statistics.median(times[f"{op} piblade"])
        print(f"  ratio piblade/smbclient {op}: {ratios[op]:.2f}x (per pair {min(r):.2f}-{max(r):.2f}x)")
    print(f"  target >= 0.8x: {'met' if min(ratios.values()) >= 0.8 else 'NOT met'}")
    if "--large-only" in sys.argv:
        return

    small_files(server, auth, small, work)


def small_files(server: SambaServer, auth: Path, small: Path, work: Path) -> None:
    share_dir = server.share_dir
    env = {**os.environ, **server.env()}
    times: dict[str, float] = {}

    def fresh(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    with SmbShare(server.target()) as share:
        def put_in_process() -> float:
            fresh(share_dir / "small")
            started = time.perf_counter()
            transfer.run_put(share, transfer.plan_put(share, small, "small"), lambda _n: None)
            return time.perf_counter() - started

        def get_in_process() -> float:
            fresh(work / "small.back")
            started = time.perf_counter()
            transfer.run_get(share, transfer.plan_get(share, "small", work / "small.back"), lambda _n: None)
            return time.perf_counter() - started

        times["piblade put (in process)"] = median_of(put_in_process)
        times["piblade get (in process)"] = median_of(get_in_process)

    def cli(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "piblade", "nas", *args, "--json"], env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - started

    times["piblade nas put (CLI)"] = median_of(lambda: (fresh(share_dir / "small"), cli("put", str(small), "small"))[1])
    times["piblade nas get (CLI)"] = median_of(
        lambda: (fresh(work / "small.back"), cli("get", "small", str(work / "small.back")))[1])

    times["smbclient mput"] = median_of(lambda: (fresh(share_dir / "small"), smbclient(
        server, auth, f"prompt OFF; recurse ON; lcd {small}; mkdir small; cd small; mput *")[0])[1])
    (work / "small.mget").mkdir(exist_ok=True)
    times["smbclient mget"] = median_of(lambda: (fresh(work / "small.mget" / "small"), smbclient(
        server, auth, f"prompt OFF; recurse ON; lcd {work / 'small.mget'}; mget small")[0])[1])
    assert len(list((work / "small.mget" / "small").iterdir())) == SMALL_COUNT

    print(f"\n{SMALL_COUNT:,} files of {SMALL_SIZE // 1024} KiB (median of {REPEAT})")
    for name, seconds in times.items():
        print(f"  {name:<34} {seconds:6.2f} s  {SMALL_COUNT / seconds:7.0f} files/s")
    print(f"  ratio piblade (in process)/smbclient files/s: put "
          f"{times['smbclient mput'] / times['piblade put (in process)']:.2f}x, get "
          f"{times['smbclient mget'] / times['piblade get (in process)']:.2f}x")


if __name__ == "__main__":
    main()
