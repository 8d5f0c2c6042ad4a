"""Many small files at once: compound SMB2 requests for several files, several of them in flight.

Why this exists: one small file through smbprotocol's file objects is a
CREATE+WRITE round trip and a SET-INFO+SET-INFO+CLOSE round trip (or one
CREATE+READ+CLOSE for a download), each message built and parsed in
smbprotocol's pure-Python structures — 2–3 ms of client CPU and two waits per
file on the benchmark VM, where Samba's C ``smbclient`` spends about 0.2 ms of
CPU per file in ``mput``/``mget``. Here, on an encrypted AES-GCM session (what piblade asks for),
the messages are packed with :mod:`struct` straight into one compound request
for up to :data:`FILES_PER_FRAME` files, encrypted once and sent with one
``sendmsg``; :data:`FRAMES` such requests are in flight, and their answers are
taken apart in smbprotocol's receive thread by the :class:`~piblade.nas._wire.LeanReceiver`
(credits granted as smbprotocol does) without smbprotocol's structures.

An upload is two compounds per batch of files, and the second is only sent
once the first has answered:

1. for each file: CREATE of its hidden temporary name, then a related WRITE of the whole file;
2. for each file whose WRITE wrote every byte: SET-INFO (modification time),
   SET-INFO (rename over the real name, replacing it) and CLOSE on its handle; for
   one whose WRITE failed: SET-INFO (delete on close) and CLOSE.

The rename cannot travel in the first compound: a server goes on with a related
request after a failed WRITE (only a failed CREATE stops the chain), so a rename
there would put a short file under the real name. This way the real name only
ever sees a complete file, as with one file at a time.

A download is one compound per batch: for each file CREATE, related READ of the
size the listing showed, related CLOSE; the CREATE answer carries the file's size
and modification time, so a file whose size changed since the listing is
reported back for a normal read.

A file that fails (refused, missing, disk full) does not stop the files already
in flight: they complete (or are cleaned up), no new batch is started, and the
first failure is raised once the connection is quiet. Only
:mod:`piblade.nas.smb` uses this module; it reaches into smbprotocol's
connection as :mod:`piblade.nas._wire` does.
"""

from __future__ import annotations

import os
import queue
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from smbprotocol.connection import Ciphers
from smbprotocol.exceptions import SMBConnectionClosed
from smbprotocol.header import Commands

from piblade.nas import _wire

#: Files per compound request. With 16 (and FRAMES 4) an upload already waits on the server most of
#: the time (docs/benchmarks.md); other values were not measured.
FILES_PER_FRAME = 16
#: Compound requests (of the first kind, for uploads) in flight at once.
FRAMES = 4
#: File data per compound request at most: larger small files go fewer to a request.
FRAME_BYTES = 1 << 20
#: Seconds with no answer at all before the server counts as gone.
IDLE = 60.0
#: Seconds to wait for the answers still out after a failure (Ctrl-C, a local error).
DRAIN = 5.0

_CREATE = struct.Struct("<HBBIQQIIIIIHHII")  # MS-SMB2 2.2.13 without the buffer, 56 bytes
_CREATE_ANSWER = struct.Struct("<HBBIQQQQQQII16sII")  # MS-SMB2 2.2.14, 88 bytes
_WRITE_ANSWER = struct.Struct("<HHII")  # MS-SMB2 2.2.22 (StructureSize, Reserved, Count, Remaining)
_SET_INFO = struct.Struct("<HBBIHHI16s")  # MS-SMB2 2.2.39 without the buffer, 32 bytes
_CLOSE = struct.Struct("<HHI16s")  # MS-SMB2 2.2.15, 24 bytes
_BASIC_INFO = struct.Struct("<QQQQII")  # FileBasicInformation, 40 bytes
_RENAME_INFO = struct.Struct("<B7xQI")  # FileRenameInformation (SMB2 type 2) without the name, 20 bytes
_HEADER = _wire._SMB2_HEADER.size

_RELATED_ID = b"\xff" * 16  # "the file the previous request in this chain opened"
_FLAGS_RELATED = 0x00000004
_IMPERSONATION = 2
_NON_DIRECTORY = 0x00000040
_OPEN, _OVERWRITE_IF = 1, 5
_SHARE_RW, _SHARE_RWD = 0x3, 0x7
_READ_ACCESS = 0x00000001 | 0x00000080 | 0x00100000  # FILE_READ_DATA | FILE_READ_ATTRIBUTES | SYNCHRONIZE
_INFO_FILE = 1
_BASIC, _RENAME, _DISPOSITION = 4, 10, 13
_STATUS_END_OF_FILE = 0xC0000011
_STATUS_DIRECTORY_NOT_EMPTY = 0xC0000101


