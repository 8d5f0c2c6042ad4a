"""Twenty nodes: provisioning, fan-out and the dashboard by node count (3, 10, 20), piblade beside Ansible.

For each size N (a NAS node and N-1 workers under systemd-nspawn, one worker process
each, this machine as the controller), in one run:

1. fresh nodes: ``piblade provision`` without the venv (``--tags`` every role but
   ``services``), the first run the issue's target speaks of;
2. fresh nodes again: ``ansible-playbook ansible/site.yml --skip-tags services``, the
   same roles (ansible/ansible.cfg: pipelining, forks = 20);
3. on those nodes, the rest: the venv is installed once (``piblade provision --limit
   tb-w1 --tags venv``) and copied into the other nodes' filesystems from this side,
   so N nodes do not each spend ≈ 20 s of the two shared cores in ``pip install``
   (the part left out of the first run above); then a full ``piblade provision``
   starts the agents and workers;
4. once every worker has registered and the nodes have gone quiet (under 2 % of a core
   each, so the re-runs do not compete with workers still starting): the no-change re-run,
   ``piblade provision`` (median of 3) and ``ansible-playbook`` (both must change
   nothing: the e2e tests check that Ansible finds nothing to change after piblade),
   with the CPU seconds each re-run used: piblade's process, each node's sshd (the
   logins, sudo and scripts the run causes; its cgroup), the nodes in all and the whole
   machine (/proc/stat), so "wall >= CPU used / cores" can be read off;
5. a Mandelbrot fan-out on those workers (1 warm-up, median of 3): tiles per second;
6. at 20 nodes, while the cluster stays up: ``piblade status`` (whole process),
   ``/metrics``, the dashboard page and ``/api/nodes`` (median of 20 requests), the
   live stream's bytes per minute with and without gzip (clients as in bench/sse.py,
   during a fan-out), and the disk the testbed uses (image, each node's overlay).

Usage (root, under the testbed lock, outside `make test`; ≈ 20 min on 2 cores):
    flock /tmp/piblade-testbed.lock .venv/bin/python bench/scale.py [--sizes 3,10,20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from provision import (
    NO_VENV_TAGS,
    ansible_playbook,
    ansible_playbook_command,
    piblade_provision,
    timed,
    wait_until_settled,
)
from sse import count_stream

from piblade.testbed import Testbed
from piblade.testbed.inventory_file import HEADER
from piblade.testbed.system import CGROUP_TOP, cgroup_hierarchies

ROOT = Path(__file__).resolve().parents[1]
FANOUT = {"width": 3200, "height": 2000, "max_iter": 1000, "tiles": 128}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_process_each(inventory: Path) -> None:
    """Pin one worker process per node at every size, so the sizes compare (the testbed pins it past the cores)."""
    tree = yaml.safe_load(inventory.read_text())
    tree["all"]["vars"]["piblade_worker_processes"] = 1
    inventory.write_text(HEADER + yaml.safe_dump(tree, sort_keys=False, default_flow_style=False))


#: Where a node's sshd runs, under its cgroup: the logins, sudo and scripts a provisioning run causes.
SSH_CGROUP = Path("payload/system.slice/ssh.service")


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds used so far: the whole machine (/proc/stat), each testbed node (its cgroup, and the
    part of it under sshd), and this process's children.

    Taken before and after a re-run, the difference says whether two shared cores are the
    limit: the wall time cannot be below (piblade's process + the nodes' sshd work) / cores.
    The rest of the nodes' CPU (their agents and workers) and of the machine's (other work
    on the same cores) is what the re-run competed with.
    """

    machine: float
    children: float
    #: (node, all of its CPU, its sshd's part)
    nodes_each: tuple[tuple[str, float, float], ...] = ()

    @classmethod
    def now(cls) -> CpuUse:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        tops = [h / CGROUP_TOP for h in cgroup_hierarchies() if (h / CGROUP_TOP / "cpu.stat").exists()]  # cgroup2
        nodes = sorted(p for top in tops[:1] for p in top.iterdir() if (p / "cpu.stat").exists())
        each = [(node.name, _usage(node / "cpu.stat"), _usage(node / SSH_CGROUP / "cpu.stat")) for node in nodes]
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(busy, used.ru_utime + used.ru_stime, tuple(each))

    @property
    def nodes(self) -> float:
        return sum(all_ for _, all_, _ in self.nodes_each)

    @property
    def ssh(self) -> float:
        return sum(ssh for _, _, ssh in self.nodes_each)

    def minus(self, before: CpuUse) -> CpuUse:
        was = {n: (a, s) for n, a, s in before.nodes_each}
        return CpuUse(self.machine - before.machine, self.children - before.children,
                      tuple((n, a - was.get(n, (0.0, 0.0))[0], s - was.get(n, (0.0, 0.0))[1])
                            for n, a, s in self.nodes_each))

    def as_dict(self) -> dict[str, Any]:
        ssh = {n: s for n, _, s in self.nodes_each}
        workers = [v for n, v in ssh.items() if n != "tb-nas"]
        return {"machine": self.machine, "piblade": self.children, "nodes": self.nodes, "ssh": self.ssh,
                "nas_ssh": ssh.get("tb-nas", 0.0), "worker_ssh_median": statistics.median(workers) if workers else 0.0}


