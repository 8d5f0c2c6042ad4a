"""Provisioning logic without SSH: facts parsing, step decisions, scripts, role plans."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from piblade.errors import PibladeError
from piblade.inventory import parse_inventory
from piblade.provision import roles
from piblade.provision.engine import (
    HostResult,
    StepResult,
    apply_script,
    parse_apply,
    probe_script,
    probes_still_hold,
    split_probes,
)
from piblade.provision.facts import parse_facts
from piblade.provision.plan import HostPlan, host_plan
from piblade.provision.steps import (
    Change,
    ChangeKind,
    Decision,
    Directory,
    File,
    Ok,
    Packages,
    SambaUser,
    Service,
    SystemUser,
    VenvInstall,
)
from piblade.provision.wheelhouse import Wheelhouse, archive, prune

PI_FACTS = """arch=aarch64
kernel=6.6.51+rpt-rpi-2712
model=Raspberry Pi 5 Model B Rev 1.0
mem_kb=8245632
os=Debian GNU/Linux 12 (bookworm)
python=3.11
cifs=module
fuse=yes
init=systemd
virt=none
user=pi
"""

NSPAWN_FACTS = """arch=x86_64
kernel=6.18.44
model=unknown
mem_kb=24576000
os=Debian GNU/Linux 12 (bookworm)
python=3.11
cifs=no
fuse=yes
init=systemd
virt=systemd-nspawn
user=pi
"""


def test_facts_of_a_raspberry_pi() -> None:
    facts = parse_facts(PI_FACTS)
    assert facts.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert facts.wheel_platform == "aarch64"
    assert facts.mem_mib == 8052
    assert facts.cifs and facts.systemd and facts.virtualization == "none"
    assert facts.summary() == "Raspberry Pi 5 Model B Rev 1.0, aarch64, 8052 MiB, Debian GNU/Linux 12 (bookworm)"


def test_facts_of_a_testbed_node() -> None:
    facts = parse_facts(NSPAWN_FACTS)
    assert not facts.cifs and facts.fuse
    assert facts.virtualization == "systemd-nspawn"
    assert facts.summary() == "systemd-nspawn guest, x86_64, 24000 MiB, Debian GNU/Linux 12 (bookworm)"


def test_facts_script_runs_here_and_parses() -> None:
    from piblade.provision.facts import FACTS_SCRIPT

    out = subprocess.run(["sh", "-c", FACTS_SCRIPT], capture_output=True, text=True, check=True).stdout
    facts = parse_facts(out)
    assert facts.arch == subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    assert facts.mem_mib > 0
    # The one `python3 -S` call says what the full interpreter says.
    said = subprocess.run(["python3", "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert facts.python_full == said and said.startswith(facts.python + ".")


def test_facts_script_finds_the_newest_postgresql_and_no_python(tmp_path: Path) -> None:
    from piblade.provision.facts import FACTS_SCRIPT

    # The script as it runs on a node, with /usr/lib/postgresql and python3 of our making.
    versions = tmp_path / "pg"
    for name in ("9", "15", "13", "15beta", "common"):
        (versions / name).mkdir(parents=True)
    script = FACTS_SCRIPT.replace("/usr/lib/postgresql/", f"{versions}/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("uname", "tr", "getconf", "grep", "modprobe", "systemd-detect-virt", "id"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": str(bin_dir)}).stdout
    facts = parse_facts(out)
    assert facts.postgres == "15"
    assert (facts.python, facts.python_full) == ("", "")  # no python3 on the node: said, not guessed


def changed(decision: Decision) -> Change:
    assert isinstance(decision, Change), decision
    return decision


def ok(decision: Decision) -> str:
    """The reason of an ok decision (and fail on a change)."""
    assert isinstance(decision, Ok), decision
    return decision.reason


def test_packages_installs_only_what_is_missing() -> None:
    step = Packages(("samba", "sshfs"))
    assert ok(step.decide("samba installed\nsshfs installed")) == "samba, sshfs are installed"
    change = changed(step.decide("samba installed\nsshfs not-installed"))
    assert change.summary == "install sshfs" and change.kind is ChangeKind.INSTALL
    assert change.script.endswith("--no-install-recommends sshfs")


def test_file_is_ok_only_with_same_content_and_mode(tmp_path: Path) -> None:
    step = File("/etc/x.conf", b"a\nb\n", "root", "root", "644")
    digest = hashlib.sha256(b"a\nb\n").hexdigest()
    assert ok(step.decide(f"{digest}\nroot:root:644:4\nYQpiCg==")) == "file /etc/x.conf matches (root:root 644)"
    mode = changed(step.decide(f"{digest}\nroot:root:600:4\nYQpiCg=="))
    assert "chmod 644" in mode.script and not mode.uploads and mode.kind is ChangeKind.PERMISSIONS
    old = changed(step.decide("0" * 64 + "\nroot:root:644:4\n" + "YQpjCg=="))  # "a\nc\n"
    assert old.uploads[0].data == b"a\nb\n" and old.kind is ChangeKind.UPDATE
    assert old.diff is not None and "-c\n+b\n" in old.diff
    created = changed(step.decide("missing"))
    assert created.summary == "create /etc/x.conf" and created.kind is ChangeKind.CREATE


def test_secret_files_never_show_their_content() -> None:
    step = File("/etc/piblade/redis.password", b"hunter2\n", secret=True)
    assert "base64" not in step.probe()
    change = changed(step.decide("missing"))
    assert change.diff is not None and "hunter2" not in change.diff and "hidden" in change.diff


def test_unit_files_reload_systemd() -> None:
    change = changed(File("/etc/systemd/system/x.service", b"[Unit]\n").decide("missing"))
    assert change.script.endswith("systemctl daemon-reload")


def test_service_enables_and_starts() -> None:
    step = Service("smbd")
    assert ok(step.decide("enabled\nactive")) == "smbd is enabled and running"
    change = changed(step.decide("disabled\ninactive"))
    assert change.script == "systemctl enable smbd && systemctl start smbd" and change.kind is ChangeKind.START
    assert changed(step.decide("disabled\nactive")).kind is ChangeKind.ENABLE
    mount = Service("srv-data.mount", enabled=False)
    assert ok(mount.decide("generated\nactive")) == "srv-data.mount is active"
    assert step.restart().kind is ChangeKind.RESTART


def test_user_directory_and_samba_user() -> None:
    user = SystemUser("piblade", "/var/lib/piblade")
    assert ok(user.decide("piblade:x:999:999::/var/lib/piblade:/usr/sbin/nologin\npiblade")) == "user piblade exists"
    assert changed(SystemUser("piblade", "/h").decide("")).summary == "create system user piblade"
    grouped = SystemUser("piblade", "/h", ("fuse",)).decide("piblade:x:9:9::/h:/usr/sbin/nologin\npiblade")
    assert changed(grouped).kind is ChangeKind.UPDATE
    assert ok(Directory("/srv/x", "piblade", "piblade", "2775").decide("piblade:piblade:2775")) == (
        "directory /srv/x is piblade:piblade 2775")
    assert changed(Directory("/srv/x").decide("missing")).summary == "create /srv/x"
    assert changed(Directory("/srv/x").decide("root:root:700")).kind is ChangeKind.PERMISSIONS
    mount_point = Directory("/mnt/nas", mount_point=True)
    # the share is mounted there: leave it, and say so
    assert ok(mount_point.decide("piblade:piblade:2775")).startswith("/mnt/nas exists (a mount point")
    assert changed(mount_point.decide("missing")).summary == "create /mnt/nas"
    samba = SambaUser("piblade", "s3cret")
    assert ok(samba.decide("present\n" + hashlib.sha256(b"s3cret").hexdigest())) == (
        "Samba user piblade exists with the cluster's password")
    change = changed(samba.decide("present\n" + "0" * 64))
    assert "s3cret" not in change.script  # the password travels as a staged file
    assert change.uploads[0].data == b"s3cret" and change.kind is ChangeKind.UPDATE
    assert changed(samba.decide("absent")).kind is ChangeKind.CREATE


def test_venv_pushes_only_missing_wheels(tmp_path: Path) -> None:
    wheels = []
    for name in ("a-1-py3-none-any.whl", "b-2-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"x" * 10)
        wheels.append(tmp_path / name)
    step = VenvInstall("/opt/v", "/opt/wh", tuple(wheels), "m1", "piblade==0.1.0")
    assert ok(step.decide("m1\na-1-py3-none-any.whl")) == "/opt/v has the wheelhouse m1 installed"
    change = changed(step.decide("none\na-1-py3-none-any.whl"))
    assert [u.name for u in change.uploads] == ["b-2-py3-none-any.whl"] and change.kind is ChangeKind.INSTALL
    assert 'install -m 644 -o root -g root "$STAGE/b-2-py3-none-any.whl" /opt/wh/' in change.script
    (tmp_path / "piblade-0.1.0-py3-none-any.whl").write_bytes(b"new code, same version")
    # The node still has the old piblade wheel under the same name: it is pushed anyway.
    own = changed(VenvInstall("/opt/v", "/opt/wh", (*wheels, tmp_path / "piblade-0.1.0-py3-none-any.whl"), "m2",
                              "piblade==0.1.0").decide("m1\na-1-py3-none-any.whl\nb-2-py3-none-any.whl\n"
                                                       "piblade-0.1.0-py3-none-any.whl"))
    assert [u.name for u in own.uploads] == ["piblade-0.1.0-py3-none-any.whl"]
    assert own.summary == "install piblade==0.1.0 (1 wheel, 0 KiB to push)"
    assert "--no-deps --force-reinstall /opt/wh/piblade-0.1.0-py3-none-any.whl" in own.script


def test_after_nas_probes_are_reused_only_when_nothing_changed() -> None:
    quiet = HostResult("w1", (StepResult("a", "ok"),))
    changed = HostResult("w1", (StepResult("a", "changed"),))
    nas_quiet = HostResult("nas", (StepResult("smb.conf", "ok"),))
    nas_changed = HostResult("nas", (StepResult("smb.conf", "changed"),))
    nas_failed = HostResult("nas", (StepResult("smb.conf", "failed"),), error="smb.conf: failed")
    assert probes_still_hold(quiet, nas_quiet)
    # The NAS node changed, failed or did not finish, or the worker itself changed: probe again.
    assert not probes_still_hold(quiet, nas_changed)
    assert not probes_still_hold(quiet, nas_failed)
    assert not probes_still_hold(quiet, HostResult("nas", error="connection lost"))
    assert not probes_still_hold(quiet, None)
    assert not probes_still_hold(changed, nas_quiet)


def test_probe_and_apply_scripts_round_trip(tmp_path: Path) -> None:
    existing = tmp_path / "present.conf"
    existing.write_bytes(b"no newline at the end")
    steps = [Packages(("sh",)), File(str(existing), b"other"), Directory("/nonexistent-piblade-test")]
    script = probe_script(steps)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    outputs = split_probes(out, 3)
    assert outputs[2].strip() == "missing"
    change = changed(steps[1].decide(outputs[1]))
    assert change.diff is not None and "-no newline at the end" in change.diff

    changes = [changed(Directory("/a").decide("missing")), changed(Directory("/b").decide("missing"))]
    ok = parse_apply("@@step 0\n@@step 1\n@@done\n", 2)
    assert ok == (2, None, "")
    failed = parse_apply("@@step 0\n@@step 1\n@@failed 1\ninstall: cannot create\n", 2)
    assert failed == (1, 1, "install: cannot create")
    assert '"@@failed 1"' in apply_script(changes, "/tmp/stage")


def test_apply_script_stops_at_the_first_failure(tmp_path: Path) -> None:
    new = ChangeKind.CREATE
    changes = [Change("one", new, "one", f"touch {tmp_path}/one"), Change("two", new, "two", "echo broken >&2; false"),
               Change("three", new, "three", f"touch {tmp_path}/three")]
    out = subprocess.run(["sh", "-c", apply_script(changes, None)], capture_output=True, text=True)
    assert out.returncode == 1
    assert parse_apply(out.stdout, 3) == (1, 1, "broken")
    assert (tmp_path / "one").exists() and not (tmp_path / "three").exists()


def test_services_restart_when_their_files_change() -> None:
    unit = File("/etc/systemd/system/piblade-worker.service", b"x", notify=("piblade-worker",))
    service = Service("piblade-worker.service")
    plan = HostPlan("w1", (unit, service))
    running = plan.decide(["missing", "enabled\nactive"])
    assert [(c.kind, c.summary) for c in running.restarts] == [
        (ChangeKind.RESTART, "restart piblade-worker.service (its code or config changed)")]
    assert [c.step for c in running.changes] == ["file /etc/systemd/system/piblade-worker.service",
                                                 "restart piblade-worker.service"]
    # A service that is being started in this run needs no restart (decided by its ChangeKind.START).
    assert plan.decide(["missing", "enabled\ninactive"]).restarts == ()
    # Only being enabled: it keeps running the old code, so it restarts.
    assert [c.kind for c in plan.decide(["missing", "disabled\nactive"]).changes] == [
        ChangeKind.CREATE, ChangeKind.ENABLE, ChangeKind.RESTART]
    digest = hashlib.sha256(b"x").hexdigest()
    quiet = plan.decide([f"{digest}\nroot:root:644:1\neA==", "enabled\nactive"])
    assert quiet.changes == () and [ok(d) for d in quiet.outcome] == [
        "file /etc/systemd/system/piblade-worker.service matches (root:root 644)",
        "piblade-worker.service is enabled and running"]
    # Notified in an earlier stage of the run (before waiting for the NAS): restarted in this one.
    later = HostPlan("w1", (service,), earlier=frozenset({"piblade-worker"})).decide(["enabled\nactive"])
    assert [c.kind for c in later.changes] == [ChangeKind.RESTART]
    with pytest.raises(ValueError, match="not been probed"):
        _ = plan.changes


INVENTORY = """
all:
  vars:
    piblade_cluster_name: lab
  children:
    controller:
      hosts:
        ctl: {ansible_host: 10.199.0.1, ansible_connection: local, piblade_redis_port: 6390}
    nas:
      hosts:
        nas1: {ansible_host: 10.199.0.10, piblade_share: data, piblade_nas_path: /srv/data}
    workers:
      vars: {piblade_worker_processes: 2, piblade_mount: /mnt/nas}
      hosts:
        w1: {ansible_host: 10.199.0.11}
