"""NAS logic that needs no server: share paths, target resolution, transfer plans, globs, --over planning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piblade import dispatch
from piblade.errors import BadParameter, SecretError
from piblade.nas import LocalShare, pattern, resolve_share, transfer
from piblade.nas.errors import NasError, PathOutsideShare, RemoteExists, RemoteNotFound
from piblade.nas.paths import is_temp_name, pattern_parts, share_path, temp_name, to_unc
from piblade.nas.target import DEFAULT_USER, parse_server, resolve_target
from piblade.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("PIBLADE_SMB_") or key == "PIBLADE_INVENTORY":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIBLADE_STATE_DIR", str(tmp_path / "state"))


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("raw", "norm"), [("", ""), ("/", ""), ("photos/a.jpg", "photos/a.jpg"),
                                            ("/photos//a.jpg", "photos/a.jpg"), ("photos\\2024\\a.jpg", "photos/2024/a.jpg"),
                                            ("./a/./b/../c", "a/c"), ("a/..", "")])
def test_share_paths_are_normalised(raw: str, norm: str) -> None:
    assert share_path(raw) == norm


@pytest.mark.parametrize("raw", ["..", "../x", "a/../../x", "\\..\\x", "//server/share/x", "a:stream", "a/\x01b"])
def test_paths_outside_the_share_are_refused(raw: str) -> None:
    with pytest.raises(PathOutsideShare):
        share_path(raw)


def test_patterns_and_temporary_names() -> None:
    assert pattern_parts("photos/**") == ["photos", "**", "*"]
    assert pattern_parts("./photos/*.jpg") == ["photos", "*.jpg"]
    with pytest.raises(PathOutsideShare, match="climbs out"):
        pattern_parts("photos/../../*")
    tmp = temp_name("photos/a.jpg")
    assert tmp.startswith("photos/.a.jpg.piblade-") and tmp.endswith(".part") and is_temp_name(tmp.split("/")[-1])
    assert not is_temp_name("a.part") and not is_temp_name(".bashrc")
    assert to_unc("nas", "piblade", "a/b") == r"\\nas\piblade\a\b" and to_unc("nas", "s", "") == r"\\nas\s"


# --------------------------------------------------------------------------- target resolution


def test_server_addresses() -> None:
    assert parse_server("nas") == ("nas", 445)
    assert parse_server("10.0.0.5:4450") == ("10.0.0.5", 4450)
    assert parse_server("[fe80::1]:99") == ("fe80::1", 99)
    assert parse_server("fe80::1") == ("fe80::1", 445)
    with pytest.raises(NasError, match="is not a port number"):
        parse_server("nas:http")


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_explicit_server_and_password_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIBLADE_SMB_PASSWORD_FILE", str(secret(tmp_path / "pw", "s3cret")))
    target = resolve_target(server="nas.lan:1445", share="media", user="me")
    assert (target.server, target.port, target.share, target.user, target.password) == ("nas.lan", 1445, "media", "me", "s3cret")
    assert target.encrypt and "s3cret" not in repr(target)
    monkeypatch.setenv("PIBLADE_SMB_SERVER", "other")
    monkeypatch.setenv("PIBLADE_SMB_USER", "envuser")
    target = resolve_target(encrypt=False)
    assert (target.server, target.share, target.user, target.encrypt) == ("other", "piblade", "envuser", False)
    assert target.display == "//other/piblade"


def test_password_file_must_be_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIBLADE_SMB_PASSWORD_FILE", str(secret(tmp_path / "pw", "x", 0o644)))
    with pytest.raises(SecretError, match="readable by other users"):
        resolve_target(server="nas")
    monkeypatch.delenv("PIBLADE_SMB_PASSWORD_FILE")
    with pytest.raises(SecretError, match="no Samba password"):
        resolve_target(server="nas")
    monkeypatch.setenv("PIBLADE_SMB_PASSWORD", "from-env")
    assert resolve_target(server="nas").password == "from-env"


INVENTORY = """\
all:
  children:
    controller:
      hosts:
        ctl: {ansible_host: 10.0.0.1}
    nas:
      hosts:
        disk: {ansible_host: 10.0.0.2, piblade_share: media}
    workers:
      hosts:
        w1: {ansible_host: 10.0.0.3}
