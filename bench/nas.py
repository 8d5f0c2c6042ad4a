"""NAS transfers: piblade's SMB client vs Samba's own `smbclient` CLI, same loopback smbd, same run.

A throwaway smbd configured from piblade's provisioning template (SMB3, no
guest, `server smb encrypt = desired`) serves a share on a free loopback port.

* one 256 MiB file up and down: `piblade nas put/get` vs `smbclient -c put/get` with
  `--client-protection=encrypt` (both encrypted, as piblade requires by default). Both are
  timed with the same clock: time.perf_counter() around the client's whole process (start,
  session setup, transfer, close, exit), nothing taken from a client's own report; the
  process's CPU time (user + sys, from os.wait4's rusage) is reported too, per GiB moved, as
  it depends much less on what else the machine is doing. Each phase (connect only, put, get)
  starts with one untimed run of each client, then alternates them A B B A ... REPEAT (>= 5)
  times each; before every run the script runs `sync` and sleeps SETTLE seconds, so the
  server's writeback of the previous upload does not land on the next transfer. Medians,
  min-max and ratios are printed, for the whole process and for the transfer alone: the
  median whole-process time minus the median time of the same client connecting, doing
  one small request (disk usage) and exiting.
* 1,000 files of 4 KiB up and down (skipped with --large-only; only these with --small-only):
  piblade in process and as the `piblade nas` CLI vs `smbclient` `mput`/`mget`: wall time, the
  client's CPU and smbd's CPU meanwhile (from /proc: what each client costs the server), the
  runs interleaved as above, with the ratios of both to smbclient; the copies are checked.

Files and the share live on tmpfs (/dev/shm) when there is one, so the disk does not set the
pace; for the same reason the page cache is not dropped between runs (there is no file data
to drop on tmpfs, only the two programs' own files, which a user's next run would find
cached too). Target: large-file throughput at least 0.8x smbclient both ways. Run as root
(smbd).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.nas import transfer
from piblade.nas.smb import SmbShare
from tests.integration.smbd import SHARE, SambaServer, start_smbd

MiB = 1 << 20
GiB = 1 << 30
BIG = 256 * MiB
SMALL_COUNT, SMALL_SIZE = 1000, 4096
REPEAT = max(5, int(os.environ.get("BENCH_NAS_REPEAT", "5")))
SETTLE = 2.0


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, the whole process
    cpu: float  # user + sys seconds of the process (all its threads)
    server: float = 0.0  # user + sys seconds smbd spent meanwhile (small files only)


def _smbd_processes(pid: int) -> dict[int, tuple[str, int]]:
    """smbd's main process and its children: pid -> (state, utime + stime + cutime + cstime in ticks)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            found[int(entry.name)] = (fields[0], sum(int(x) for x in fields[11:15]))
    return found


def smbd_cpu(pid: int, settled: set[int] | None = None) -> float:
    """CPU seconds of smbd so far: its main process, the children it has reaped and the ones still there.

    A connection's smbd child lives a moment longer than its client; its time only
    moves into the main process's cutime/cstime once it is reaped (a zombie shows
    none). With ``settled`` (the pids there before a client ran) this waits up to
    5 s until every other child is gone and reaped.
    """
    deadline = time.monotonic() + 5
    while True:
        found = _smbd_processes(pid)
        if settled is None or set(found) <= settled | {pid} or time.monotonic() > deadline:
            return sum(ticks for _, ticks in found.values()) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.01)


def settle() -> None:
    """Flush dirty pages (the server's copy of the last upload), then let the machine settle."""
    subprocess.run(["sync"], check=False)
    time.sleep(SETTLE)


