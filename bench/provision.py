"""Provisioning wall time on the nspawn testbed: piblade's first run and no-change re-run.

Boots a fresh testbed (NAS + 2 workers; the image is cached), times
`piblade provision` twice, and — once `ansible/site.yml` exists — resets the
testbed and times `ansible-playbook` for the same roles in the same run, printing
the ratios. The first run is timed twice: as a whole, and without the wheelhouse
install (pushing ~100 MiB of wheels and `pip install` into a fresh venv), which
is the part no tool can avoid.
Usage (root): python bench/provision.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piblade.testbed import Testbed  # noqa: E402


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - started, run


def piblade_provision(inventory: Path, *extra: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    seconds, run = timed([sys.executable, "-m", "piblade", "provision", "-i", str(inventory), "--json", *extra])
    if not run.stdout:
        raise SystemExit(run.stderr)
    report = json.loads(run.stdout)
    if run.returncode:
        raise SystemExit(f"provision failed:\n{run.stdout}\n{run.stderr}")
    return seconds, report


def main() -> None:
    testbed = Testbed()
    results: dict[str, float] = {}
    try:
        info = testbed.up(workers=2)
        inventory = Path(info.inventory)
        # Warm the wheelhouse cache (built once per source version; not part of provisioning a node).
        piblade_provision(inventory, "--check")
        results["first"], report = piblade_provision(inventory)
        results["rerun"], report2 = piblade_provision(inventory)
        assert sum(h["changed"] for h in report2["hosts"]) == 0, report2
        results["rerun_check"], _ = piblade_provision(inventory, "--check")
        testbed.down()
        info = testbed.up(workers=2)
        results["first_no_venv"], _ = piblade_provision(inventory, "--tags", "common,nas,samba,workers,mount,controller")
        if (ROOT / "ansible" / "site.yml").exists() and shutil.which("ansible-playbook"):
            testbed.down()
            info = testbed.up(workers=2)
            results["ansible_first"], run = timed(["ansible-playbook", "-i", str(inventory), "ansible/site.yml"])
            results["ansible_rerun"], run = timed(["ansible-playbook", "-i", str(inventory), "ansible/site.yml"])
    finally:
        testbed.down()

    print("testbed: NAS + 2 workers (systemd-nspawn) + this machine as controller")
    print(f"piblade provision, first run:                 {results['first']:6.2f} s")
    print(f"piblade provision, first run without venv:    {results['first_no_venv']:6.2f} s")
    print(f"piblade provision, no-change re-run:          {results['rerun']:6.2f} s (target < 1 s)")
    print(f"piblade provision --check, no changes:        {results['rerun_check']:6.2f} s")
    if "ansible_first" in results:
        print(f"ansible-playbook, first run:                  {results['ansible_first']:6.2f} s "
              f"({results['ansible_first'] / results['first']:.1f}x piblade)")
        print(f"ansible-playbook, no-change re-run:           {results['ansible_rerun']:6.2f} s "
              f"({results['ansible_rerun'] / results['rerun']:.1f}x piblade)")
    else:
        print("ansible-playbook: not measured (ansible/site.yml is issue 6)")


if __name__ == "__main__":
    main()
