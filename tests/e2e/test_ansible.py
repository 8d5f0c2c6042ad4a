"""`ansible-playbook ansible/site.yml` on the nspawn testbed reaches exactly the state `piblade provision` reaches.

Two module fixtures build what the tests share, each once, and no test reads what another
test wrote: `after_piblade` provisions fresh nodes with piblade, snapshots them and runs
ansible-playbook over them; `after_ansible` boots fresh nodes again and provisions them with
ansible-playbook only. The tests then check, each on its own: Ansible found nothing to change
after piblade; the Ansible-provisioned state equals piblade's file for file; `piblade provision
--check` finds nothing to change; a job runs on the Ansible-provisioned workers; and after
`piblade provision` a second ansible-playbook run changes nothing. A fixture that fails says
which step failed, and every test that needs it errors with that message.

The module starts from fresh, unprovisioned nodes and leaves fresh ones behind, so it does not
depend on the e2e modules before it, nor they on it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import fan_out_on_both_workers, piblade

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODES = ("tb-nas", "tb-w1", "tb-w2")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)

# What a node's provisioned state is made of: users, hostname, every file piblade manages (owner,
# group, mode, SHA-256), the venv, the Samba users, the mount, PostgreSQL's cluster, role and
# database (the password's verifier has a new salt each time: only its kind), and the services' state.
SNAPSHOT = r"""
echo "== users"; getent passwd piblade; getent group piblade; id piblade
echo "== hostname"; cat /etc/hostname; hostname; ls /etc/machine-info 2>&1
echo "== files"
for p in /etc/piblade /var/lib/piblade /opt/piblade/wheelhouse /srv/piblade /etc/samba/smb.conf /etc/fstab /etc/systemd/system \
         /etc/postgresql; do
  [ -e "$p" ] || { echo "missing $p"; continue; }
  find "$p" \( -path /var/lib/piblade/numba-cache -o -path '/srv/piblade/*' \) -prune -o -printf '%p %u:%g:%m %y ' \
    -exec sh -c '[ -f "$1" ] && sha256sum < "$1" | cut -c1-16 || echo -' _ {} \;