"""


@pytest.fixture
def ctx() -> roles.Context:
    cluster = parse_inventory(INVENTORY, source="lab.yml")
    secrets = roles.Secrets("redispw", "smbpw", "-----KEY-----\n", "ssh-ed25519 AAAA test", "pgpw")
    return roles.Context(cluster, "redis://piblade@10.199.0.1:6390/0", secrets, "10.199.0.10 ssh-ed25519 AAAA\n")


def _wheelhouse() -> Wheelhouse:
    return Wheelhouse(Path("/nonexistent"), (), "manifest", "piblade==0.1.0")


def test_worker_plan_on_a_pi_mounts_cifs(ctx: roles.Context) -> None:
    node = ctx.cluster.node("w1")
    steps, notes = roles.plan(node, parse_facts(PI_FACTS), ctx, _wheelhouse())
    names = [s.name for s in steps]
    assert notes == ["mount: cifs //10.199.0.10/data at /mnt/nas (automount)"]
    fstab = next(s for s in steps if s.name == "fstab /mnt/nas")
    assert fstab.line.startswith("//10.199.0.10/data /mnt/nas cifs credentials=/etc/piblade/nas.cred,vers=3.1.1,seal,")
    assert fstab.line.endswith(",x-systemd.automount,_netdev,nofail 0 0")
    assert next(s for s in steps if s.name == "service mnt-nas.automount").after_nas
    cred = next(s for s in steps if s.name == "file /etc/piblade/nas.cred")
    assert cred.secret and cred.mode == "600" and b"password=smbpw" in cred.content
    env = next(s for s in steps if s.name == "file /etc/piblade/piblade.env")
    assert env.mode == "600" and b"PIBLADE_REDIS_URL=redis://piblade@10.199.0.1:6390/0" in env.content
    assert b"redispw" not in env.content  # the password has its own file
    unit = next(s for s in steps if s.name == "file /etc/systemd/system/piblade-worker.service")
    assert b"--processes 2" in unit.content and b"RequiresMountsFor=/mnt/nas" in unit.content
    assert "service systemd-timesyncd" in names


def test_a_worker_node_s_environment_names_the_results_database_and_its_password_file(ctx: roles.Context) -> None:
    steps, _ = roles.plan(ctx.cluster.node("w1"), parse_facts(PI_FACTS), ctx, _wheelhouse())
    env = next(s for s in steps if s.name == "file /etc/piblade/piblade.env").content.decode()
    lines = env.splitlines()
    assert "PIBLADE_RESULTS_URL=postgresql://piblade@10.199.0.10:5432/piblade" in lines
    assert "PIBLADE_RESULTS_PASSWORD_FILE=/etc/piblade/postgres.password" in lines
    assert "pgpw" not in env and "" not in lines  # no password in the URL, no blank line left by the template
    from piblade import resultsdb

    url = next(line.split("=", 1)[1] for line in lines if line.startswith("PIBLADE_RESULTS_URL="))
    target = resultsdb.target_from_url(url, "/etc/piblade/postgres.password")  # what the worker will parse
    assert (target.host, target.port, target.dbname, target.user) == ("10.199.0.10", 5432, "piblade", "piblade")
    secret = next(s for s in steps if s.name == "file /etc/piblade/postgres.password")
    assert (secret.content, secret.owner, secret.group, secret.mode) == (b"pgpw\n", "piblade", "piblade", "600")
    assert secret.secret and secret.notify == ("piblade-worker",)


def test_the_results_database_s_address_follows_piblade_results_host(ctx: roles.Context) -> None:
    cluster = parse_inventory(INVENTORY.replace("piblade_cluster_name: lab", "piblade_cluster_name: lab\n"
                                                "    piblade_results_host: ctl\n    piblade_results_port: 5544"),
                              source="lab.yml")
    moved = roles.Context(cluster, ctx.redis_url, ctx.secrets, ctx.nas_host_keys)
    steps, _ = roles.plan(cluster.node("w1"), parse_facts(PI_FACTS), moved, _wheelhouse())
    env = next(s for s in steps if s.name == "file /etc/piblade/piblade.env").content.decode()
    assert "PIBLADE_RESULTS_URL=postgresql://piblade@10.199.0.1:5544/piblade\n" in env


def test_a_node_without_the_workers_role_gets_no_results_password(ctx: roles.Context) -> None:
    steps, _ = roles.plan(ctx.cluster.node("nas1"), parse_facts(PI_FACTS), ctx, _wheelhouse())
    env = next(s for s in steps if s.name == "file /etc/piblade/piblade.env").content.decode()
    assert "PIBLADE_RESULTS" not in env and "\n\n" not in env
    assert "PIBLADE_MAX_TEMP=" in env and "NUMBA_CACHE_DIR=" in env
    assert "file /etc/piblade/postgres.password" not in [s.name for s in steps]


def test_worker_plan_without_cifs_uses_sshfs(ctx: roles.Context) -> None:
    steps, notes = roles.plan(ctx.cluster.node("w1"), parse_facts(NSPAWN_FACTS), ctx, _wheelhouse())
    assert notes[0].startswith("mount: sshfs (FUSE; this kernel has no cifs)")
    mount = next(s for s in steps if s.name == "file /etc/systemd/system/mnt-nas.mount")
    assert b"Type=fuse.sshfs" in mount.content and b"StrictHostKeyChecking=yes" in mount.content
    assert "service systemd-timesyncd" not in [s.name for s in steps]  # containers use the host clock


def test_nas_plan_has_a_samba_share_without_guests(ctx: roles.Context) -> None:
    steps, _ = roles.plan(ctx.cluster.node("nas1"), parse_facts(PI_FACTS), ctx, _wheelhouse())
    conf = next(s for s in steps if s.name == "file /etc/samba/smb.conf").content.decode()
    assert "[data]" in conf and "path = /srv/data" in conf
    assert "guest ok = no" in conf and "map to guest = never" in conf and "server min protocol = SMB3" in conf
    keys = next(s for s in steps if s.name == "file /var/lib/piblade/.ssh/authorized_keys").content
    assert keys.startswith(b'restrict,command="internal-sftp" ssh-ed25519')
    assert "service piblade-worker.service" not in [s.name for s in steps]
    assert "service piblade-agent.service" in [s.name for s in steps]


def test_nas_disk_is_mounted_by_label_with_nofail(ctx: roles.Context) -> None:
    from dataclasses import replace

    node = ctx.cluster.node("nas1")
    without, notes = roles.plan(node, parse_facts(PI_FACTS), ctx, _wheelhouse())
    assert notes[0] == "data: directory /srv/data (set piblade_nas_device to mount a USB disk there)"
    assert not [s for s in without if s.name.startswith("fstab")]
    disk = replace(node, settings=replace(node.settings, nas_device="LABEL=usb1"))
    cluster = replace(ctx.cluster, nodes=tuple(disk if n.name == "nas1" else n for n in ctx.cluster.nodes))
    steps, notes = roles.plan(disk, parse_facts(PI_FACTS), replace(ctx, cluster=cluster), _wheelhouse())
    names = [s.name for s in steps]
    fstab = next(s for s in steps if s.name == "fstab /srv/data")
    assert fstab.line == "LABEL=usb1 /srv/data auto defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2"
    # mounted before the share's directory gets its owner, and before Samba exports it
    assert names.index("fstab /srv/data") < names.index("service srv-data.mount") < names.index("service smbd")
    assert notes[0] == "data: LABEL=usb1 mounted at /srv/data (nofail)"


def test_fstab_line_replaces_only_its_mount_point(tmp_path: Path) -> None:
    from piblade.provision.steps import FstabLine

    fstab = tmp_path / "fstab"
    fstab.write_text("# keep /mnt/nas\nUUID=1 / ext4 defaults 0 1\n//old/x /mnt/nas cifs guest 0 0\n")
    step = FstabLine("/mnt/nas", "//nas/data /mnt/nas cifs credentials=/c,_netdev 0 0")
    probe = step.probe().replace("/etc/fstab", str(fstab))
    change = changed(step.decide(subprocess.run(["sh", "-c", probe], capture_output=True, text=True).stdout))
    assert change.kind is ChangeKind.UPDATE and change.diff and "-//old/x /mnt/nas cifs guest 0 0" in change.diff
    script = change.script.replace("/etc/fstab", str(fstab)).replace(" && systemctl daemon-reload", "")
    subprocess.run(["sh", "-c", script], check=True)
    assert fstab.read_text() == ("# keep /mnt/nas\nUUID=1 / ext4 defaults 0 1\n"
                                 "//nas/data /mnt/nas cifs credentials=/c,_netdev 0 0\n")
    assert ok(step.decide(subprocess.run(["sh", "-c", probe], capture_output=True, text=True).stdout)) == (
        "/etc/fstab has the entry for /mnt/nas")


def test_tags_filter_steps(ctx: roles.Context) -> None:
    steps, _ = roles.plan(ctx.cluster.node("nas1"), parse_facts(PI_FACTS), ctx, _wheelhouse())
    assert {s.name for s in roles.filter_tags(steps, frozenset({"samba"}))} == {
        "packages: samba samba-vfs-modules", "directory /srv/data", "file /etc/samba/smb.conf", "samba user piblade", "service smbd"}


def test_a_host_plan_is_a_value_decided_by_its_probes(ctx: roles.Context) -> None:
    plan = host_plan(ctx.cluster.node("nas1"), parse_facts(PI_FACTS), ctx, _wheelhouse(), frozenset({"samba"}))
    assert [s.name for s in plan.steps] == ["packages: samba samba-vfs-modules", "directory /srv/data", "file /etc/samba/smb.conf",
                                            "samba user piblade", "service smbd"]
    assert plan.decisions is None  # built from the facts, before any probe
    assert plan.notes[0] == "data: directory /srv/data (set piblade_nas_device to mount a USB disk there)"
    conf = next(s for s in plan.steps if isinstance(s, File))
    as_provisioned = ["samba installed\nsamba-vfs-modules installed", "piblade:piblade:2775",
                      f"{conf.digest}\nroot:root:644:9\n",
                      "present\n" + hashlib.sha256(b"smbpw").hexdigest(), "enabled\nactive"]
    quiet = plan.decide(as_provisioned)
    assert quiet.changes == () and [ok(d) for d in quiet.outcome] == [
        "samba, samba-vfs-modules are installed", "directory /srv/data is piblade:piblade 2775",
        "file /etc/samba/smb.conf matches (root:root 644)", "Samba user piblade exists with the cluster's password",
        "smbd is enabled and running"]
    # A hand-made drift in smb.conf: the file is updated and smbd, which runs, restarted.
    drift = plan.decide(as_provisioned[:2] + ["0" * 64 + "\nroot:root:644:9\n"] + as_provisioned[3:])
    assert [(c.step, c.kind) for c in drift.changes] == [("file /etc/samba/smb.conf", ChangeKind.UPDATE),
                                                         ("restart smbd", ChangeKind.RESTART)]
    # On a fresh node smbd is started after its config is written: no restart on top.
    fresh = plan.decide(["samba not-installed", "missing", "missing", "absent", "disabled\ninactive"])
    assert [c.kind for c in fresh.changes] == [ChangeKind.INSTALL, ChangeKind.CREATE, ChangeKind.CREATE,
                                               ChangeKind.CREATE, ChangeKind.START]


def test_check_prints_the_whole_plan_and_json_carries_it(capsys: pytest.CaptureFixture[str]) -> None:
    from piblade.cli.provision_cmd import _recap
    from piblade.provision.engine import HostResult, StepResult

    service = Service("smbd")
    plan = HostPlan("nas1", (File("/etc/samba/smb.conf", b"x", notify=("smbd",)), service))
    decided = plan.decide(["missing", "enabled\nactive"])
    result = HostResult("nas1", tuple(StepResult.of(d) for d in decided.outcome))
    assert (result.ok, result.changed) == (1, 2)
    report = result.to_dict()
    assert report["changes"] == [
        {"step": "file /etc/samba/smb.conf", "status": "changed", "kind": "create", "summary": "create /etc/samba/smb.conf"},
        {"step": "restart smbd", "status": "changed", "kind": "restart",
         "summary": "restart smbd (its code or config changed)"}]
    assert report["plan"][1] == {"step": "service smbd", "status": "ok", "reason": "smbd is enabled and running"}
    _recap([result], check=True, diff=False)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("nas1:")]
    assert lines == ["nas1: would create /etc/samba/smb.conf", "nas1: ok: smbd is enabled and running",
                     "nas1: would restart smbd (its code or config changed)"]
    _recap([result], check=False, diff=False)  # a real run lists what changed, not the steps that were ok
    assert "ok: smbd" not in capsys.readouterr().out


KNOWN_HOSTS_INVENTORY = """
all:
  vars: {ansible_user: pi, ansible_ssh_private_key_file: ~/keys/lab, piblade_known_hosts: /etc/lab/known_hosts}
  children:
    controller:
      hosts:
        ctl: {ansible_host: 10.199.0.1, ansible_connection: local}
    nas:
      hosts:
        nas1: {ansible_host: 10.199.0.10, ansible_port: 2222, piblade_known_hosts: %s}
    workers:
      hosts:
        w1: {ansible_host: 10.199.0.11, ansible_user: root}
        w2: {ansible_host: 10.199.0.12, piblade_known_hosts: ~/other_known_hosts}
