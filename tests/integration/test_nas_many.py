"""Many small files per compound request, several requests in flight, against a real smbd.

What these check: every byte and time stamp arrives both ways; files really
travel many to a request; a file the server refuses in the middle of a
request is reported by name, the files beside it still arrive whole, nothing
is left half-done (no partial file under a real name, no temporary file), and
running the same command again finishes the job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import smbclient

from piblade.nas import _compound, _wire, transfer
from piblade.nas.errors import NasPermissionDenied, RemoteNotFound
from piblade.nas.paths import is_temp_name
from piblade.nas.share import SmallFile
from piblade.nas.smb import SmbShare
from tests.integration.smbd import SambaServer

pytestmark = pytest.mark.integration

#: Sizes that take every branch: empty (no WRITE/READ), tiny, one credit, two credits, several.
SIZES = (0, 1, 4096, 65_537, 200_000)


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of messages in each compound request sent (counted on piblade's side of the seam)."""
    sent: list[int] = []
    original = _compound.Pipeline.send

    def counting(self: _compound.Pipeline, frame: object, messages: list[object]) -> None:
        sent.append(len(messages))
        original(self, frame, messages)  # type: ignore[arg-type]

    monkeypatch.setattr(_compound.Pipeline, "send", counting)
    return sent


def make_files(root: Path, count: int) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        rel = f"d{i % 3}/f{i:03d}.bin"
        files[rel] = os.urandom(SIZES[i % len(SIZES)])
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
        os.utime(root / rel, ns=(1_700_000_000_000_000_000 + i * 1_000_000_000,) * 2)
    return files


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if is_temp_name(p.name) or p.name.endswith(".part")]


def test_many_small_files_round_trip_in_compound_requests(smbd: SambaServer, share: SmbShare, tmp_path: Path,
                                                          frames: list[int]) -> None:
    files = make_files(tmp_path / "src", 300)
    assert _compound.usable(share._session, share._tree)

    report = transfer.run_put(share, transfer.plan_put(share, tmp_path / "src", "up"), lambda _n: None)
    assert (report.copied, report.bytes) == (300, sum(map(len, files.values())))
    assert tree_of(smbd.share_dir / "up") == files
    for rel in files:
        assert (smbd.share_dir / "up" / rel).stat().st_mtime_ns == (tmp_path / "src" / rel).stat().st_mtime_ns
    assert leftovers(smbd.share_dir) == []
    # Many files to a request (two requests per batch of files: CREATE+WRITE, then time+rename+CLOSE).
    assert len(frames) < 300 / 4
    assert max(frames) == 3 * _compound.FILES_PER_FRAME

    seen: list[int] = []
    frames.clear()
    report = transfer.run_get(share, transfer.plan_get(share, "up", tmp_path / "back"), seen.append)
    assert report.copied == 300 and sum(seen) == report.bytes
    assert tree_of(tmp_path / "back") == files
    for rel in files:
        assert (tmp_path / "back" / rel).stat().st_mtime_ns == (smbd.share_dir / "up" / rel).stat().st_mtime_ns
    assert leftovers(tmp_path / "back") == []
    assert 0 < len(frames) < 300 / 8
    receiver = _wire.receiver_of(share._session.connection)
    assert receiver is not None and receiver.mine == {}  # every answer collected

    # The same session goes on with ordinary requests.
    assert share.stat("up/d0/f000.bin") is not None