"""


def test_inventory_nas_node_and_cluster_secret(tmp_path: Path) -> None:
    inv = tmp_path / "home.yml"
    inv.write_text(INVENTORY)
    from piblade.inventory import load_inventory

    name = load_inventory(inv).name
    secret(tmp_path / "state" / "clusters" / name / "secrets" / "samba.password", "cluster-pw")
    from piblade.context import resolve_cluster

    cluster = resolve_cluster(inv)
    target = resolve_target(cluster=cluster)
    assert (target.server, target.port, target.share, target.user, target.password) == ("10.0.0.2", 445, "media", DEFAULT_USER, "cluster-pw")
    assert "nas node disk" in target.source
    assert resolve_target(cluster=cluster, server="10.9.9.9", share="x").server == "10.9.9.9"  # the flag wins


def test_default_user_is_the_provisioned_one() -> None:
    from piblade.provision.roles import USER

    assert DEFAULT_USER == USER


def test_no_nas_anywhere_says_what_to_pass(tmp_path: Path) -> None:
    from piblade.context import local_cluster

    with pytest.raises(NasError) as info:
        resolve_share(local_cluster())
    assert info.value.message == "no NAS to talk to"
    assert "--server HOST[:PORT]" in (info.value.hint or "") and "-i INVENTORY" in (info.value.hint or "")
    (tmp_path / "state" / "local" / "data").mkdir(parents=True)
    assert resolve_share(local_cluster()) == tmp_path / "state" / "local" / "data"  # the local cluster's data directory


# --------------------------------------------------------------------------- transfers (on a LocalShare)


def tree(root: Path) -> None:
    for rel, data in {"a.jpg": b"aa", "sub/b.jpg": b"bbb", "sub/deep/c.png": b"c"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_put_plans_skip_identical_files_and_keep_times(tmp_path: Path) -> None:
    remote = LocalShare(tmp_path / "share")
    (tmp_path / "share").mkdir()
    tree(tmp_path / "pics")
    plan = transfer.plan_put(remote, tmp_path / "pics")
    assert [(f.dest, f.skip) for f in plan.files] == [("pics/a.jpg", None), ("pics/sub/b.jpg", None), ("pics/sub/deep/c.png", None)]
    assert plan.bytes_to_copy == 6
    moved: list[int] = []
    report = transfer.run_put(remote, plan, moved.append)
    assert (report.copied, report.bytes, sum(moved)) == (3, 6, 6)
    assert (tmp_path / "share/pics/sub/b.jpg").stat().st_mtime_ns == (tmp_path / "pics/sub/b.jpg").stat().st_mtime_ns
    again = transfer.plan_put(remote, tmp_path / "pics")
    assert [f.skip for f in again.files] == ["same size and time"] * 3 and again.bytes_to_copy == 0
    os.utime(tmp_path / "pics/a.jpg", (time.time() + 60, time.time() + 60))
    assert [f.dest for f in transfer.plan_put(remote, tmp_path / "pics").to_copy] == ["pics/a.jpg"]
    assert transfer.plan_put(remote, tmp_path / "pics", checksum=True).to_copy == []  # same bytes


def test_put_destinations(tmp_path: Path) -> None:
    (tmp_path / "share" / "dir").mkdir(parents=True)
    remote = LocalShare(tmp_path / "share")
    (tmp_path / "f.txt").write_text("x")
    dest = lambda d: transfer.plan_put(remote, tmp_path / "f.txt", d).files[0].dest
    assert dest(None) == "f.txt"
    assert dest("dir") == "dir/f.txt"  # an existing directory
    assert dest("new/") == "new/f.txt"
    assert dest("renamed.txt") == "renamed.txt"
    (tmp_path / "share" / "dir" / "f.txt").mkdir()
    with pytest.raises(RemoteExists, match="is a directory on the share"):
        transfer.plan_put(remote, tmp_path / "f.txt", "dir")
    with pytest.raises(NasError, match="no such local file"):
        transfer.plan_put(remote, tmp_path / "missing")


def test_stale_temporary_files_are_cleaned_up(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    remote = LocalShare(tmp_path / "share")
    (tmp_path / "f.txt").write_text("x")
    old = tmp_path / "share" / ".f.txt.piblade-0badcafe.part"
    young = tmp_path / "share" / ".f.txt.piblade-12345678.part"
    for p in (old, young):
        p.write_text("half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    plan = transfer.plan_put(remote, tmp_path / "f.txt")
    assert plan.stale == [old.name]
    transfer.run_put(remote, plan, lambda _n: None)
    assert not old.exists() and young.exists()


def test_get_plans_and_copies(tmp_path: Path) -> None:
    tree(tmp_path / "share" / "pics")
    (tmp_path / "share" / "pics" / ".x.jpg.piblade-00000000.part").write_text("half")
    remote = LocalShare(tmp_path / "share")
    report = transfer.run_get(remote, transfer.plan_get(remote, "pics", tmp_path / "back"), lambda _n: None)
    assert report.copied == 3
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*") if p.is_file()) == \
        ["a.jpg", "sub/b.jpg", "sub/deep/c.png"]  # temporary files are not copied
    assert transfer.plan_get(remote, "pics", tmp_path / "back").to_copy == []
    with pytest.raises(RemoteNotFound):
        transfer.plan_get(remote, "nope")
    with pytest.raises(NasError, match="needs a local directory"):
        transfer.plan_get(remote, "/")


def test_small_files_are_copied_as_they_are_when_copied_not_as_planned(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    remote = LocalShare(tmp_path / "share")
    tree(tmp_path / "pics")
    plan = transfer.plan_put(remote, tmp_path / "pics")
    grown = os.urandom(transfer.SMALL_FILE + 1)  # planned as a small file, no longer one
    (tmp_path / "pics/a.jpg").write_bytes(grown)
    (tmp_path / "pics/sub/b.jpg").write_bytes(b"b")
    report = transfer.run_put(remote, plan, lambda _n: None)
    assert (report.copied, report.bytes) == (3, len(grown) + 2)
    assert (tmp_path / "share/pics/a.jpg").read_bytes() == grown
    assert (tmp_path / "share/pics/sub/b.jpg").read_bytes() == b"b"


def test_remove_refuses_the_share_root_and_needs_recursive(tmp_path: Path) -> None:
    tree(tmp_path / "share" / "pics")
    remote = LocalShare(tmp_path / "share")
    with pytest.raises(NasError, match="whole share"):
        transfer.remove(remote, "/")
    with pytest.raises(RemoteExists, match="is a directory"):
        transfer.remove(remote, "pics")
    assert transfer.remove(remote, "pics", recursive=True) == 3
    assert list((tmp_path / "share").iterdir()) == []


def test_glob_expansion(tmp_path: Path) -> None:
    tree(tmp_path / "share" / "pics")
    (tmp_path / "share" / "pics" / ".hidden.jpg").write_text("h")
    remote = LocalShare(tmp_path / "share")
    paths = lambda pat: [e.path for e in pattern.expand(remote, pat)]
    assert paths("pics/*.jpg") == ["pics/a.jpg"]
    assert paths("pics/**/*.jpg") == ["pics/a.jpg", "pics/sub/b.jpg"]
    assert paths("**/*.png") == ["pics/sub/deep/c.png"]
    assert paths("pics/.*.jpg") == ["pics/.hidden.jpg"]
    assert paths("missing/**") == []


# --------------------------------------------------------------------------- submit --over planning


def test_over_plans_one_task_per_file() -> None:
    registry = load_registry([])
    plan = dispatch.plan_over(registry, "image", {"op": "resize", "size": "64"}, ["a/x.jpg", "b/y.png"])
    assert plan == [{"path": "a/x.jpg", "op": "resize", "size": 64, "sigma": 2.0, "radius": 0, "table": ""},
                    {"path": "b/y.png", "op": "resize", "size": 64, "sigma": 2.0, "radius": 0, "table": ""}]
    with pytest.raises(BadParameter, match="has no `path` parameter") as info:
        dispatch.check_over(registry, "montecarlo-pi", {})
    assert "image" in (info.value.hint or "") and "summary" in (info.value.hint or "")
    with pytest.raises(BadParameter, match="not both"):
        dispatch.check_over(registry, "image", {"path": "x.jpg"})
    with pytest.raises(BadParameter, match="is not allowed"):
        dispatch.check_over(registry, "image", {"op": "sharpen"})
    with pytest.raises(BadParameter, match="matched no files"):
        dispatch.plan_over(registry, "image", {}, [])
    with pytest.raises(BadParameter, match="splits each file into 4 tasks") as info:
        dispatch.plan_over(registry, "summary", {}, ["data.f8"])
    assert "parts=1" in (info.value.hint or "")
    assert len(dispatch.plan_over(registry, "summary", {"parts": "1"}, ["a.f8", "b.f8"])) == 2


# --------------------------------------------------------------------------- the seam stays the seam


def test_only_the_nas_package_imports_smbprotocol() -> None:
    offenders = []
    for path in (ROOT / "piblade").rglob("*.py"):
        text = path.read_text()
        if ("import smbclient" in text or "smbprotocol" in text.replace("smbprotocol's", "")) and "nas" not in path.parts:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    code = ("import sys, piblade.nas, piblade.nas.transfer, piblade.nas.pattern, piblade.cli.nas_cmd, piblade.cli.app;"
            "print('smbprotocol' in sys.modules or 'smbclient' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"  # the CLI and local shares do not pay for importing it
