"""Huge inventories: `piblade inventory check` vs `ansible-inventory --list`, same files, same run.

Generates in a temp dir two ~5 MB Ansible-YAML inventories of ~86,000 hosts (each
host with `ansible_host`; workers, and some also in 40 user groups with vars):

* ``valid.yml``: a correct cluster; both tools parse it fully;
* ``broken.yml``: the same with one bad ``ansible_port`` on the last worker, so
  piblade has to read everything before it can report ``file:line: key``.

Each command runs REPEAT times (process start included); prints the medians and
piblade's speed relative to ansible-inventory (which does not validate, so it
reports no error for ``broken.yml``; it is the reference for "reading the file").
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOSTS = int(os.environ.get("HOSTS", "86000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
GROUPS = 40
BIN = Path(sys.executable).parent


def generate(path: Path, hosts: int = HOSTS, *, broken: bool = False) -> None:
    """Write an inventory of ``hosts`` workers; ``broken`` puts a bad port on the last one."""
    lines = ["all:", "  vars:", "    piblade_cluster_name: huge", "  children:",
             "    controller:", "      hosts:", "        ctl.lan:", "    workers:", "      hosts:"]
    for i in range(hosts):
        lines += [f"        w{i}.lan:", f"          ansible_host: 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"]
    if broken:
        lines.append("          ansible_port: 70000")
    for g in range(GROUPS):
        lines += [f"    rack_group_{g}:", "      vars:", f"        zone: z{g}", "      hosts:"]
        lines += [f"        w{i}.lan:" for i in range(g, hosts, GROUPS * 8)]
    path.write_text("\n".join(lines) + "\n")


def timed(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, (proc.stderr or proc.stdout).strip()[-300:]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="piblade-inv-bench-") as tmp:
        files = {name: Path(tmp) / f"{name}.yml" for name in ("valid", "broken")}
        for name, path in files.items():
            generate(path, broken=name == "broken")
            print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, {HOSTS + 1} hosts")
        env_cmds = {
            "piblade": lambda p: [sys.executable, "-m", "piblade", "inventory", "check", "-i", str(p)],
            "ansible-inventory": lambda p: [str(BIN / "ansible-inventory"), "-i", str(p), "--list"],
        }
        for name, path in files.items():
            medians = {}
            for tool, cmd in env_cmds.items():
                runs = [timed(cmd(path)) for _ in range(REPEAT)]
                medians[tool] = statistics.median(t for t, _, _ in runs)
                rc, out = runs[-1][1], runs[-1][2].splitlines()[-1:] or [""]
                print(f"  {name:6} {tool:18} median {medians[tool]:6.2f} s  exit {rc}  {out[0][:110]}")
            ratio = medians["ansible-inventory"] / medians["piblade"]
            print(f"  {name:6} piblade is {ratio:.2f}x ansible-inventory's speed")


if __name__ == "__main__":
    main()