def test_without_the_lean_path_the_same_files_go_one_at_a_time(smbd: SambaServer, share: SmbShare, tmp_path: Path,
                                                               frames: list[int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLADE_SMB_LEAN_WRITE", "0")
    files = make_files(tmp_path / "src", 12)
    transfer.run_put(share, transfer.plan_put(share, tmp_path / "src", "up"), lambda _n: None)
    transfer.run_get(share, transfer.plan_get(share, "up", tmp_path / "back"), lambda _n: None)
    assert tree_of(smbd.share_dir / "up") == files == tree_of(tmp_path / "back")
    assert frames == []


def test_a_refused_upload_mid_request_is_named_and_the_rest_arrive(smbd: SambaServer, share: SmbShare,
                                                                   tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", 40)
    (smbd.share_dir / "up" / "d2").mkdir(parents=True)
    held = "up/d2/f017.bin"  # in the middle of the second request
    (smbd.share_dir / held).write_bytes(b"the old copy")
    with SmbShare(smbd.target()) as other, \
            smbclient.open_file(other._unc(held), mode="rb", share_access=None, **other._kw()), \
            pytest.raises(NasPermissionDenied) as info:
        transfer.run_put(share, transfer.plan_put(share, tmp_path / "src", "up"), lambda _n: None)
    # (Replacing a file another client holds open is refused as ACCESS_DENIED by Samba.)
    assert info.value.message == f"{held}: the NAS refused access (STATUS_ACCESS_DENIED)"
    assert info.value.hint and "another program may have the file open" in info.value.hint
    arrived = tree_of(smbd.share_dir / "up")
    assert arrived[held[3:]] == b"the old copy"  # not replaced, not half-written
    assert all(arrived[rel] == files[rel] for rel in arrived if rel != held[3:])
    assert {"d1/f016.bin", "d0/f018.bin"} <= set(arrived)  # its neighbours in the same request
    assert leftovers(smbd.share_dir) == []

    # The same command again copies what is missing.
    transfer.run_put(share, transfer.plan_put(share, tmp_path / "src", "up"), lambda _n: None)
    assert tree_of(smbd.share_dir / "up") == files


def test_a_missing_directory_mid_request_is_named_and_the_rest_arrive(smbd: SambaServer, share: SmbShare) -> None:
    batch = [SmallFile(f"f{i}.bin", bytes([i]) * 100, None) for i in range(8)]
    batch[3] = SmallFile("nowhere/f3.bin", b"x", None)
    with pytest.raises(RemoteNotFound) as info:
        share.write_many(iter(batch), lambda _n: None)
    assert info.value.message == f"nowhere/f3.bin: no such file or directory on {share.description}"
    assert tree_of(smbd.share_dir) == {f"f{i}.bin": bytes([i]) * 100 for i in range(8) if i != 3}


def test_a_refused_download_mid_request_is_named_and_the_rest_arrive(smbd: SambaServer, share: SmbShare,
                                                                     tmp_path: Path) -> None:
    files = make_files(smbd.share_dir / "up", 40)
    held = "up/d2/f017.bin"
    with SmbShare(smbd.target()) as other, \
            smbclient.open_file(other._unc(held), mode="r+b", share_access=None, **other._kw()), \
            pytest.raises(NasPermissionDenied) as info:
        transfer.run_get(share, transfer.plan_get(share, "up", tmp_path / "back"), lambda _n: None)
    assert info.value.message == f"{held}: the NAS refused access (STATUS_SHARING_VIOLATION)"
    got = tree_of(tmp_path / "back")
    assert held[3:] not in got
    assert all(got[rel] == files[rel] for rel in got)
    assert {"d1/f016.bin", "d0/f018.bin"} <= set(got)
    assert leftovers(tmp_path / "back") == []

    transfer.run_get(share, transfer.plan_get(share, "up", tmp_path / "back"), lambda _n: None)
    assert tree_of(tmp_path / "back") == files


def test_a_file_that_changed_size_since_the_listing_is_read_again(smbd: SambaServer, share: SmbShare,
                                                                  tmp_path: Path) -> None:
    (smbd.share_dir / "a.bin").write_bytes(b"short")
    (smbd.share_dir / "b.bin").write_bytes(b"bee")
    plan = transfer.plan_get(share, "", tmp_path / "back")
    (smbd.share_dir / "a.bin").write_bytes(b"much longer now")
    transfer.run_get(share, plan, lambda _n: None)
    assert tree_of(tmp_path / "back") == {"a.bin": b"much longer now", "b.bin": b"bee"}


def test_a_local_failure_mid_transfer_leaves_the_session_usable(smbd: SambaServer, share: SmbShare) -> None:
    def files() -> Iterator[SmallFile]:
        for i in range(40):
            yield SmallFile(f"f{i:02d}.bin", bytes([i]) * 1000, None)
        raise OSError("the local disk went away")  # with requests still in flight

    with pytest.raises(OSError, match="went away"):
        share.write_many(files(), lambda _n: None)
    arrived = tree_of(smbd.share_dir)  # the files already sent were finished, not left as temporary files
    assert {f"f{i:02d}.bin" for i in range(2 * _compound.FILES_PER_FRAME)} <= set(arrived)
    assert all(data == bytes([int(name[1:3])]) * 1000 for name, data in arrived.items())
    assert leftovers(smbd.share_dir) == []
    got = share.read_many((f"f{i:02d}.bin", 1000) for i in range(20))
    next(got)
    got.close()  # the caller stops reading with requests in flight: their answers are waited for, dropped
    assert share.stat("f00.bin") is not None  # and the same session goes on
    share.write_many(iter([SmallFile("after.bin", b"ok", None)]), lambda _n: None)
    assert (smbd.share_dir / "after.bin").read_bytes() == b"ok"
    receiver = _wire.receiver_of(share._session.connection)
    assert receiver is not None and receiver.mine == {}
