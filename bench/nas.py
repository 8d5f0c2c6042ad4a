"""NAS transfers: piblade's SMB client vs Samba's own `smbclient` CLI, same loopback smbd, same run.

A throwaway smbd configured from piblade's provisioning template (SMB3, no
guest, `server smb encrypt = desired`) serves a share on a free loopback port.
Measured, each the median of REPEAT runs:

* one 256 MiB file up and down: piblade's transfer code (`put`/`get` in process, session
  open) vs `smbclient -c put/get` with `--client-protection=encrypt` (both encrypted, as
  piblade requires by default), rates as each reports its own transfer time; plus
  smbprotocol's `smbclient.shutil.copyfile` (64 KiB requests) for reference;
* 1,000 files of 4 KiB up and down: piblade in process and as the `piblade nas` CLI (its
  process start included) vs `smbclient` `mput`/`mget` (process wall time).

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
REPEAT = 3


def median_of(fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(REPEAT))


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
    results: dict[str, float] = {}

    with SmbShare(server.target()) as share:
        print(f"smbd {server.address}, share [{SHARE}], encrypted session: {share.encrypted}, SMB {share.dialect}")

        def piblade_put() -> float:
            (share_dir / "big.bin").unlink(missing_ok=True)
            started = time.perf_counter()
            transfer.run_put(share, transfer.plan_put(share, big, "big.bin"), lambda _n: None)
            return BIG / (time.perf_counter() - started)

        def piblade_get() -> float:
            (work / "big.back").unlink(missing_ok=True)
            started = time.perf_counter()
            transfer.run_get(share, transfer.plan_get(share, "big.bin", work / "big.back"), lambda _n: None)
            return BIG / (time.perf_counter() - started)

        results["piblade put"] = median_of(piblade_put)
        results["piblade get"] = median_of(piblade_get)
        os.environ["PIBLADE_SMB_LEAN_WRITE"] = "0"
        results["piblade put, generic framing"] = median_of(piblade_put)
        del os.environ["PIBLADE_SMB_LEAN_WRITE"]

    results["smbclient put"] = median_of(
        lambda: smbclient_rate(smbclient(server, auth, f"put {big} big2.bin")[1]))
    results["smbclient get"] = median_of(
        lambda: smbclient_rate(smbclient(server, auth, f"get big.bin {work / 'big2.back'}")[1]))
    results.update(copyfile_rates(server, big, work))

    print(f"\n256 MiB file, encrypted (median of {REPEAT})")
    for name, rate in results.items():
        print(f"  {name:<34} {rate / 1e6:8.0f} MB/s")
    put_ratio = results["piblade put"] / results["smbclient put"]
    get_ratio = results["piblade get"] / results["smbclient get"]
    print(f"  ratio piblade/smbclient: put {put_ratio:.2f}x, get {get_ratio:.2f}x "
          f"(target >= 0.8x: {'met' if min(put_ratio, get_ratio) >= 0.8 else 'NOT met'})")

    small_files(server, auth, small, work)


def copyfile_rates(server: SambaServer, big: Path, work: Path) -> dict[str, float]:
    """smbprotocol's own high-level copy (64 KiB reads/writes), the starting point piblade improves on."""
    import smbclient as smb
    import smbclient.shutil as smb_shutil

    cache: dict[str, object] = {}
    smb.register_session("127.0.0.1", username=server.user, password=server.password, port=server.port,
                         encrypt=True, connection_cache=cache)
    unc = rf"\\127.0.0.1\{SHARE}\big3.bin"
    kw = {"port": server.port, "connection_cache": cache}
    started = time.perf_counter()
    smb_shutil.copyfile(str(big), unc, **kw)
    up = BIG / (time.perf_counter() - started)
    started = time.perf_counter()
    smb_shutil.copyfile(unc, str(work / "big3.back"), **kw)
    down = BIG / (time.perf_counter() - started)
    smb.reset_connection_cache(connection_cache=cache)
    return {"smbprotocol copyfile put (64 KiB)": up, "smbprotocol copyfile get (64 KiB)": down}


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
