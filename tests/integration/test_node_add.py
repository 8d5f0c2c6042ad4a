"""`piblade node add` for real: the CLI, a real sshd serving the seed's host keys, cloud-init's own schema.

What a first boot does with the seed is the testbed's part (tests/e2e). Here:

* the CLI writes the seed onto a (directory standing in for a) boot partition,
  adds the node to the inventory (``piblade inventory check`` and
  ``ansible-inventory`` read it) and trusts its host keys;
* a real sshd started with the seed's private host keys and authorized key, as
  cloud-init installs them, is reached through the same SSH seam provisioning
  uses, with strict host-key checking: no trust step, no --accept-new;
* ``cloud-init schema`` (Debian's cloud-init 22.4: the testbed image's, read
  only, or else Debian's packages unpacked by ``apt-get download``) accepts the
  user-data, before and after the first boot's scrub of the private keys, and
  cloud-init's own parser and networkd renderer read network-config.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from piblade import local, seed
from piblade.inventory import load_inventory
from piblade.node import network_spec
from piblade.provision.engine import target_for
from piblade.provision.ssh import Session, known_host_keys
from piblade.state import state_dir

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
_REAL_STATE = state_dir()  # before any test moves PIBLADE_STATE_DIR: where a testbed image may be


def piblade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "piblade", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    """An inventory whose workers are reached on a free loopback port as root, and a private state dir."""
    port = local.free_port()
    inventory = tmp_path / "lab.yml"
    inventory.write_text(f"""\
# the lab cluster
all:
  vars:
    piblade_known_hosts: {tmp_path / "known_hosts"}  # checked strictly
  children:
    controller:
      hosts:
        ctl: {{ansible_host: localhost, ansible_connection: local}}
    workers:
      vars:
        ansible_port: {port}
        ansible_user: root
      hosts:
""")
    env = {**os.environ, "PIBLADE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200", "NO_COLOR": "1"}
    return inventory, env, port


def trixie_card(path: Path) -> Path:
    """What a Raspberry Pi OS Trixie boot partition has that node add looks at."""
    path.mkdir()
    (path / "config.txt").write_text("[all]\n")
    (path / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=1234-02 rootwait\n")
    (path / "issue.txt").write_text("Raspberry Pi reference 2025-10-01\n")
    for name in seed.SEED_FILES:
        (path / name).write_text("# stub from the image\n")
    return path


def start_sshd(root: Path, port: int, card: Path) -> subprocess.Popen[bytes]:
    """sshd with the seed's host keys and login key, as cloud-init's ssh and users modules install them."""
    user_data = yaml.safe_load((card / "user-data").read_text())
    host_keys = []
    for kind in ("ed25519", "ecdsa", "rsa"):
        key = root / f"ssh_host_{kind}_key"
        key.write_text(user_data["ssh_keys"][f"{kind}_private"])
        key.chmod(0o600)
        host_keys.append(f"HostKey {key}\n")
    (root / "authorized_keys").write_text("\n".join(user_data["users"][0]["ssh_authorized_keys"]) + "\n")
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\n{''.join(host_keys)}"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\n"
    )
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("sshd is not installed: run `make test`, which installs openssh-server")
    Path("/run/sshd").mkdir(exist_ok=True)
    with (root / "sshd.log").open("w") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail((root / "sshd.log").read_text())
            time.sleep(0.05)


@pytest.fixture
def sshd_dir(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    root = tmp_path / "sshd"
    root.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    yield root, procs
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_node_add_then_the_first_connection_is_verified_with_no_trust_step(
    lab: tuple[Path, dict[str, str], int], tmp_path: Path, sshd_dir: tuple[Path, list[subprocess.Popen[bytes]]],
) -> None:
    inventory, env, port = lab
    card = trixie_card(tmp_path / "bootfs")
    before = inventory.read_text()
    run = piblade("node", "add", "blade-w1", "--role", "workers", "--ip", "127.0.0.1/8", "--boot", str(card),
                  "-i", str(inventory), env=env)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0] == f"seed for blade-w1 written to {card}: user-data, network-config, meta-data"
    assert out[1] == f"inventory: blade-w1 added to workers in {inventory} (ansible_host 127.0.0.1, user root)"
    key_file = tmp_path / "state" / "ssh" / "id_ed25519"
    assert out[2] == f"login key: {key_file} (new)"
    assert key_file.stat().st_mode & 0o777 == 0o600

    # The inventory: the user's lines as they were, the new host below them; piblade and Ansible read it.
    after = inventory.read_text()
    assert after.startswith(before) and after[len(before):] == (
        f"        blade-w1:\n          ansible_host: 127.0.0.1\n"
        f"          ansible_ssh_private_key_file: {key_file}\n"
    )
    check = piblade("inventory", "check", "-i", str(inventory), env=env)
    assert check.returncode == 0 and check.stdout.strip().endswith('cluster "lab": 1 controller, 0 nas, 1 worker')
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory), "--list"], capture_output=True,
                            text=True, env={**env, "ANSIBLE_NOCOLOR": "1"}, timeout=120)
    assert listed.returncode == 0 and "WARNING" not in listed.stderr, listed.stderr
    hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]["blade-w1"]
    assert hostvars["ansible_port"] == port and hostvars["ansible_ssh_private_key_file"] == str(key_file)

    # known_hosts has the three public halves under the name provisioning looks up.
    node = load_inventory(inventory).node("blade-w1")
    target = target_for(node)
    assert target.known_hosts == tmp_path / "known_hosts"
    trusted = known_host_keys(target.known_hosts, f"[127.0.0.1]:{port}")
    assert sorted(k.kind for k in trusted) == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]
    assert next(f"  {k.kind} {k.fingerprint}" for k in trusted if k.kind == "ssh-ed25519") in out

    # The "node" boots: an sshd with the seed's keys. The SSH seam connects strictly, no trust step.
    root, procs = sshd_dir
    procs.append(start_sshd(root, port, card))
    with Session(target) as session:  # accept_new=False: an unknown key would raise HostKeyUnknown
        result = session.script("echo hello from $(id -un)")
    assert result.ok and result.stdout.strip() == "hello from root"
    assert known_host_keys(target.known_hosts, f"[127.0.0.1]:{port}") == trusted  # nothing was added

    # No private host key was ever written under piblade's state directory.
    user_data = yaml.safe_load((card / "user-data").read_text())
    # (a key's first base64 lines are a header every key of its type shares; the rest is the key's own)
    privates = [line for k, v in user_data["ssh_keys"].items() if k.endswith("_private")
                for line in v.splitlines()[3:-1]]
    assert len(privates) > 10
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert not any(line in path.read_text(errors="replace") for line in privates), path


def test_refusals_leave_nothing_behind(lab: tuple[Path, dict[str, str], int], tmp_path: Path) -> None:
    inventory, env, _ = lab
    card = trixie_card(tmp_path / "bootfs")
    # Refused before anything is made, not even piblade's login key.
    (tmp_path / "known_hosts").write_text(f"[10.0.0.21]:{lab[2]} ssh-ed25519 "
                                          "AAAAC3NzaC1lZDI1NTE5AAAAIE1ZCa6Ux8cKk5uEgq2m5yBBlQd9ePzc2AIhSbyEVoVh\n")
    early = piblade("node", "add", "blade-w1", "--ip", "10.0.0.21/24", "--dir", str(tmp_path / "seed"),
                    "-i", str(inventory), env=env)
    assert early.returncode == 1 and "already lists host keys" in " ".join(early.stderr.split())
    assert not (tmp_path / "state").exists() and not (tmp_path / "seed").exists()
    (tmp_path / "known_hosts").write_text("")
    first = piblade("node", "add", "blade-w1", "--ip", "10.0.0.21/24", "--dir", str(tmp_path / "seed"),
                    "-i", str(inventory), env=env)
    assert first.returncode == 0, first.stderr
    inv, known = inventory.read_text(), (tmp_path / "known_hosts").read_text()

    def refused(*args: str) -> str:
        run = piblade("node", "add", *args, "-i", str(inventory), env=env)
        assert run.returncode == 1, run.stdout
        assert inventory.read_text() == inv and (tmp_path / "known_hosts").read_text() == known
        assert sorted(p.name for p in card.iterdir()) == sorted(["config.txt", "cmdline.txt", "issue.txt",
                                                                 *seed.SEED_FILES])
        assert all((card / n).read_text() == "# stub from the image\n" for n in seed.SEED_FILES)
        return " ".join(run.stderr.split())

    assert "blade-w1: a node of that name is already in the inventory" in refused(
        "blade-w1", "--ip", "10.0.0.22/24", "--boot", str(card))
    assert "address 10.0.0.21 is already used by node 'blade-w1'" in refused(
        "blade-w2", "--ip", "10.0.0.21/24", "--boot", str(card))
    # An old machine's keys for the address would make the strict check fail later: refused now.
    with (tmp_path / "known_hosts").open("a") as handle:
        handle.write(f"[10.0.0.23]:{lab[2]} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIE1ZCa6Ux8cKk5uEgq2m5yBBlQd9ePzc2AIhSbyEVoVh\n")
    known = (tmp_path / "known_hosts").read_text()
    said = refused("blade-w3", "--ip", "10.0.0.23/24", "--boot", str(card))
    assert f"already lists host keys for [10.0.0.23]:{lab[2]}" in said
    assert f"ssh-keygen -R [10.0.0.23]:{lab[2]} -f {tmp_path / 'known_hosts'}" in said
    old = tmp_path / "old-card"
    old.mkdir()
    (old / "config.txt").write_text("")
    (old / "cmdline.txt").write_text("")
    (old / "issue.txt").write_text("Raspberry Pi reference 2024-11-19\n")
    said = refused("blade-w4", "--ip", "10.0.0.24/24", "--boot", str(old))
    assert "is a Raspberry Pi OS card from before Trixie (its issue.txt says image 2024-11-19)" in said
    assert "give either --boot PATH" in refused("blade-w5", "--dhcp")
    assert "give either --ip ADDRESS/PREFIX or --dhcp" in refused("blade-w5", "--dir", str(tmp_path / "s5"))
    assert "--user 'Pi User' is not a valid user name" in refused(
        "blade-w5", "--dhcp", "--user", "Pi User", "--dir", str(tmp_path / "s5"))
    assert "'blade_w5' is not a valid host name" in refused("blade_w5", "--dhcp", "--dir", str(tmp_path / "s5"))


def test_dhcp_node_is_reached_by_its_mdns_name_and_json_says_so(
    lab: tuple[Path, dict[str, str], int], tmp_path: Path,
) -> None:
    inventory, env, port = lab
    run = piblade("node", "add", "blade-w7", "--dhcp", "--dir", str(tmp_path / "seed"), "--json",
                  "-i", str(inventory), env=env)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["address"] == "blade-w7.local" and data["role"] == "workers" and data["user"] == "root"
    assert [k["type"] for k in data["host_keys"]] == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
    assert data["seed_files"] == [str(tmp_path / "seed" / n) for n in seed.SEED_FILES]
    assert len(known_host_keys(tmp_path / "known_hosts", f"[blade-w7.local]:{port}")) == 3
    network = yaml.safe_load((tmp_path / "seed" / "network-config").read_text())
    assert network["network"]["ethernets"]["wired"] == {"match": {"name": "e*"}, "dhcp4": True}


# -- cloud-init's own schema ---------------------------------------------------------------------------


def _testbed_cloudinit() -> Path | None:
    """The dist-packages of a built testbed image (read only: it is the lower layer of running nodes)."""
    from piblade.testbed.image import image_dir, is_complete

    roots = {_REAL_STATE / "testbed", Path.home() / ".local" / "state" / "piblade" / "testbed"}
    for root in roots:
        image = image_dir(root)
        packages = image / "usr" / "lib" / "python3" / "dist-packages"
        if is_complete(image) and (packages / "cloudinit").is_dir():
            return packages
    return None


#: Debian packages whose files make cloud-init's `schema` command and network code importable.
CLOUD_INIT_DEBS = (
    "cloud-init", "python3-requests", "python3-urllib3", "python3-idna", "python3-certifi",
    "python3-charset-normalizer", "python3-chardet", "python3-configobj", "python3-jsonpatch",
    "python3-json-pointer", "python3-netifaces", "python3-six", "python3-jsonschema", "python3-attr",
    "python3-pyrsistent", "python3-jinja2", "python3-markupsafe", "python3-yaml",
)


@pytest.fixture(scope="module")
def cloud_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dist-packages directory with Debian's cloud-init in it: a built testbed image's, read only,
    else Debian's packages unpacked here (`apt-get download`, as the image build fetches them)."""
    packages = _testbed_cloudinit()
    if packages is not None:
        return packages
    work = tmp_path_factory.mktemp("cloud-init-debs")
    download = subprocess.run(["apt-get", "download", *CLOUD_INIT_DEBS], cwd=work, capture_output=True, text=True,
                              timeout=600)
    if download.returncode != 0:
        pytest.fail(f"no testbed image, and `apt-get download` of cloud-init failed:\n{download.stderr}")
    for deb in work.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    return work / "root" / "usr" / "lib" / "python3" / "dist-packages"


