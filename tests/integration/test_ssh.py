"""The SSH seam against a real sshd on loopback: host keys are verified, never silently added."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from piblade import local
from piblade.provision.ssh import HostKeyChanged, HostKeyUnknown, Session, SshError, SshTarget

pytestmark = pytest.mark.integration


@dataclass
class Sshd:
    port: int
    client_key: Path
    host_pub: str
    root: Path


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("sshd is not installed: run `make test`, which installs openssh-server")
    root = tmp_path_factory.mktemp("sshd")
    keygen(root / "host_key")
    keygen(root / "client_key")
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = local.free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    with (root / "sshd.log").open("w") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail((root / "sshd.log").read_text())
            time.sleep(0.05)
    yield Sshd(port, root / "client_key", (root / "host_key.pub").read_text().split()[1], root)
    proc.terminate()
    proc.wait(timeout=10)


def target(sshd: Sshd, known: Path) -> SshTarget:
    return SshTarget("n1", "127.0.0.1", sshd.port, "root", sshd.client_key, False, known)


def test_unknown_host_is_refused_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknown) as info:
        Session(target(sshd, known)).open()
    fp = subprocess.run(["ssh-keygen", "-lf", str(sshd.root / "host_key.pub")], capture_output=True, text=True)
    assert fp.stdout.split()[1] in info.value.message  # the same SHA256 fingerprint OpenSSH shows
    assert "piblade trust n1" in info.value.hint
    assert not known.exists()  # nothing was added


def test_accept_new_trusts_once_and_remembers(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    with Session(target(sshd, known), accept_new=True) as session:
        assert session.accepted and session.accepted[0].startswith("ssh-ed25519 SHA256:")
        assert session.script("echo hello; id -un").stdout.split() == ["hello", "root"]
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 {sshd.host_pub}" in known.read_text()
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    with Session(target(sshd, known)) as session:  # strict mode now knows it
        assert session.accepted == []
        result = session.script("exit 3")
        assert result.exit_code == 3 and not result.ok


def test_a_changed_host_key_is_always_refused(sshd: Sshd, tmp_path: Path) -> None:
    keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other}\n")
    for accept_new in (False, True):
        with pytest.raises(HostKeyChanged, match="HOST KEY CHANGED"):
            Session(target(sshd, known), accept_new=accept_new).open()
    assert known.read_text().count("\n") == 1


def test_unreachable_and_unauthorised_nodes_say_what_to_check(sshd: Sshd, tmp_path: Path) -> None:
    closed = SshTarget("gone", "127.0.0.1", local.free_port(), "root", sshd.client_key, False, tmp_path / "k")
    with pytest.raises(SshError, match="cannot reach 127.0.0.1"):
        Session(closed).open()
    keygen(tmp_path / "stranger")
    known = tmp_path / "known_hosts"
    Session(target(sshd, known), accept_new=True).open().close()
    wrong = SshTarget("n1", "127.0.0.1", sshd.port, "root", tmp_path / "stranger", False, known)
    with pytest.raises(SshError, match="SSH authentication failed for root@127.0.0.1") as info:
        Session(wrong).open()
    assert "ansible_ssh_private_key_file" in info.value.hint


def test_nagle_is_off_on_the_ssh_socket(sshd: Sshd, tmp_path: Path) -> None:
    with Session(target(sshd, tmp_path / "k"), accept_new=True) as session:
        sock = session.conn.transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_piblade_trust_adds_the_key_after_showing_it(sshd: Sshd, tmp_path: Path) -> None:
    known, own = tmp_path / "known_hosts", tmp_path / "n2_known_hosts"
    inventory = tmp_path / "lab.yml"
    inventory.write_text(f"""all:
  vars:
    piblade_known_hosts: {known}
  children:
    controller:
      hosts:
        ctl: {{ansible_host: 127.0.0.1, ansible_connection: local}}
    workers:
      hosts:
        n1: {{ansible_host: 127.0.0.1, ansible_port: {sshd.port}, ansible_user: root}}
        n2: {{ansible_host: 127.0.0.1, ansible_port: {sshd.port}, ansible_user: root, piblade_known_hosts: {own}}}