done | sort
echo "== NAS host key types pinned for sshfs (the keys are new with every testbed)"
cut -d' ' -f1,2 /etc/piblade/nas_known_hosts 2>&1
echo "== mount"; stat -c '%n %F %U:%G:%a' /mnt/piblade 2>&1; findmnt -n -o SOURCE,FSTYPE /mnt/piblade
echo "== venv"; find /opt/piblade/venv -maxdepth 1 -printf '%p %u:%g:%m %y\n' | sort
cat /opt/piblade/venv/.piblade-wheelhouse
/opt/piblade/venv/bin/pip freeze 2>/dev/null
find /opt/piblade/venv -not -name '*.pyc' -printf '%P %u:%g:%m\n' | sort | sha256sum
echo "== samba"; pdbedit -L 2>/dev/null
echo "== postgresql"; pg_lsclusters -h 2>&1; stat -c '%n %U:%G:%a' /srv/piblade/.postgresql /srv/piblade/.postgresql/* 2>&1
runuser -u postgres -- psql -XAtq -d postgres -c "select rolname, rolcanlogin, rolsuper, split_part(rolpassword, '$', 1)
  from pg_authid where rolname = 'piblade'" -c "select datname, pg_get_userbyid(datdba), datacl from pg_database
  where datname = 'piblade'" 2>&1
echo "== units"
for u in smbd piblade-agent piblade-worker mnt-piblade.mount systemd-timesyncd postgresql postgresql@15-main; do
  echo "$u $(systemctl is-enabled $u 2>/dev/null) $(systemctl is-active $u 2>/dev/null)"
done
"""


def provision_json(inventory: Path, *extra: str) -> dict[str, dict[str, Any]]:
    run = piblade("provision", "-i", str(inventory), "--json", *extra)
    assert run.stdout, run.stderr
    assert run.returncode == 0, run.stdout + run.stderr
    return {h["host"]: h for h in json.loads(run.stdout)["hosts"]}


def ansible_playbook(inventory: Path) -> dict[str, dict[str, Any]]:
    """Run the playbook as a user would (with ansible/ansible.cfg); the PLAY RECAP per host."""
    with tempfile.TemporaryDirectory(prefix="piblade-ansible-cp-") as control:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               # New nodes behind old addresses: never reuse an SSH master of an earlier testbed.
               "ANSIBLE_SSH_CONTROL_PATH_DIR": control}
        run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                              "ansible/site.yml"], check=False, capture_output=True, text=True, timeout=1200,
                             env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr
    recap: dict[str, dict[str, Any]] = {
        m[0]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m[1:]), strict=True))
        for m in RECAP.findall(run.stdout)
    }
    assert set(recap) == {"tb-ctl", *NODES}, run.stdout[-3000:]
    # Which tasks changed, per host: a failing comparison then says what differed.
    task = ""
    for line in run.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[6:].split("]")[0]
        elif line.startswith("changed: [") and (host := line[10:].split("]")[0].split(" ")[0]) in recap:
            recap[host].setdefault("changed_tasks", []).append(task)
    return recap


def snapshot(testbed, node: str) -> str:  # type: ignore[no-untyped-def]
    run = testbed.run(node, "sudo sh -s", input=SNAPSHOT, timeout=120)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    # The NAS host keys are new with every testbed: the key types are compared instead (above).
    return re.sub(r"^(/etc/piblade/nas_known_hosts \S+ f) \w+$", r"\1 (new keys)", text, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def fresh(testbed) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The session's testbed with fresh, unprovisioned nodes (and no cluster Redis); fresh again afterwards."""
    testbed.down()
    testbed.up(workers=2)
    yield testbed
    testbed.down()
    testbed.up(workers=2)


@pytest.fixture(scope="module")
def inventory(fresh) -> Path:  # type: ignore[no-untyped-def]
    return Path(fresh.info().inventory)


@dataclass(frozen=True)
class AfterPiblade:
    """Fresh nodes provisioned by piblade: its first report, each node's state, then Ansible's recap."""

    first: dict[str, dict[str, Any]]
    state: dict[str, str]
    ansible_recap: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class AfterAnsible:
    """Fresh nodes again, provisioned by ansible-playbook only: its recap and each node's state."""

    recap: dict[str, dict[str, Any]]
    state: dict[str, str]


@pytest.fixture(scope="module")
def after_piblade(fresh, inventory: Path) -> AfterPiblade:  # type: ignore[no-untyped-def]
    first = provision_json(inventory)
    assert all(first[n]["changed"] > 0 for n in NODES), f"piblade provision on fresh nodes changed nothing: {first}"
    state = {n: snapshot(fresh, n) for n in NODES}
    return AfterPiblade(first, state, ansible_playbook(inventory))


@pytest.fixture(scope="module")
def after_ansible(fresh, inventory: Path, after_piblade: AfterPiblade) -> AfterAnsible:  # type: ignore[no-untyped-def]
    # after_piblade first, so both node states come from the same image and testbed session.
    fresh.down()  # also stops the cluster's Redis: the controller role starts it again
    fresh.up(workers=2)
    recap = ansible_playbook(inventory)
    assert all(r["failed"] == 0 and r["changed"] > 0 for r in recap.values()), \
        f"ansible-playbook on fresh nodes: {recap}"
    return AfterAnsible(recap, {n: snapshot(fresh, n) for n in NODES})


def test_ansible_finds_nothing_to_change_after_piblade(after_piblade: AfterPiblade) -> None:
    recap = after_piblade.ansible_recap
    changed = {h: r.get("changed_tasks", []) for h, r in recap.items() if r["changed"] or r["failed"]}
    assert not changed, f"ansible-playbook changed after piblade provision: {changed}"


def test_ansible_provisions_fresh_nodes_to_exactly_piblades_state(after_piblade: AfterPiblade,
                                                                 after_ansible: AfterAnsible) -> None:
    for node in NODES:
        diff = "".join(difflib.unified_diff(after_piblade.state[node].splitlines(True),
                                            after_ansible.state[node].splitlines(True),
                                            "piblade provision", "ansible-playbook"))
        assert not diff, f"{node}:\n{diff}"


def test_piblade_check_finds_nothing_to_change_after_ansible(after_ansible: AfterAnsible, inventory: Path) -> None:
    report = provision_json(inventory, "--check")
    assert {h: r["changed"] for h, r in report.items()} == dict.fromkeys(("tb-ctl", *NODES), 0), report
    assert any("sshfs" in note for note in report["tb-w1"]["notes"])


def test_a_job_runs_on_the_ansible_provisioned_workers(fresh, after_ansible: AfterAnsible,  # type: ignore[no-untyped-def]
                                                        inventory: Path) -> None:
    fan_out_on_both_workers(fresh, inventory)


def test_ansible_changes_nothing_after_piblade_provision(after_ansible: AfterAnsible, inventory: Path) -> None:
    report = provision_json(inventory)
    assert {h: r["changed"] for h, r in report.items()} == dict.fromkeys(report, 0), report
    recap = ansible_playbook(inventory)
    assert {h: (r["changed"], r["failed"]) for h, r in recap.items()} == dict.fromkeys(recap, (0, 0)), recap