def timed(args: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a client to completion; its wall time (perf_counter) and CPU time (rusage of that process)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            out.seek(0)
            raise RuntimeError(f"{args[:6]} failed ({proc.returncode}):\n{out.read().decode(errors='replace')}")
    return Run(wall, usage.ru_utime + usage.ru_stime)


def smbclient_args(server: SambaServer, auth: Path, commands: str, *, encrypt: bool = True) -> list[str]:
    args = ["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(server.port), "-A", str(auth), "-c", commands]
    if encrypt:
        args.insert(1, "--client-protection=encrypt")
    return args


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


def interleaved(cases: dict[str, Callable[[], Run]], check: Callable[[str], None] | None = None) -> dict[str, list[Run]]:
    """One untimed run of each case, then REPEAT timed rounds, the order flipping each round (A B, B A, ...)."""
    order = list(cases)
    for name in order:
        cases[name]()
    runs: dict[str, list[Run]] = {name: [] for name in order}
    for i in range(REPEAT):
        for name in (order if i % 2 == 0 else order[::-1]):
            runs[name].append(cases[name]())
            if check is not None:
                check(name)
    return runs


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def run(server: SambaServer, work: Path) -> None:
    if "--small-only" in sys.argv:
        auth = work / "smbclient.auth"
        auth.write_text(f"username = {server.user}\npassword = {server.password}\n")
        auth.chmod(0o600)
        small_files(server, auth, work)
        return
    auth = work / "smbclient.auth"
    auth.write_text(f"username = {server.user}\npassword = {server.password}\n")
    auth.chmod(0o600)
    big = work / "big.bin"
    with open(big, "wb") as fh:
        fh.writelines(os.urandom(16 * MiB) for _ in range(BIG // (16 * MiB)))
    share_dir = server.share_dir
    env = {**os.environ, **server.env()}
    with SmbShare(server.target()) as share:
        print(f"smbd {server.address}, share [{SHARE}], encrypted session: {share.encrypted}, SMB {share.dialect}")
    load_before = os.getloadavg()

    def piblade(*args: str) -> Run:
        settle()
        return timed([sys.executable, "-m", "piblade", "nas", *args, "--json"], env)

    def smb(commands: str) -> Run:
        settle()
        return timed(smbclient_args(server, auth, commands))

    def fresh_upload() -> None:
        for leftover in share_dir.glob("*big.bin*"):
            leftover.unlink()

    def fresh_download() -> None:
        for leftover in work.glob("*big.back*"):
            leftover.unlink()

    def put_piblade() -> Run:
        fresh_upload()
        return piblade("put", str(big), "big.bin")

    def put_smbclient() -> Run:
        fresh_upload()
        return smb(f"put {big} big.bin")

    def get_piblade() -> Run:
        fresh_download()
        return piblade("get", "big.bin", str(work / "big.back"))

    def get_smbclient() -> Run:
        fresh_download()
        return smb(f"get big.bin {work / 'big.back'}")

    def whole_download(name: str) -> None:
        if (work / "big.back").stat().st_size != BIG:
            raise RuntimeError(f"{name}: short download")

    runs = interleaved({"connect piblade": lambda: piblade("df"), "connect smbclient": lambda: smb("du")})
    runs |= interleaved({"put piblade": put_piblade, "put smbclient": put_smbclient})
    if (share_dir / "big.bin").read_bytes() != big.read_bytes():
        raise RuntimeError("the last upload differs from the file sent")
    runs |= interleaved({"get piblade": get_piblade, "get smbclient": get_smbclient}, whole_download)
    load_after = os.getloadavg()

    wall = {name: statistics.median(r.wall for r in rs) for name, rs in runs.items()}
    print(f"\n256 MiB file, encrypted; each client's whole process timed by the same clock; one untimed "
          f"run each, then {REPEAT} interleaved; sync + {SETTLE:.0f} s settle before each run")
    print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs")
    print(f"  {'':<18} {'MB/s median':>11} {'(min-max)':>11} {'wall s':>7} {'CPU s/GiB':>10} {'(min-max)':>11}")
    for name, rs in runs.items():
        cpu = [r.cpu for r in rs]
        if name.startswith("connect"):
            print(f"  {name:<18} {'':>11} {'':>11} {wall[name]:7.3f} {'':>10} {'':>11}  "
                  f"(CPU {statistics.median(cpu):.3f} s; wall {spread([r.wall for r in rs], '{:.3f}')})")
            continue
        rates = [BIG / r.wall / 1e6 for r in rs]
        per_gib = [c * GiB / BIG for c in cpu]
        print(f"  {name:<18} {BIG / wall[name] / 1e6:11.0f} {spread(rates):>11} {wall[name]:7.3f} "
              f"{statistics.median(per_gib):10.2f} {spread(per_gib, '{:.2f}'):>11}")
    ratios = {}
    for op in ("put", "get"):
        pairs = [s.wall / p.wall for p, s in zip(runs[f"{op} piblade"], runs[f"{op} smbclient"], strict=True)]
        ratios[op] = wall[f"{op} smbclient"] / wall[f"{op} piblade"]
        net = {c: wall[f"{op} {c}"] - wall[f"connect {c}"] for c in ("piblade", "smbclient")}
        cpu = {c: statistics.median(r.cpu for r in runs[f"{op} {c}"]) for c in ("piblade", "smbclient")}
        net_cpu = {c: (cpu[c] - statistics.median(r.cpu for r in runs[f"connect {c}"])) * GiB / BIG for c in cpu}
        print(f"  {op}: piblade/smbclient rate {ratios[op]:.2f}x whole process (per pair {min(pairs):.2f}-"
              f"{max(pairs):.2f}x); transfer alone {net['smbclient'] / net['piblade']:.2f}x "
              f"({net['piblade']:.3f} s vs {net['smbclient']:.3f} s)")
        print(f"       CPU {cpu['piblade'] / cpu['smbclient']:.1f}x smbclient's whole process; transfer alone "
              f"{net_cpu['piblade']:.2f} vs {net_cpu['smbclient']:.2f} CPU s/GiB "
              f"({net_cpu['piblade'] / net_cpu['smbclient']:.1f}x)")
    print(f"  target >= 0.8x (whole process): {'met' if min(ratios.values()) >= 0.8 else 'NOT met'}")
    if "--large-only" in sys.argv:
        return

    small_files(server, auth, work)


def small_files(server: SambaServer, auth: Path, work: Path) -> None:
    small = work / "small"
    small.mkdir()
    for i in range(SMALL_COUNT):
        (small / f"f{i:04d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    share_dir = server.share_dir
    env = {**os.environ, **server.env()}
    (work / "small.mget").mkdir(exist_ok=True)

    def fresh(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    def same(copy: Path) -> None:
        for f in small.iterdir():
            if (copy / f.name).read_bytes() != f.read_bytes():
                raise RuntimeError(f"{copy / f.name} differs from the file sent")

    smbd = server.proc.pid

    def clocked(fn: Callable[[], object]) -> Callable[[], Run]:
        """In this process: wall, this process's CPU (both threads) and smbd's CPU meanwhile."""
        def run_it() -> Run:
            served, cpu, started = smbd_cpu(smbd), time.process_time(), time.perf_counter()
            fn()
            return Run(time.perf_counter() - started, time.process_time() - cpu, smbd_cpu(smbd) - served)
        return run_it

    def process(args: list[str]) -> Callable[[], Run]:
        """A client process: its wall and CPU time (rusage) and smbd's CPU meanwhile."""
        def run_it() -> Run:
            before = set(_smbd_processes(smbd))
            served = smbd_cpu(smbd)
            ran = timed(args, env)
            return Run(ran.wall, ran.cpu, smbd_cpu(smbd, settled=before) - served)
        return run_it

    def cli(*args: str) -> list[str]:
        return [sys.executable, "-m", "piblade", "nas", *args, "--json"]

    load_before = os.getloadavg()
    with SmbShare(server.target()) as share:
        def put_in_process() -> None:
            transfer.run_put(share, transfer.plan_put(share, small, "small"), lambda _n: None)

        def get_in_process() -> None:
            transfer.run_get(share, transfer.plan_get(share, "small", work / "small.back"), lambda _n: None)

        def fresh_then(before: Callable[[], None], fn: Callable[[], Run]) -> Callable[[], Run]:
            def run_it() -> Run:
                before()
                return fn()
            return run_it

        up = lambda: fresh(share_dir / "small")
        down = lambda: fresh(work / "small.back")
        down_smbclient = lambda: fresh(work / "small.mget" / "small")
        runs = interleaved({
            "piblade put (in process)": fresh_then(up, clocked(put_in_process)),
            "piblade nas put (CLI)": fresh_then(up, process(cli("put", str(small), "small"))),
            "smbclient mput": fresh_then(up, process(smbclient_args(
                server, auth, f"prompt OFF; recurse ON; lcd {small}; mkdir small; cd small; mput *"))),
        })
        same(share_dir / "small")
        runs |= interleaved({
            "piblade get (in process)": fresh_then(down, clocked(get_in_process)),
            "piblade nas get (CLI)": fresh_then(down, process(cli("get", "small", str(work / "small.back")))),
            "smbclient mget": fresh_then(down_smbclient, process(smbclient_args(
                server, auth, f"prompt OFF; recurse ON; lcd {work / 'small.mget'}; mget small"))),
        })
        same(work / "small.back")
        if len(list((work / "small.mget" / "small").iterdir())) != SMALL_COUNT:
            raise RuntimeError("smbclient mget did not copy every file")
    load_after = os.getloadavg()

    times = {name: statistics.median(r.wall for r in rs) for name, rs in runs.items()}
    print(f"\n{SMALL_COUNT:,} files of {SMALL_SIZE // 1024} KiB, encrypted; one untimed run each, then "
          f"{REPEAT} interleaved; medians (min-max)")
    print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs")
    print(f"  {'':<26} {'wall s':>6}  {'files/s':>7} {'(min-max)':>11}  {'client CPU':>10}  {'smbd CPU':>8}  ms/file")
    for name, seconds in times.items():
        rates = [SMALL_COUNT / r.wall for r in runs[name]]
        cpu = statistics.median(r.cpu for r in runs[name]) / SMALL_COUNT * 1e3
        served = statistics.median(r.server for r in runs[name]) / SMALL_COUNT * 1e3
        print(f"  {name:<26} {seconds:6.2f}  {SMALL_COUNT / seconds:7.0f} {spread(rates):>11}  {cpu:10.2f}  {served:8.2f}")
    for op, other in (("put", "smbclient mput"), ("get", "smbclient mget")):
        print(f"  {op}: piblade/smbclient files/s {times[other] / times[f'piblade {op} (in process)']:.2f}x in "
              f"process, {times[other] / times[f'piblade nas {op} (CLI)']:.2f}x as the CLI (process start included)")


if __name__ == "__main__":
    main()