""")
    env = {**os.environ, "COLUMNS": "200"}

    def trust(host: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "piblade", "trust", host, "-i", str(inventory), "--yes"],
                              capture_output=True, text=True, env=env)

    run = trust("n1")
    assert run.returncode == 0, run.stderr
    assert "offers ssh-ed25519 SHA256:" in run.stdout
    assert sshd.host_pub in known.read_text()
    assert "already trusted" in trust("n1").stdout
    # piblade_known_hosts is per node: n2's key goes to (and is checked in) its own file.
    assert f"added to {own}" in trust("n2").stdout
    assert known.read_text().count("\n") == 1 and sshd.host_pub in own.read_text()
    # A changed key is refused by trust too, with the command that removes the old one.
    keygen(tmp_path / "other")
    own.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {(tmp_path / 'other.pub').read_text().split()[1]}\n")
    refused = trust("n2")
    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())  # rich wraps long lines
    assert "HOST KEY CHANGED" in said and f"ssh-keygen -R [127.0.0.1]:{sshd.port} -f {own}" in said


def _home_that_would_redirect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.ssh/config and ~/.fabric.yaml would send every connection elsewhere."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    keygen(home / ".ssh" / "stranger")
    (home / ".ssh" / "config").write_text(
        f"Host *\n  HostName 127.0.0.2\n  User nobody-from-ssh-config\n  Port {local.free_port()}\n"
        f"  IdentityFile {home}/.ssh/stranger\n  IdentitiesOnly yes\n  ProxyJump nobody@127.0.0.3\n"
        "  ConnectTimeout 1\n  ForwardAgent yes\n"
    )
    (home / ".fabric.yaml").write_text(
        f"user: nobody-from-fabric\nport: {local.free_port()}\n"
        f"connect_kwargs: {{key_filename: [{home}/.ssh/stranger]}}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def test_the_inventory_alone_says_how_to_reach_a_node(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~/.ssh/config and Fabric's own config files are not read: user, port, address and key
    # come from the inventory, so a run does the same on every controller and for every user.
    _home_that_would_redirect(tmp_path, monkeypatch)
    known = tmp_path / "known_hosts"
    with Session(target(sshd, known), accept_new=True) as session:
        assert session.script("id -un").stdout.split() == ["root"]
    # The key is looked up under the inventory's address, not a HostName from ~/.ssh/config.
    with Session(target(sshd, known)) as session:
        assert session.accepted == [] and session.script("true").ok
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")


def test_default_keys_only_when_the_inventory_names_none(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass
    import shutil

    home = _home_that_would_redirect(tmp_path, monkeypatch)
    shutil.copy(sshd.client_key, home / ".ssh" / "id_ed25519")  # the key sshd accepts, where ssh looks
    known = tmp_path / "known_hosts"
    # No ansible_user and no key file: the login user is yours and ~/.ssh/id_* is tried, as `ssh` does
    # without a config file (not ~/.ssh/config's User and IdentityFile).
    defaults = SshTarget("n1", "127.0.0.1", sshd.port, None, None, False, known)
    with Session(defaults, accept_new=True) as session:
        assert session.script("id -un").stdout.split() == [getpass.getuser()]
    # A key file in the inventory is the only key offered: the default one that would work is not tried.
    named = SshTarget("n1", "127.0.0.1", sshd.port, "root", home / ".ssh" / "stranger", False, known)
    with pytest.raises(SshError, match="SSH authentication failed for root@127.0.0.1"):
        Session(named).open()
    missing = SshTarget("n1", "127.0.0.1", sshd.port, "root", tmp_path / "no-such-key", False, known)
    with pytest.raises(SshError, match="no-such-key") as info:
        Session(missing).open()
    assert "ansible_ssh_private_key_file" in (info.value.hint or "")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(tmp_path / "locked")], check=True)
    locked = SshTarget("n1", "127.0.0.1", sshd.port, "root", tmp_path / "locked", False, known)
    with pytest.raises(SshError, match="locked needs a passphrase") as info:
        Session(locked).open()
    assert "ssh-agent" in (info.value.hint or "")
