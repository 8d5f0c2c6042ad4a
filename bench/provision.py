"""Provisioning wall time on the nspawn testbed: piblade's first run and no-change re-run.

Boots a fresh testbed (NAS + 2 workers; the image is cached), times
`piblade provision` twice, and — once `ansible/site.yml` exists — resets the
testbed and times `ansible-playbook` (this venv's, with ansible/ansible.cfg) for
the same roles in the same run, printing the ratios. The first run is timed
twice: as a whole, and without the wheelhouse
install (pushing ~100 MiB of wheels and `pip install` into a fresh venv), which
is the part no tool can avoid. The no-change re-run is timed twice too: at
once, while the freshly started worker services still compile their Numba
kernels on the same two cores as the controller (on real Pis they have their
own), and again once every worker has registered in the cluster's Redis.
Usage (root): python bench/provision.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.testbed import Testbed

#: Every role but `services` (the venv, the agent and worker units), as Ansible's `--skip-tags services`.
NO_VENV_TAGS = "common,nas,disk,samba,results,postgresql,workers,mount,controller"


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    return time.perf_counter() - started, run


def ansible_playbook_command() -> str | None:
    """The ansible-playbook installed next to this Python (the test extra), else one on PATH."""
    here = Path(sys.executable).parent / "ansible-playbook"
    return str(here) if here.exists() else shutil.which("ansible-playbook")


def ansible_playbook(command: str, inventory: Path, *extra: str) -> tuple[float, int]:
    """Seconds for one run, as a user runs it (ansible/ansible.cfg), and the hosts' total changed count.

    Each run gets its own SSH ControlPath directory: no run reuses the connections of the one
    before, as piblade's runs do not either.
    """
    with tempfile.TemporaryDirectory(prefix="piblade-bench-cp-") as control:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_SSH_CONTROL_PATH_DIR": control}
        seconds, run = timed([command, "-i", str(inventory), "ansible/site.yml", *extra], env=env)
    if run.returncode:
        raise SystemExit(f"ansible-playbook failed:\n{run.stdout[-4000:]}\n{run.stderr}")
    return seconds, sum(int(n) for n in re.findall(r"\bchanged=(\d+)", run.stdout))


def piblade_provision(inventory: Path, *extra: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    seconds, run = timed([sys.executable, "-m", "piblade", "provision", "-i", str(inventory), "--json", *extra])
    if not run.stdout:
        raise SystemExit(run.stderr)
    report = json.loads(run.stdout)
    if run.returncode:
        raise SystemExit(f"provision failed:\n{run.stdout}\n{run.stderr}")
    return seconds, report


def wait_until_settled(inventory: Path, nodes: int, timeout: float = 240.0) -> float:
    """Seconds until each worker node's service has warmed up and registered with the cluster Redis."""
    from piblade.cli.common import open_redis
    from piblade.context import resolve_cluster
    from piblade.dispatch import workers_on

    started = time.perf_counter()
    conn = open_redis(resolve_cluster(inventory))
    try:
        seen, stable_since = -1, time.perf_counter()
        while time.perf_counter() - started < timeout:
            count = workers_on(conn, "default")
            if count != seen:
                seen, stable_since = count, time.perf_counter()
            elif count >= nodes and time.perf_counter() - stable_since > 3:
                return time.perf_counter() - started
            time.sleep(0.25)
    finally:
        conn.close()
    raise SystemExit(f"the workers did not settle within {timeout:.0f} s (saw {seen})")


def main() -> None:
    testbed = Testbed()
    results: dict[str, float] = {}
    try:
        info = testbed.up(workers=2)
        inventory = Path(info.inventory)
        # Warm the wheelhouse cache (built once per source version; not part of provisioning a node).
        piblade_provision(inventory, "--check")
        results["first"], _ = piblade_provision(inventory)
        results["rerun"], report2 = piblade_provision(inventory)
        assert sum(h["changed"] for h in report2["hosts"]) == 0, report2
        results["settle"] = wait_until_settled(inventory, nodes=2)
        settled = sorted(piblade_provision(inventory)[0] for _ in range(5))
        results["rerun_settled"], results["rerun_settled_max"] = settled[2], settled[-1]
        results["rerun_check"], _ = piblade_provision(inventory, "--check")
        testbed.down()
        info = testbed.up(workers=2)
        results["first_no_venv"], _ = piblade_provision(inventory, "--tags", NO_VENV_TAGS)
        command = ansible_playbook_command()
        if (ROOT / "ansible" / "site.yml").exists() and command:
            testbed.down()  # fresh nodes, and no cluster Redis: the same start as piblade's first run
            info = testbed.up(workers=2)
            results["ansible_first"], _ = ansible_playbook(command, inventory)
            results["ansible_rerun"], changed = ansible_playbook(command, inventory)
            assert changed == 0, f"ansible-playbook re-run changed {changed}"
            results["ansible_rerun_check"], _ = ansible_playbook(command, inventory, "--check")
            testbed.down()
            info = testbed.up(workers=2)
            # The first-run target leaves out the wheelhouse install: both tools without it.
            results["ansible_first_no_venv"], _ = ansible_playbook(command, inventory, "--skip-tags", "services")
    finally:
        testbed.down()

    print("testbed: NAS + 2 workers (systemd-nspawn) + this machine as controller")
    print(f"piblade provision, first run:                 {results['first']:6.2f} s")
    print(f"piblade provision, first run without venv:    {results['first_no_venv']:6.2f} s")
    print(f"piblade provision, no-change re-run at once:  {results['rerun']:6.2f} s "
          "(node services still warming up on the same cores)")
    print(f"piblade provision, no-change re-run, settled: {results['rerun_settled']:6.2f} s "
          f"(median of 5, max {results['rerun_settled_max']:.2f} s; target < 1 s; "
          f"workers registered {results['settle']:.0f} s after the re-run)")
    print(f"piblade provision --check, no changes:        {results['rerun_check']:6.2f} s")
    if "ansible_first" in results:
        print(f"ansible-playbook, first run:                  {results['ansible_first']:6.2f} s "
              f"({results['ansible_first'] / results['first']:.1f}x piblade)")
        print(f"ansible-playbook, first run without venv:     {results['ansible_first_no_venv']:6.2f} s "
              f"({results['ansible_first_no_venv'] / results['first_no_venv']:.1f}x piblade; target >= 3x)")
        print(f"ansible-playbook, no-change re-run:           {results['ansible_rerun']:6.2f} s "
              f"({results['ansible_rerun'] / results['rerun']:.1f}x piblade)")
        print(f"ansible-playbook --check, no changes:         {results['ansible_rerun_check']:6.2f} s "
              f"({results['ansible_rerun_check'] / results['rerun_check']:.1f}x piblade)")
    else:
        print("ansible-playbook: not measured (ansible/site.yml is issue 6)")


if __name__ == "__main__":
    main()