def debian_python(packages: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run Python on Debian's packages (compiled for Debian's 3.11), writing no bytecode into them."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    return subprocess.run([python, "-B", "-s", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(packages), "PYTHONDONTWRITEBYTECODE": "1"})


def validate(packages: Path, path: Path) -> None:
    run = debian_python(packages, "-m", "cloudinit.cmd.main", "schema", "--config-file", str(path), cwd=path.parent)
    assert run.returncode == 0 and "Valid cloud-config" in run.stdout, run.stdout + run.stderr


def test_user_data_passes_cloud_inits_schema_before_and_after_the_scrub(cloud_init: Path, tmp_path: Path) -> None:
    keys = seed.generate_host_keys()
    for network in (seed.NetworkSpec(), seed.NetworkSpec(interface="host0")):
        spec = seed.SeedSpec("blade-w1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1ZCa6Ux8cKk5uEgq2m5yBBlQd9ePzc2AIhSbyEVoVh",
                             network, keys)
        path = tmp_path / "user-data"
        seed.write_seed(seed.build_seed(spec), tmp_path)
        validate(cloud_init, path)
        subprocess.run([sys.executable, "-c", seed.scrub_script([str(path)])], check=True, capture_output=True)
        assert "PRIVATE KEY" not in path.read_text()
        validate(cloud_init, path)
    # The schema does catch mistakes: cloud-init 22.4 refuses an empty ssh_genkeytypes.
    bad = tmp_path / "bad"
    bad.write_text(path.read_text() + "ssh_genkeytypes: []\n")
    with pytest.raises(AssertionError, match=r"ssh_genkeytypes: \[\] is too short"):
        validate(cloud_init, bad)


