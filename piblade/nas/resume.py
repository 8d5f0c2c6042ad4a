"""Interrupted copies go on where they stopped, and never take over a copy still in progress.

A copy writes a *part* (a hidden temporary file) and renames it over the real
name when complete. To resume, a copy needs to know how much of its part is
good. SMB offers no server-side checksum, so the writer keeps a *record* while
sending: the source's size and modification time, and the SHA-256 of each
:data:`BLOCK` of it that the other side has acknowledged. The next copy of the
same file checks that the source is unchanged, re-reads only the last recorded
block from the part and compares its hash, and goes on from there; anything
else starts over.

* **Where.** Records live on this machine, under ``<state>/nas-resume/``, keyed
  by the share and the destination: only the machine that holds the source can
  resume. An upload's part is named after this machine
  (``.<name>.piblade-<host>.part``), so parts of other machines' uploads are
  never touched (a part left for an hour is cleaned up, as before).
* **Who.** The record's lock (``flock``) is held for as long as a copy runs. A
  copy that finds it held leaves that part alone and copies under a random
  name, the way it did before resumes existed.
* **Signals.** Ctrl-C, SIGTERM and SIGHUP stop a copy the same way, between
  two requests (never inside one, which would leave half a frame on the SMB
  connection): the part and its record stay, and the same command resumes.
  A second signal stops at once.
* **Crashes.** After SIGKILL the record is at most one block behind the part.
  A download's part is flushed to disk (fsync) before each record that counts
  it, so a power cut here cannot leave the record ahead of the data. An
  upload's record counts what the server acknowledged; if the NAS itself loses
  power before writing that to its disk, only the last recorded block is
  checked on resume (re-reading every block would cost what resuming saves):
  use ``--checksum`` on the next put to be sure.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Self

from piblade.nas.paths import join, name, parent
from piblade.state import private_dir, state_dir, write_private

#: Bytes per recorded hash: at most this much is sent again after a kill.
BLOCK = 16 << 20


def host_tag() -> str:
    """Eight hex digits naming this writer in part names.

    The host name alone is not enough (every fresh Raspberry Pi OS is called
    ``raspberrypi``): the machine id, the user and the state directory (where
    the record and its lock live) go in too, so two writers never share a part.
    """
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    seed = "\0".join((socket.gethostname(), machine, str(os.getuid()), str(state_dir())))
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


def upload_part(dest: str) -> str:
    """The part an upload from this machine to ``dest`` writes (a temporary name: hidden, listed by nobody)."""
    return join(parent(dest), f".{name(dest)}.piblade-{host_tag()}.part")


def download_part(target: Path) -> Path:
    return target.with_name(f".{target.name}.piblade-{host_tag()}.part")


@dataclass(slots=True)
class Record:
    """What is known good of a part: the source it copies, and hashes of the blocks acknowledged."""

    source: str
    size: int
    mtime_ns: int
    block: int = BLOCK
    hashes: list[str] = field(default_factory=list)

    @property
    def committed(self) -> int:
        return min(self.size, len(self.hashes) * self.block)

    def matches(self, source: str, size: int, mtime_ns: int) -> bool:
        return (self.source, self.size, self.mtime_ns, self.block) == (source, size, mtime_ns, BLOCK)

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "size": self.size, "mtime_ns": self.mtime_ns,
                           "block": self.block, "hashes": self.hashes})

    @classmethod
    def from_json(cls, text: str) -> Record | None:
        try:
            data = json.loads(text)
            return cls(str(data["source"]), int(data["size"]), int(data["mtime_ns"]), int(data["block"]),
                       [str(h) for h in data["hashes"]])
        except (ValueError, KeyError, TypeError):
            return None


class Slot:
    """The record of one destination and its lock; ``acquire`` fails while another copy holds it."""

    def __init__(self, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.dir = state_dir() / "nas-resume"
        self.path = self.dir / f"{digest}.json"
        self._lock: IO[bytes] | None = None

    def acquire(self) -> bool:
        private_dir(self.dir)
        handle = open(self.path.with_suffix(".lock"), "ab")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def load(self) -> Record | None:
        try:
            return Record.from_json(self.path.read_text())
        except OSError:
            return None

    def save(self, record: Record) -> None:
        write_private(self.path, record.to_json())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class Recorder:
    """Hashes the bytes of a copy block by block as they pass, and saves the blocks the far side has.

    ``feed`` sees the data in order (as it is read for sending, or written on
    arrival); ``acknowledged`` is told how many bytes the far side holds, and
    the record is saved each time that passes a block boundary.
    """

    def __init__(self, slot: Slot, record: Record, before_save: Callable[[], None] | None = None) -> None:
        self.slot = slot
        self.record = record
        #: Makes the counted data durable first (a download's fsync).
        self.before_save = before_save
        self.hashes = list(record.hashes)
        self._digest = hashlib.sha256()
        self._in_block = 0
        self._acked = record.committed

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            room = self.record.block - self._in_block
            piece = view[:room]
            self._digest.update(piece)
            self._in_block += len(piece)
            view = view[len(piece):]
            if self._in_block == self.record.block:
                self._close_block()

    def _close_block(self) -> None:
        self.hashes.append(self._digest.hexdigest())
        self._digest = hashlib.sha256()
        self._in_block = 0

    def acknowledged(self, n: int) -> None:
        self._acked += n
        good = min(self._acked // self.record.block, len(self.hashes))
        if good > len(self.record.hashes):
            if self.before_save is not None:
                self.before_save()
            self.record.hashes = self.hashes[:good]
            self.slot.save(self.record)


class HashingReader:
    """A local file read for sending, with every byte read passed to ``feed``."""

    def __init__(self, raw: BinaryIO, feed: Callable[[bytes | memoryview], None]) -> None:
        self.raw = raw
        self.feed = feed

    def readinto(self, view: Any) -> int:
        got = self.raw.readinto(view)  # type: ignore[attr-defined]
        if got:
            self.feed(memoryview(view)[:got])
        return got or 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.feed(data)
        return data


class HashingWriter:
    """A local part written on arrival, with every byte passed to ``feed``."""

    def __init__(self, raw: BinaryIO, feed: Callable[[bytes | memoryview], None]) -> None:
        self.raw = raw
        self.feed = feed

    def write(self, data: Any) -> int:
        written = self.raw.write(data)
        self.feed(data)
        return written


def resume_point(slot: Slot, source: str, size: int, mtime_ns: int, part_size: int | None,
                 read_block: Callable[[int, int], bytes]) -> tuple[int, Record]:
    """Where a copy goes on from, and the record to go on with (a new one, saved, when it starts over)."""
    record = slot.load()
    start = good_prefix(record, source, size, mtime_ns, part_size, read_block)
    if not start or record is None:
        record = Record(source, size, mtime_ns)
        slot.save(record)
    return start, record


def good_prefix(record: Record | None, source: str, size: int, mtime_ns: int, part_size: int | None,
                read_block: Callable[[int, int], bytes]) -> int:
    """How many bytes of a part can be kept: 0 unless the source is unchanged and the last block checks out.

    ``part_size`` is the part's current size (None: there is none);
    ``read_block(offset, length)`` reads from the part.
    """
    if record is None or part_size is None or not record.matches(source, size, mtime_ns) or not record.hashes:
        return 0
    committed = record.committed
    if part_size < committed:
        return 0
    last = (len(record.hashes) - 1) * record.block
    if sha256(read_block(last, committed - last)) != record.hashes[-1]:
        return 0
    return committed