def _usage(stat: Path) -> float:
    try:
        text = stat.read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def wait_until_quiet(nodes: int, timeout: float = 180.0) -> tuple[float, float]:
    """(seconds waited, the nodes' CPU in cores) once the nodes use under 2 % of a core each over 3 s.

    Registered workers can still be busy starting (imports, Numba's cache): a re-run measured
    then competes with them. After ``timeout`` the re-runs go ahead, and the figure says so.
    """
    started = time.perf_counter()
    while True:
        before = CpuUse.now()
        time.sleep(3.0)
        rate = CpuUse.now().minus(before).nodes / 3.0
        if rate < 0.02 * nodes or time.perf_counter() - started > timeout:
            return time.perf_counter() - started, rate


def fresh(testbed: Testbed, nodes: int) -> Path:
    log(f"testbed up: {nodes} nodes")
    info = testbed.up(workers=nodes - 1)
    log(f"testbed up in {testbed.timings['up']:.1f} s")
    one_process_each(Path(info.inventory))
    return Path(info.inventory)


def changed(report: dict[str, Any]) -> int:
    return sum(h["changed"] for h in report["hosts"])


def seed_venv(testbed: Testbed, inventory: Path) -> float:
    """Install the venv on tb-w1 only, then copy it into every other node's root from this side."""
    started = time.perf_counter()
    piblade_provision(inventory, "--limit", "tb-w1", "--tags", "venv")
    roots = {n.name: testbed.root / "nodes" / n.name / "root" for n in testbed.info().nodes}
    source = roots.pop("tb-w1") / "opt" / "piblade"
    for root in roots.values():
        subprocess.run(["cp", "-a", str(source), str(root / "opt")], check=True)
    return time.perf_counter() - started