RENDER = """\
import sys, yaml
from cloudinit.net import networkd
from cloudinit.net.network_state import parse_net_config_data
state = parse_net_config_data(yaml.safe_load(open(sys.argv[1]))["network"])
for name, text in sorted(networkd.network_state_to_networkd(state).items()):
    print(f"== {name}")
    print(text)
"""


def test_cloud_inits_own_network_renderer_reads_the_network_config(cloud_init: Path, tmp_path: Path) -> None:
    """What a node without netplan (the testbed's) makes of network-config: cloud-init's networkd renderer."""
    path = tmp_path / "network-config"
    path.write_text(seed.network_config(network_spec("10.199.0.31/24", "10.199.0.1", [], False, "host0")))
    run = debian_python(cloud_init, "-c", RENDER, str(path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.startswith("== host0\n") and "Name=host0" in text and "Address=10.199.0.31/24" in text
    assert "Gateway=10.199.0.1" in text and "DNS=10.199.0.1" in text and "DHCP=no" in text
    # A glob keeps the neutral id, which this renderer would take as the interface's name: on such a
    # system (no netplan) the default e* configures nothing, hence --interface for the testbed.
    path.write_text(seed.network_config(network_spec(None, None, [], True, "e*")))
    run = debian_python(cloud_init, "-c", RENDER, str(path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Name=wired" in run.stdout and "DHCP=ipv4" in run.stdout
