"""ansible/: syntax check, ansible-lint (production profile), and the roles' inputs against piblade's own.

The playbooks mirror ``piblade provision``; these tests keep them in step without a node:
the constants and setting defaults in ``ansible/vars/piblade.yml`` equal piblade's, every
template piblade renders is rendered by a role, and the template variables Ansible works
out from an inventory equal ``roles.template_vars()`` for every node. The e2e test
(tests/e2e/test_ansible.py) checks the resulting node state on the testbed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from piblade.inventory import SETTINGS, load_inventory
from piblade.provision import roles
from piblade.provision.run import load_secrets

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'"
    return str(path)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", **(env or {})})


def playbook_env(**extra: str) -> dict[str, str]:
    """As the README says to run the playbook: with ansible/ansible.cfg."""
    return {"ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), **extra}


def test_site_passes_the_syntax_check() -> None:
    result = run([tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example.yml", "ansible/site.yml"],
                 env=playbook_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "playbook: ansible/site.yml" in result.stdout


def test_ansible_lint_passes_with_the_production_profile() -> None:
    result = run([tool("ansible-lint"), "--profile", "production", "--offline", "ansible/"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_constants_and_defaults_are_piblades() -> None:
    data = yaml.safe_load((ANSIBLE / "vars" / "piblade.yml").read_text())
    assert data["piblade_user"] == roles.USER
    assert data["piblade_home"] == roles.HOME
    assert data["piblade_config_dir"] == roles.CONFIG_DIR
    assert data["piblade_venv"] == roles.VENV
    assert data["piblade_wheelhouse_dir"] == roles.WHEELHOUSE
    assert tuple(data["piblade_base_packages"]) == roles.BASE_PACKAGES
    defaults = {s.name: list(s.default) if isinstance(s.default, tuple) else s.default for s in SETTINGS}
    assert data["piblade_setting_defaults"] == defaults


def test_the_roles_render_every_piblade_template_and_no_copy_of_one() -> None:
    # Node templates only: templates/controller/ is rendered by piblade itself on the controller,
    # which the controller role runs (`piblade provision --tags controller`).
    used = set()
    for path in ANSIBLE.rglob("*.yml"):
        used |= set(re.findall(r"/([\w.-]+\.j2)\b", path.read_text()))
    assert used == {p.name for p in roles.TEMPLATES.glob("*.j2")}
    assert not list(ANSIBLE.rglob("*.j2")), "render piblade's templates, do not copy them"


TRICKY = """\
all:
  vars:
    piblade_cluster_name: tricky
    piblade_health_interval: 2
    piblade_mount: /mnt/pi-blade/share
  children:
    controller:
      hosts:
        ctl:
          ansible_host: 192.168.7.1
          ansible_connection: local
          piblade_redis_port: 6400
    nas:
      hosts:
        nas.lan:
          ansible_port: 2222
          piblade_nas_path: /srv/data-1
          piblade_share: data
          piblade_nas_device: UUID=1234-ABCD
    workers:
      vars:
        piblade_queues: [high, default]
        piblade_worker_processes: 3
      children:
        gpu_workers:
          hosts:
            w1.lan:
              piblade_max_temp: 70
              piblade_numba_threads: 2
      hosts:
        nas.lan:
        w2.lan:
          ansible_host: 192.168.7.22
          piblade_mount: /data
"""

PROBE = """\
- name: Dump the template variables of every node
  hosts: all
  gather_facts: false
  vars_files: [{vars_file}]
  tasks:
    - name: Work out the template variables
      ansible.builtin.import_tasks: {tasks_file}
    - name: Dump them
      ansible.builtin.copy:
        content: "{{{{ dict(piblade_probe_keys | zip(query('ansible.builtin.vars', *piblade_probe_keys))) | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
      delegate_to: localhost
"""


@pytest.mark.parametrize("inventory", ["example", "tricky"])
def test_template_variables_are_piblades(inventory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if inventory == "example":
        path = ROOT / "inventory" / "example.yml"
    else:
        path = tmp_path / "tricky.yml"
        path.write_text(TRICKY)
    monkeypatch.setenv("PIBLADE_STATE_DIR", str(tmp_path / "state"))
    cluster = load_inventory(path)
    ctx = roles.Context(
        cluster=cluster,
        redis_url=f"redis://piblade@{cluster.controller.address}:{cluster.controller.settings.redis_port}/0",
        secrets=load_secrets(cluster),  # generated into the temporary state dir, as provisioning does
    )
    nodes = [n for n in cluster.nodes if not n.is_local]
    wanted = {n.name: roles.template_vars(n, ctx) for n in nodes}
    derived = ["piblade_nas_path_unit", "piblade_share_mount"]  # what the roles use besides the templates
    keys = sorted(next(iter(wanted.values()))) + derived
    playbook = tmp_path / "probe.yml"
    out = tmp_path / "out"
    out.mkdir()
    playbook.write_text(PROBE.format(vars_file=ANSIBLE / "vars" / "piblade.yml",
                                     tasks_file=ANSIBLE / "tasks" / "template_vars.yml", out=out))
    result = run([tool("ansible-playbook"), "-i", str(path), str(playbook), "--limit", ",".join(wanted),
                  "-e", json.dumps({"piblade_probe_keys": keys, "ansible_become": False})],
                 env=playbook_env(PIBLADE_STATE_DIR=str(tmp_path / "state")))
    assert result.returncode == 0, result.stdout + result.stderr
    got = {name: json.loads((out / f"{name}.json").read_text()) for name in wanted}
    assert {name: {k: v for k, v in found.items() if k not in derived} for name, found in got.items()} == wanted
    for node in nodes:
        assert got[node.name]["piblade_share_mount"] == node.settings.mount  # roles.workers()
        assert got[node.name]["piblade_nas_path_unit"] == roles.mount_unit_name(  # roles.nas_disk()
            cluster.nas.settings.nas_path if cluster.nas else node.settings.nas_path)
    if inventory == "tricky":  # the values that differ from the defaults made it through
        assert got["w2.lan"]["piblade_mount_unit"] == "data.mount"
        assert got["w1.lan"]["piblade_mount_unit"] == "mnt-pi\\x2dblade-share.mount"
        assert got["nas.lan"]["piblade_mount"] == "/srv/data-1"
        assert got["nas.lan"]["piblade_nas_path_unit"] == "srv-data\\x2d1.mount"
        assert got["w1.lan"]["piblade_health_interval"] == 2.0 and got["w1.lan"]["piblade_max_temp"] == 70.0
        assert got["w2.lan"]["piblade_roles"] == ["workers"] and got["nas.lan"]["piblade_roles"] == ["nas", "workers"]
        assert got["w2.lan"]["piblade_redis_url"] == "redis://piblade@192.168.7.1:6400/0"