def usable(session: Any, tree: Any) -> bool:
    """True when this session can take the compound path (the lean receiver is on its connection)."""
    conn = session.connection
    return bool(
        _wire.receiver_of(conn) is not None
        and os.environ.get(_wire.LEAN_WRITE_ENV, "1") != "0"
        and getattr(conn, "cipher_id", None) in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
        and (session.encrypt_data or tree.encrypt_data)
    )


@dataclass(slots=True)
class _Message:
    command: int
    body: bytes
    charge: int = 1
    related: bool = False


@dataclass(slots=True)
class _Frame:
    """One compound request in flight: its messages' ids and, as they come, their answers."""

    kind: str
    files: list[Any]
    #: Per file, the indexes of its messages in :attr:`ids`.
    slots: list[list[int]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    answers: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    def answer(self, file_index: int, k: int) -> tuple[int, bytes]:
        return self.answers[self.ids[self.slots[file_index][k]]]


@dataclass(slots=True)
class Failure:
    """A file that did not make it: its share path and the NTSTATUS the server gave (0: see ``text``)."""

    path: str
    status: int
    text: str = ""


@dataclass(slots=True)
class Upload:
    dest: str
    tmp: str
    data: bytes
    mtime_ns: int | None
    file_id: bytes = b""


@dataclass(frozen=True, slots=True)
class Download:
    """What came back for one file: its data and modification time, or ``data`` None to read it the normal way."""

    path: str
    data: bytes | None
    mtime_ns: int


def _utf16(path: str) -> bytes:
    return path.replace("/", "\\").encode("utf-16-le")


def _create(name: str, access: int, share: int, disposition: int) -> bytes:
    encoded = _utf16(name)
    return _CREATE.pack(57, 0, 0, _IMPERSONATION, 0, 0, access, 0, share, disposition, _NON_DIRECTORY,
                        _HEADER + _CREATE.size, len(encoded), 0, 0) + (encoded or b"\0")


def _set_info(info_class: int, file_id: bytes, buffer: bytes) -> bytes:
    return _SET_INFO.pack(33, _INFO_FILE, info_class, len(buffer), _HEADER + _SET_INFO.size, 0, 0, file_id) + buffer


def _filetime(ns: int) -> int:
    return ns // 100 + 116444736000000000


def _ns(filetime: int) -> int:
    return (filetime - 116444736000000000) * 100


class Pipeline:
    """Compound requests on one session's connection: build, encrypt, send; collect the answers."""

    def __init__(self, session: Any, tree: Any) -> None:
        conn = session.connection
        receiver = _wire.receiver_of(conn)
        if receiver is None:
            raise RuntimeError("the compound path needs the lean receiver on the connection")
        self.conn = conn
        self.receiver = receiver
        self.sid = session.session_id
        self.tid = tree.tree_connect_id
        self.sealer = _wire.Sealer(session.encryption_key)
        self.sock, self.sock_lock = conn.transport._sock, conn.transport._sock_lock
        self.done: queue.SimpleQueue[_Frame] = queue.SimpleQueue()
        self.inflight: set[int] = set()  # id() of frames sent and not yet answered in full
        self.ready: list[_Frame] = []  # answered while send() waited for credits, not yet collected

    # ------------------------------------------------------------------ sending

    def send(self, frame: _Frame, messages: list[_Message]) -> None:
        """Number, pack, encrypt and send ``messages`` as one compound request answering into ``frame``."""
        charge = sum(m.charge for m in messages)
        while _wire._credits(self.conn) < charge and self.inflight:
            self.ready.append(self._collect_one())  # answers bring credits; the caller still gets this one
        first = _wire._take_ids(self.conn, charge)
        low = _wire._credits(self.conn) < 4 * charge * FRAMES
        parts: list[bytes] = []
        message_id = first
        expected = len(messages)

        def arrived(mid: int, status: int, data: bytes) -> None:  # in smbprotocol's receive thread
            frame.answers[mid] = (status, data)
            if len(frame.answers) == expected:
                self.done.put(frame)

        for i, m in enumerate(messages):
            size = _HEADER + len(m.body)
            pad = (-size) % 8 if i + 1 < len(messages) else 0
            request = m.charge * 2 if low else m.charge
            parts.append(_wire._SMB2_HEADER.pack(
                b"\xfeSMB", 64, m.charge, 0, 0, m.command, request, _FLAGS_RELATED if m.related else 0,
                size + pad if i + 1 < len(messages) else 0, message_id, 0, self.tid, self.sid, bytes(16)))
            parts.append(m.body)
            if pad:
                parts.append(bytes(pad))
            frame.ids.append(message_id)
            self.receiver.mine[message_id] = arrived
            message_id += m.charge
        self.inflight.add(id(frame))
        try:
            _wire._seal_and_send(self.conn, self.sealer, self.sock, self.sock_lock, memoryview(b"".join(parts)),
                                 self.sid)
        except BaseException:
            self.forget(frame)
            raise

    def forget(self, frame: _Frame) -> None:
        for mid in frame.ids:
            self.receiver.mine.pop(mid, None)
        self.inflight.discard(id(frame))

    # ------------------------------------------------------------------ receiving

    def _collect_one(self, limit: float = IDLE) -> _Frame:
        """Wait for the next frame answered in full (in the order they are answered)."""
        idle = 0.0
        while True:
            try:
                frame = self.done.get(timeout=0.5)
            except queue.Empty:
                self.conn._check_worker_running()  # raises what killed the receive thread
                if not self.conn.transport.connected:
                    raise SMBConnectionClosed("the SMB connection was closed") from None
                idle += 0.5
                if idle >= limit:
                    raise TimeoutError(f"no answer from the server for {limit:.0f} s") from None
                continue
            self.inflight.discard(id(frame))
            return frame

    def collect(self) -> _Frame:
        """The next frame answered in full."""
        return self.ready.pop(0) if self.ready else self._collect_one()

    def abandon(self, frames: list[_Frame]) -> None:
        """After an exception: wait (up to :data:`DRAIN` s) for these frames' answers, and drop them.

        Their answers hold the credits the session needs for its next request. A
        frame still out after that keeps its ids claimed, so that smbprotocol's
        thread never meets an answer it has no request for (it would stop, and
        the session with it).
        """
        waiting = {id(frame) for frame in frames}
        deadline = time.monotonic() + DRAIN
        while waiting & self.inflight and time.monotonic() < deadline:
            try:
                waiting.discard(id(self._collect_one(DRAIN)))
            except Exception:  # noqa: BLE001 - the connection is gone; the first error is what gets raised
                break
        for frame in frames:
            for mid in frame.ids:
                if mid in self.receiver.mine:
                    self.receiver.mine[mid] = _dropped
            self.inflight.discard(id(frame))


def _dropped(_mid: int, _status: int, _data: bytes) -> None:
    """Where the answer to an abandoned request goes."""


def _batches(items: Iterator[Any], size_of: Callable[[Any], int]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    held = 0
    for item in items:
        n = size_of(item)
        if batch and (len(batch) >= FILES_PER_FRAME or held + n > FRAME_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += n
    if batch:
        yield batch


def _charge(n: int) -> int:
    return max(1, (n - 1) // _wire.CREDIT_BYTES + 1)


def put_many(pipe: Pipeline, uploads: Iterator[Upload], progress: _wire.Progress) -> tuple[list[Failure], list[str]]:
    """Upload every file of ``uploads`` (temporary name, then rename).

    Returns the files that failed, in the order their answers came, and the
    temporary files a failed rename left behind (the caller removes them).
    """
    failures: list[Failure] = []
    batches = _batches(uploads, lambda u: len(u.data))
    out: list[_Frame] = []
    leftovers: list[str] = []  # temporary files a failed rename left behind
    local: Exception | None = None  # reading the next local file failed: finish what is out, then raise it
    try:
        more = True
        while True:
            while more and not failures and sum(f.kind == "write" for f in out) < FRAMES:
                try:
                    batch = next(batches, None)
                except Exception as exc:  # noqa: BLE001 - raised below, once the files in flight are done
                    local, batch = exc, None
                if batch is None:
                    more = False
                    break
                out.append(_send_writes(pipe, batch))
            if not out:
                break
            frame = pipe.collect()
            out.remove(frame)
            if frame.kind == "write":
                finish = _after_writes(frame, failures)
                if finish:
                    out.append(_send_finish(pipe, finish))
            else:
                for i, upload in enumerate(frame.files):
                    status = _finish_status(frame, i)
                    if status:
                        failures.append(Failure(upload.dest, status))
                        leftovers.append(upload.tmp)
                    else:
                        progress(len(upload.data))
    except BaseException:
        pipe.abandon(out)
        raise
    if local is not None:
        raise local
    return failures, leftovers


def _send_writes(pipe: Pipeline, batch: list[Upload]) -> _Frame:
    frame = _Frame("write", batch)
    messages: list[_Message] = []
    for upload in batch:
        slot = [len(messages)]
        messages.append(_Message(Commands.SMB2_CREATE, _create(upload.tmp, _UPLOAD_ACCESS, _SHARE_RWD, _OVERWRITE_IF)))
        if upload.data:
            slot.append(len(messages))
            body = _wire._WRITE_HEADER.pack(49, _wire._PREFIX, len(upload.data), 0, _RELATED_ID, 0, 0, 0, 0, 0)
            messages.append(_Message(Commands.SMB2_WRITE, body + upload.data, _charge(len(upload.data)), True))
        frame.slots.append(slot)
    pipe.send(frame, messages)
    return frame


def _after_writes(frame: _Frame, failures: list[Failure]) -> list[tuple[Upload, bool]]:
    """Each opened file with whether its data is all written; a file that did not open is a failure now."""
    finish: list[tuple[Upload, bool]] = []
    for i, upload in enumerate(frame.files):
        status, answer = frame.answer(i, 0)
        if status:
            failures.append(Failure(upload.dest, status))
            continue
        upload.file_id = _CREATE_ANSWER.unpack_from(answer, _HEADER)[12]
        written = True
        if upload.data:
            status, answer = frame.answer(i, 1)
            if status:
                failures.append(Failure(upload.dest, status))
                written = False
            else:
                count = _WRITE_ANSWER.unpack_from(answer, _HEADER)[2]
                if count != len(upload.data):
                    failures.append(Failure(upload.dest, 0, f"the server wrote {count} of {len(upload.data)} bytes"))
                    written = False
        finish.append((upload, written))
    return finish


def _send_finish(pipe: Pipeline, finish: list[tuple[Upload, bool]]) -> _Frame:
    frame = _Frame("finish", [u for u, written in finish if written])
    messages: list[_Message] = []
    for upload, written in finish:
        fid = upload.file_id
        if written:
            slot = []
            if upload.mtime_ns is not None:
                slot.append(len(messages))
                basic = _BASIC_INFO.pack(0, 0, _filetime(upload.mtime_ns), 0, 0, 0)
                messages.append(_Message(Commands.SMB2_SET_INFO, _set_info(_BASIC, fid, basic)))
            slot.append(len(messages))
            name = _utf16(upload.dest)
            rename = _RENAME_INFO.pack(1, 0, len(name)) + name
            messages.append(_Message(Commands.SMB2_SET_INFO, _set_info(_RENAME, fid, rename)))
            frame.slots.append(slot)
        else:  # remove the temporary file with the handle that made it
            messages.append(_Message(Commands.SMB2_SET_INFO, _set_info(_DISPOSITION, fid, b"\x01")))
        messages.append(_Message(Commands.SMB2_CLOSE, _CLOSE.pack(24, 0, 0, fid)))
    pipe.send(frame, messages)
    return frame


def _finish_status(frame: _Frame, i: int) -> int:
    for k in range(len(frame.slots[i])):
        status, _ = frame.answer(i, k)
        if status:
            return status
    return 0


def get_many(pipe: Pipeline, wanted: Iterator[tuple[str, int]], failures: list[Failure]) -> Iterator[Download]:
    """For each (path, size the listing showed), its data and modification time, as the answers come.

    A file that failed is added to ``failures`` (no new batch is sent after the
    first); the caller stops once this generator ends and raises the first.
    """
    batches = _batches(wanted, lambda w: w[1])
    out: list[_Frame] = []
    try:
        more = True
        while True:
            while more and not failures and len(out) < FRAMES:
                batch = next(batches, None)
                if batch is None:
                    more = False
                    break
                out.append(_send_reads(pipe, batch))
            if not out:
                return
            frame = pipe.collect()
            out.remove(frame)
            yield from _after_reads(frame, failures)
    finally:
        if out:
            pipe.abandon(out)


def _send_reads(pipe: Pipeline, batch: list[tuple[str, int]]) -> _Frame:
    frame = _Frame("read", batch)
    messages: list[_Message] = []
    for path, size in batch:
        slot = [len(messages)]
        messages.append(_Message(Commands.SMB2_CREATE, _create(path, _READ_ACCESS, _SHARE_RW, _OPEN)))
        if size:
            slot.append(len(messages))
            # StructureSize 49, Padding 0x50, as smbprotocol sends a READ.
            body = _wire._READ_HEADER.pack(49, 0x50, 0, size, 0, _RELATED_ID, 0, 0, 0, 0, 0, 0)
            messages.append(_Message(Commands.SMB2_READ, body, _charge(size), True))
        messages.append(_Message(Commands.SMB2_CLOSE, _CLOSE.pack(24, 0, 0, _RELATED_ID), 1, True))
        frame.slots.append(slot)
    pipe.send(frame, messages)
    return frame


def _after_reads(frame: _Frame, failures: list[Failure]) -> Iterator[Download]:
    for i, (path, size) in enumerate(frame.files):
        status, answer = frame.answer(i, 0)
        if status:
            failures.append(Failure(path, status))
            continue
        fields = _CREATE_ANSWER.unpack_from(answer, _HEADER)
        mtime_ns, end_of_file = _ns(fields[6]), fields[9]
        data = b""
        if size:
            status, answer = frame.answer(i, 1)
            if status and status != _STATUS_END_OF_FILE:
                failures.append(Failure(path, status))
                continue
            if not status:
                _, offset, _, length, _, _ = _wire._READ_ANSWER.unpack_from(answer, _HEADER)
                data = answer[offset : offset + length]
        yield Download(path, data if end_of_file == len(data) == size else None, mtime_ns)


#: Access for an upload's temporary file (as piblade.nas.smb's one-file path asks).
_UPLOAD_ACCESS = 0x00000002 | 0x00000100 | 0x00000080 | 0x00010000 | 0x00100000


# --------------------------------------------------------------------------- listing a directory

_QUERY_DIRECTORY = struct.Struct("<HBBI16sHHI")  # MS-SMB2 2.2.33 without the buffer, 32 bytes
_QUERY_ANSWER = struct.Struct("<HHI")  # MS-SMB2 2.2.34 without the buffer
_DIRECTORY_INFO = struct.Struct("<IIQQQQQQII")  # FileDirectoryInformation without the name, 64 bytes
_LIST_ACCESS = 0x00000001 | 0x00000080 | 0x00100000  # FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES | SYNCHRONIZE
_DIRECTORY_FILE = 0x00000001
_FILE_DIRECTORY_INFORMATION = 1
_ATTRIBUTE_DIRECTORY = 0x10
_STATUS_NO_MORE_FILES = 0x80000006
#: Bytes of directory entries per answer: ~12,000 names of 20 characters.
LISTING_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime_ns: int


def list_dir(pipe: Pipeline, path: str) -> list[Entry] | Failure | None:
    """The entries of directory ``path`` (without ``.`` and ``..``) in one round trip, or the failure.

    CREATE, QUERY_DIRECTORY and CLOSE go in one compound request. None: the
    directory holds more than one answer's worth of names; list it the usual way.
    """
    charge = _charge(LISTING_BYTES)
    query = _QUERY_DIRECTORY.pack(33, _FILE_DIRECTORY_INFORMATION, 0, 0, _RELATED_ID, _HEADER + _QUERY_DIRECTORY.size,
                                  2, LISTING_BYTES) + "*".encode("utf-16-le")
    frame = _Frame("list", [path], [[0, 1, 2]])
    encoded = _utf16(path)
    create = _CREATE.pack(57, 0, 0, _IMPERSONATION, 0, 0, _LIST_ACCESS, 0, _SHARE_RWD, _OPEN, _DIRECTORY_FILE,
                          _HEADER + _CREATE.size, len(encoded), 0, 0) + (encoded or b"\0")
    pipe.send(frame, [_Message(Commands.SMB2_CREATE, create),
                      _Message(Commands.SMB2_QUERY_DIRECTORY, query, charge, True),
                      # A second query tells whether the first one had every name.
                      _Message(Commands.SMB2_QUERY_DIRECTORY, query, charge, True),
                      _Message(Commands.SMB2_CLOSE, _CLOSE.pack(24, 0, 0, _RELATED_ID), 1, True)])
    while pipe.collect() is not frame:
        pass  # (nothing else is in flight while a directory is listed)
    status, answer = frame.answer(0, 0)
    if status:
        return Failure(path, status)
    status, answer = frame.answer(0, 1)
    if status == _STATUS_NO_MORE_FILES:
        return []
    if status:
        return Failure(path, status)
    if frame.answer(0, 2)[0] != _STATUS_NO_MORE_FILES:
        return None
    entries: list[Entry] = []
    _, offset, length = _QUERY_ANSWER.unpack_from(answer, _HEADER)
    at, end = offset, offset + length
    while at < end:
        following, _, _, _, written, _, eof, _, attributes, name_length = _DIRECTORY_INFO.unpack_from(answer, at)
        start = at + _DIRECTORY_INFO.size
        name = answer[start : start + name_length].decode("utf-16-le")
        if name not in (".", ".."):
            entries.append(Entry(name, bool(attributes & _ATTRIBUTE_DIRECTORY), eof, _ns(written)))
        if not following:
            break
        at += following
    return entries