def fanout(inventory: Path) -> float:
    """Seconds for one Mandelbrot fan-out, enqueue to assembled image, as the run reports them."""
    argv = [sys.executable, "-m", "piblade", "submit", "mandelbrot", "-i", str(inventory), "--wait", "--json",
            *(a for k, v in FANOUT.items() for a in ("-p", f"{k}={v}"))]
    seconds, run = timed(argv)
    if run.returncode:
        raise SystemExit(f"the fan-out failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    report = json.loads(run.stdout)
    return float(report.get("seconds") or seconds)


def median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def get(port: int, path: str, token: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


def dashboard_figures(inventory: Path, minutes: float) -> dict[str, float]:
    """Status, /metrics, the page and /api/nodes with 20 nodes, and the live stream's bytes per minute."""
    env = {**os.environ, "PIBLADE_INVENTORY": str(inventory)}
    out: dict[str, float] = {}
    status = []
    for _ in range(5):
        seconds, run = timed([sys.executable, "-m", "piblade", "status", "--json"], env=env)
        if run.returncode not in (0, 1):  # 1: a node needs attention, still a full answer
            raise SystemExit(f"piblade status failed:\n{run.stderr[-2000:]}")
        status.append(seconds)
    out["status_s"] = statistics.median(status)
    with tempfile.TemporaryDirectory() as tmp:
        port = 18470
        dash = subprocess.Popen([sys.executable, "-m", "piblade", "dashboard", "--port", str(port)], env=env,
                                stdout=open(Path(tmp) / "out", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        try:
            token = ""
            for _ in range(300):
                show = subprocess.run([sys.executable, "-m", "piblade", "dashboard", "--show-token"], env=env,
                                      capture_output=True, text=True)
                token = show.stdout.strip()
                try:
                    if token and get(port, "/healthz", token):
                        break
                except (OSError, SystemExit):
                    pass
                time.sleep(0.2)
            out["metrics_ms"] = median_ms(lambda: get(port, "/metrics", token), 20)
            out["page_ms"] = median_ms(lambda: get(port, "/", token), 20)
            out["api_nodes_ms"] = median_ms(lambda: get(port, "/api/nodes", token), 20)
            out["metrics_bytes"] = len(get(port, "/metrics", token))
            counts = {k: {"bytes": 0, "connections": 0} for k in ("gzip", "identity")}
            until = time.monotonic() + minutes * 60
            readers = [threading.Thread(target=count_stream, args=(f"http://127.0.0.1:{port}/events", token, k,
                                                                   until, counts[k])) for k in counts]
            for reader in readers:
                reader.start()
            fanouts = 0
            while time.monotonic() < until - 30:  # tasks in progress during the window, as in bench/sse.py
                fanout(inventory)
                fanouts += 1
            for reader in readers:
                reader.join()
            out["sse_gzip_b_per_min"] = counts["gzip"]["bytes"] / minutes
            out["sse_identity_b_per_min"] = counts["identity"]["bytes"] / minutes
            out["sse_fanouts"] = fanouts
        finally:
            dash.terminate()
            dash.wait(30)
    return out


def disk(testbed: Testbed) -> dict[str, float]:
    def mib(*paths: Path) -> float:
        run = subprocess.run(["du", "-sxc", "--block-size=1M", *map(str, paths)], capture_output=True, text=True,
                             check=True)
        return float(run.stdout.strip().splitlines()[-1].split()[0])

    uppers = sorted((testbed.root / "nodes").glob("*/upper"))
    per_node = [mib(u) for u in uppers]
    return {"image_mib": mib(*testbed.root.glob("image-*")), "overlays_mib": sum(per_node),
            "overlay_max_mib": max(per_node), "overlay_min_mib": min(per_node), "nodes": len(uppers)}


def measure(testbed: Testbed, nodes: int, ansible: str, minutes: float) -> dict[str, Any]:
    r: dict[str, Any] = {"nodes": nodes}
    inventory = fresh(testbed, nodes)
    r["up_s"] = testbed.timings["up"]
    log("piblade provision, first run without the venv")
    r["piblade_first"], report = piblade_provision(inventory, "--tags", NO_VENV_TAGS)
    r["piblade_first_changed"] = changed(report)
    testbed.down()
    inventory = fresh(testbed, nodes)
    log("ansible-playbook, first run without the venv")
    r["ansible_first"], r["ansible_first_changed"] = ansible_playbook(ansible, inventory, "--skip-tags", "services")
    log("the venv on tb-w1, copied to the others")
    r["seed_s"] = seed_venv(testbed, inventory)
    log("piblade provision, the rest (services)")
    r["piblade_full"], report = piblade_provision(inventory)
    started = time.perf_counter()
    r["settle_s"] = wait_until_settled(inventory, nodes=nodes - 1, timeout=900)
    log(f"settled after {time.perf_counter() - started:.0f} s")
    r["quiet_s"], r["nodes_cores_at_rerun"] = wait_until_quiet(nodes)
    log(f"quiet after {r['quiet_s']:.0f} s more (the nodes used {r['nodes_cores_at_rerun']:.2f} cores)")
    r["load_at_rerun"] = os.getloadavg()[0]  # other work on the same cores, just before the re-runs
    reruns, cpus = [], []
    for _ in range(3):
        before = CpuUse.now()
        seconds, report = piblade_provision(inventory)
        cpus.append(CpuUse.now().minus(before))
        assert changed(report) == 0, f"the piblade re-run changed something: {report}"
        reruns.append(seconds)
    r["piblade_reruns"] = reruns
    r["piblade_rerun"] = statistics.median(reruns)
    # The CPU of the median re-run: can two shared cores do it faster at all?
    r["rerun_cpu"] = cpus[reruns.index(r["piblade_rerun"])].as_dict()
    r["piblade_rerun_hosts_max"] = max(h.get("seconds") or 0 for h in report["hosts"])
    r["piblade_rerun_nas"] = next(h.get("seconds") or 0 for h in report["hosts"] if h["host"] == "tb-nas")
    # Where a re-run's time goes: the process's start and imports, then the slowest host.
    r["imports_s"] = statistics.median(
        timed([sys.executable, "-c", "import piblade.cli.app, piblade.provision.run"])[0] for _ in range(3))
    log("ansible-playbook, no-change re-run")
    r["ansible_rerun"], ansible_changed = ansible_playbook(ansible, inventory)
    assert ansible_changed == 0, f"the ansible-playbook re-run changed {ansible_changed}"
    log("fan-out")
    fanout(inventory)  # warm-up: the first tiles on each worker, the first image written to the share
    runs = sorted(fanout(inventory) for _ in range(3))
    r["fanout_s"] = runs[1]
    r["tiles_per_s"] = FANOUT["tiles"] / runs[1]
    if nodes == max(SIZES_RUN):
        log("status, /metrics, dashboard, live stream")
        r.update(dashboard_figures(inventory, minutes))
        r.update(disk(testbed))
    testbed.down()
    return r


SIZES_RUN: tuple[int, ...] = (3, 10, 20)


def report(results: list[dict[str, Any]]) -> None:
    load = os.getloadavg()
    print(f"\nscale: NAS + workers under systemd-nspawn, one worker process each, on {os.cpu_count()} cores; "
          f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("nodes | first run without venv: piblade, ansible, ratio | no-change re-run: piblade (median of 3), "
          "ansible, ratio | fan-out tiles/s | testbed up")
    for r in results:
        print(f"{r['nodes']:5d} | {r['piblade_first']:6.2f} s {r['ansible_first']:7.2f} s "
              f"{r['ansible_first'] / r['piblade_first']:5.1f}x | {r['piblade_rerun']:5.2f} s "
              f"{r['ansible_rerun']:7.2f} s {r['ansible_rerun'] / r['piblade_rerun']:5.1f}x | "
              f"{r['tiles_per_s']:5.1f} ({r['fanout_s']:.2f} s) | {r['up_s']:.1f} s")
    for r in results:
        print(f"  {r['nodes']} nodes: piblade re-runs {', '.join(f'{s:.2f}' for s in r['piblade_reruns'])} s "
              f"(slowest host {r['piblade_rerun_hosts_max']:.2f} s, the NAS node {r['piblade_rerun_nas']:.2f} s, start-up and imports {r['imports_s']:.2f} s); full run after the venv seed "
              f"{r['piblade_full']:.1f} s; settled {r['settle_s']:.0f} s later; venv seed {r['seed_s']:.1f} s")
    cores = os.cpu_count() or 1
    print(f"where a no-change re-run's time goes (the median re-run; CPU seconds used during it, {cores} cores):")
    for r in results:
        c = r["rerun_cpu"]
        ours = c["piblade"] + c["ssh"]
        print(f"  {r['nodes']} nodes: wall {r['piblade_rerun']:.2f} s; CPU: piblade's process {c['piblade']:.2f} + "
              f"the nodes' sshd, sudo and scripts {c['ssh']:.2f} (NAS {c['nas_ssh']:.3f}, a worker "
              f"{c['worker_ssh_median']:.3f}) = {ours:.2f} s, so >= {ours / cores:.2f} s on {cores} cores; the nodes' "
              f"services used {max(c['nodes'] - c['ssh'], 0):.2f} more, other work on the machine "
              f"{max(c['machine'] - ours - (c['nodes'] - c['ssh']), 0):.2f} (machine busy {c['machine']:.2f} CPU-s, "
              f">= {c['machine'] / cores:.2f} s); load average {r['load_at_rerun']:.1f}; quiet "
              f"{r['quiet_s']:.0f} s after settling ({r['nodes_cores_at_rerun']:.2f} cores)")
    if len(results) > 1:
        a, b = results[0], results[-1]
        grow = b["nodes"] / a["nodes"]
        print(f"growth {a['nodes']} -> {b['nodes']} nodes ({grow:.1f}x the nodes): piblade first run "
              f"{b['piblade_first'] / a['piblade_first']:.2f}x, ansible first run "
              f"{b['ansible_first'] / a['ansible_first']:.2f}x; piblade re-run "
              f"{b['piblade_rerun'] / a['piblade_rerun']:.2f}x, ansible re-run "
              f"{b['ansible_rerun'] / a['ansible_rerun']:.2f}x")
    last = results[-1]
    if "status_s" in last:
        print(f"{last['nodes']} nodes: `piblade status` {last['status_s']:.2f} s (median of 5, whole process); "
              f"/metrics {last['metrics_ms']:.1f} ms ({last['metrics_bytes']} B); page {last['page_ms']:.1f} ms; "
              f"/api/nodes {last['api_nodes_ms']:.1f} ms (medians of 20)")
        print(f"live stream during {last['sse_fanouts']} fan-outs: {last['sse_gzip_b_per_min']:,.0f} B/min with "
              f"gzip, {last['sse_identity_b_per_min']:,.0f} B/min without")
        print(f"disk: image {last['image_mib']:.0f} MiB (shared by all nodes), overlays {last['overlays_mib']:.0f} MiB "
              f"for {last['nodes']} provisioned nodes ({last['overlay_min_mib']:.0f}–{last['overlay_max_mib']:.0f} "
              "MiB each, mostly the venv)")


def main() -> None:
    global SIZES_RUN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,10,20", help="node counts, NAS included (each 2..21)")
    parser.add_argument("--minutes", type=float, default=2.0, help="the live stream's window at the largest size")
    args = parser.parse_args()
    SIZES_RUN = tuple(sorted(int(s) for s in args.sizes.split(",")))
    ansible = ansible_playbook_command()
    if ansible is None:
        raise SystemExit("ansible-playbook is not installed (make install-test)")
    testbed = Testbed(inventory=ROOT / "inventory" / "testbed.yml")
    results = []
    try:
        for nodes in SIZES_RUN:
            results.append(measure(testbed, nodes, ansible, args.minutes))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        testbed.down()
    report(results)


if __name__ == "__main__":
    main()