"""


def test_each_node_is_reached_as_its_own_inventory_entry_says(tmp_path: Path) -> None:
    from piblade.provision.engine import target_for

    cluster = parse_inventory(KNOWN_HOSTS_INVENTORY % (tmp_path / "nas_known_hosts"), source="lab.yml")
    w1, w2, nas = (target_for(cluster.node(n)) for n in ("w1", "w2", "nas1"))
    assert (w1.address, w1.port, w1.user, w1.key_file) == ("10.199.0.11", 22, "root", Path("~/keys/lab").expanduser())
    # piblade_known_hosts is honoured per node, with Ansible's precedence (host over all: vars).
    assert w1.known_hosts == Path("/etc/lab/known_hosts")
    assert w2.known_hosts == Path("~/other_known_hosts").expanduser()
    assert nas.known_hosts == tmp_path / "nas_known_hosts" and nas.host_key_name == "[10.199.0.10]:2222"
    default = parse_inventory(INVENTORY, source="lab.yml")
    assert target_for(default.node("w1")).known_hosts == Path("~/.ssh/known_hosts").expanduser()


def test_the_nas_host_keys_come_from_the_file_its_key_was_verified_in(tmp_path: Path) -> None:
    from piblade.provision.run import nas_host_keys

    cluster = parse_inventory(KNOWN_HOSTS_INVENTORY % (tmp_path / "nas_known_hosts"), source="lab.yml")
    assert nas_host_keys(cluster) == ""  # no file yet: no keys, and the mount refuses every host
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIHs5mwXc6DqaLzWjA5Lzz0dX5xYYn8o0dzqG9x0nb2s4"
    (tmp_path / "nas_known_hosts").write_text(f"[10.199.0.10]:2222 ssh-ed25519 {blob}\n10.199.0.11 ssh-ed25519 {blob}\n")
    assert nas_host_keys(cluster) == f"10.199.0.10 ssh-ed25519 {blob}\n"


def test_mount_unit_names_follow_systemd_escaping() -> None:
    assert roles.mount_unit_name("/mnt/piblade") == "mnt-piblade.mount"
    assert roles.mount_unit_name("/srv/nas-data/") == "srv-nas\\x2ddata.mount"


def test_wheelhouse_archive_holds_every_wheel_as_root_0644_and_is_made_once(tmp_path: Path) -> None:
    import tarfile
    import threading


    house_dir = tmp_path / "x86_64-py3.11-3abc"
    house_dir.mkdir()
    wheels = []
    for i, name in enumerate(("numpy-2.3.0-cp311-manylinux.whl", "piblade-0.1.0-py3-none-any.whl")):
        (house_dir / name).write_bytes(bytes([i]) * (1000 + i))
        (house_dir / name).chmod(0o600)
        wheels.append(house_dir / name)
    house = Wheelhouse(house_dir, tuple(wheels), "m", "piblade==0.1.0")
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(archive(house))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(made) == {house_dir / "wheels.tar"}
    with tarfile.open(house_dir / "wheels.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [w.name for w in wheels]  # plain names: unarchive into the wheelhouse
        assert {(m.mode, m.uid, m.gid, m.uname) for m in members} == {(0o644, 0, 0, "root")}
        assert [tar.extractfile(m).read() for m in members] == [w.read_bytes() for w in wheels]  # type: ignore[union-attr]
    assert not list(house_dir.glob(".*partial"))


def test_wheelhouse_prune_keeps_the_newest_of_one_platform_only(tmp_path: Path) -> None:
    import os

    for age, name in enumerate(["x86_64-py3.11-2aaa", "x86_64-py3.11-2bbb", "x86_64-py3.11-2ccc",
                                "x86_64-py3.11-2ddd", "aarch64-py3.11-2eee"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "MANIFEST").write_text("m\n")
        os.utime(tmp_path / name / "MANIFEST", (1000 - age, 1000 - age))  # later in the list: older
    (tmp_path / ".x86_64-py3.11-2fff.building").mkdir()  # another run's build in progress
    deleted = prune(tmp_path, "x86_64-py3.11-", keep=3)
    assert [d.name for d in deleted] == ["x86_64-py3.11-2ddd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".x86_64-py3.11-2fff.building", "aarch64-py3.11-2eee",
        "x86_64-py3.11-2aaa", "x86_64-py3.11-2bbb", "x86_64-py3.11-2ccc"]


def test_a_32_bit_node_is_refused_with_the_64_bit_os_hint() -> None:
    from piblade.provision.wheelhouse import refuse_unsupported

    for arch, bits in (("armv7l", 32), ("armv6l", 32), ("aarch64", 32)):  # the last: 32-bit OS, 64-bit kernel
        with pytest.raises(PibladeError) as info:
            refuse_unsupported(arch, "3.11", userland_bits=bits)
        assert "32-bit OS" in info.value.message
        assert "Raspberry Pi OS Lite (64-bit)" in (info.value.hint or "")
    with pytest.raises(PibladeError, match="no wheels for the node architecture 'riscv64'"):
        refuse_unsupported("riscv64", "3.11", userland_bits=64)
    refuse_unsupported("aarch64", "3.11", userland_bits=64)  # a Pi on 64-bit Raspberry Pi OS: served
    refuse_unsupported("x86_64", "3.13")


def test_a_python_the_wheelhouse_has_no_wheels_for_is_refused_with_what_to_install() -> None:
    from piblade.provision.wheelhouse import refuse_unsupported

    with pytest.raises(PibladeError) as info:
        refuse_unsupported("aarch64", "3.9", userland_bits=64)  # Raspberry Pi OS bullseye
    assert info.value.message == ("the node's Python is 3.9; the wheelhouse has wheels for Python >=3.11 only "
                                  "(the versions requirements.lock pins)")
    assert "Raspberry Pi OS (64-bit) bookworm or later" in (info.value.hint or "")
    with pytest.raises(PibladeError, match="has no python3"):
        refuse_unsupported("aarch64", "")


def test_facts_carry_the_userland_word_size() -> None:
    assert parse_facts(PI_FACTS + "bits=32\n").userland_bits == 32
    assert parse_facts(PI_FACTS).userland_bits == 0  # an older script: unknown, not refused
