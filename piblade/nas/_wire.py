"""Moving file bytes over SMB fast: several 4 MiB requests in flight, a lean encrypted write and read.

Why this exists: smbprotocol's file objects send one READ/WRITE and wait for
its answer before the next, and build each encrypted 1 MiB WRITE with about
eight copies of the payload (structure packing, compounding, transform header,
socket framing). Its receive thread is no better: each encrypted 1 MiB READ
answer is copied about eight times between the socket and the caller (the
frame assembled from ``recv`` pieces, the transform header's structure, data
plus tag for the cipher, the transform packed again for its associated data,
header and READ structures). On loopback that is ~300 MB/s for uploads where
Samba's own ``smbclient`` does ~700, and downloads at half smbclient's rate.

* :func:`read_into` keeps ``DEPTH`` READ requests outstanding. On an
  encrypted AES-GCM session it sends each READ itself (framed and encrypted
  like the lean WRITE below) and the :class:`LeanReceiver` stands in for the
  transport's ``recv`` in smbprotocol's receive thread: it reads each frame
  with ``recv_into`` into one reused buffer, decrypts it once, and for the
  answer to one of those READs keeps the file data aside (a view into the
  plaintext, written to the sink by the caller) and hands the thread only the
  headers. Every other frame is handed on decrypted and whole, so
  smbprotocol's own processing (credits, pending answers, errors, compounds)
  is unchanged. Otherwise it uses smbprotocol's ``Open.read(send=False)`` /
  ``Connection.send``.
* :func:`write_from` does the same for WRITE. On an encrypted SMB 3.1.1
  session with AES-GCM (what piblade asks for by default) it builds each
  request in one preallocated buffer — SMB2 header, WRITE header and the file
  data read straight into place — encrypts it once into a second reused buffer
  (:class:`Sealer`) and hands the pieces to ``sendmsg``; the request is registered with smbprotocol's connection exactly
  as ``Connection._send`` does, so its receive thread matches the answer.
  Anything else (signing only, AES-CCM, DFS) takes the generic pipelined path.

This reaches into smbprotocol internals (``sequence_window``, ``sequence_lock``,
``outstanding_requests``, ``session_table``, ``transport._sock``,
``transport._close_lock``); the dependency is pinned below 2.0 and the
integration tests move and compare bytes through both paths (set
``PIBLADE_SMB_LEAN_WRITE=0`` / ``PIBLADE_SMB_LEAN_READ=0`` to force the generic
ones). Only :mod:`piblade.nas.smb` and :mod:`piblade.nas._compound` import this module.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import socket
import struct
import timeit
from collections.abc import Callable
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smbprotocol.connection import Ciphers, Dialects, Request, SMB2Echo
from smbprotocol.exceptions import SMBException
from smbprotocol.header import Commands, SMB2HeaderRequest
from smbprotocol.open import SMB2ReadRequest, SMB2ReadResponse, SMB2WriteRequest

from piblade import envvars

#: Bytes per pipelined READ/WRITE request (FIELD-NOTES: the 64 KiB default is ~4x slower). 4 MiB
#: needs a quarter of the requests of 1 MiB, each costing ~0.1 ms of Python (smbprotocol's header
#: structures): ~15 % less client CPU both ways on loopback; 8 MiB (Samba's limit) was no better.
CHUNK = 4 << 20
#: Requests kept in flight; 4 measured best on loopback (2 and 8 were no faster).
DEPTH = 4
#: Files up to this size go in one compound request (CREATE+WRITE, CREATE+READ+CLOSE) instead.
SMALL_FILE = 1 << 20
#: SMB2 grants one credit per 64 KiB of payload.
CREDIT_BYTES = 65536
LEAN_WRITE_ENV = envvars.SMB_LEAN_WRITE.name
LEAN_READ_ENV = envvars.SMB_LEAN_READ.name

_SMB2_HEADER = struct.Struct("<4sHHHHHHIIQIIQ16s")  # MS-SMB2 2.2.1.2, 64 bytes
_WRITE_HEADER = struct.Struct("<HHIQ16sIIHHI")  # MS-SMB2 2.2.21 without the buffer, 48 bytes
_READ_HEADER = struct.Struct("<HBBIQ16sIIIHHB")  # MS-SMB2 2.2.19 with its one-byte buffer, 49 bytes
_READ_ANSWER = struct.Struct("<HBBIII")  # MS-SMB2 2.2.20 without the buffer, 16 bytes
_TRANSFORM = struct.Struct("<4s16s16sIHHQ")  # MS-SMB2 2.2.41, 52 bytes
_PREFIX = _SMB2_HEADER.size + _WRITE_HEADER.size  # data starts at 0x70, as DataOffset says
_ANSWER_HEAD = _SMB2_HEADER.size + _READ_ANSWER.size  # what the receive thread gets of a lean READ's answer
_TAG = 16  # AES-GCM tag, carried as the transform header's signature
_BLOCK = 16  # AES block
_STATUS_PENDING = 0x00000103
_FLAGS_ASYNC = 0x00000002
_TAKEN = object()  # what _recv_frame returns for a frame it handed to its callbacks

Progress = Callable[[int], None]


class ShortTransfer(Exception):
    """The server moved fewer bytes than asked (a write that was cut short)."""


def _credits(conn: Any) -> int:
    return int(conn.sequence_window["high"] - conn.sequence_window["low"])


def _credit_request(conn: Any, charge: int) -> int:
    """Ask for more credits while the window is smaller than the pipeline needs."""
    return charge * 2 if _credits(conn) < charge * (DEPTH + 1) else charge


def _next_size(conn: Any, want: int, busy: bool) -> int:
    """Bytes for the next request within the credits we hold; 0 means wait for an answer first."""
    have = _credits(conn)
    if have * CREDIT_BYTES >= want:
        return want
    if busy:
        return 0  # answers bring credits back
    return min(want, max(1, have) * CREDIT_BYTES)


def _fill(source: BinaryIO, view: memoryview) -> int:
    """Read exactly ``len(view)`` bytes from ``source`` into ``view`` (fewer only at end of file)."""
    done = 0
    while done < len(view):
        got = source.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done


def _drain(inflight: collections.deque[Any], recv: Callable[[Any], Any]) -> None:
    """Collect every outstanding answer after a failure, so the connection stays in step."""
    while inflight:
        try:
            recv(inflight.popleft()[0])
        except Exception:  # noqa: BLE001, S110 - the first failure is what gets raised; these are its echoes
            pass


Reader = tuple[Callable[[int, int, int], Any], Callable[[Any], Any]]  # (send(offset, length, charge), answer(request))


def read_into(fd: Any, sink: BinaryIO, size: int, progress: Progress, start: int = 0) -> int:
    """Copy bytes ``[start, size)`` of the open file ``fd`` (an smbprotocol ``Open``) into ``sink``.

    Up to DEPTH READ requests are in flight. With the :class:`LeanReceiver` on
    the connection (encrypted AES-GCM sessions) the data reaches ``sink`` as a
    view into the one decrypted copy; else through smbprotocol's parsing.
    """
    conn = fd.connection
    chunk = min(CHUNK, conn.max_read_size)
    receiver = receiver_of(conn)
    send, answer = _lean_reader(fd, receiver) if receiver is not None else _generic_reader(fd)
    if receiver is not None and size - start > SMALL_FILE:  # buffers for the answers in flight and one being written
        receiver.spare = [bytearray(min(chunk, size - start) + _ANSWER_HEAD + _BLOCK) for _ in range(DEPTH + 1)]
    inflight: collections.deque[tuple[Any, int]] = collections.deque()
    offset, done = start, 0
    try:
        while offset < size or inflight:
            while offset < size and len(inflight) < DEPTH:
                n = _next_size(conn, min(chunk, size - offset), bool(inflight))
                if not n:
                    break
                charge = (n - 1) // CREDIT_BYTES + 1
                inflight.append((send(offset, n, charge), n))
                offset += n
            request, n = inflight.popleft()
            data = answer(request)
            if len(data) != n:
                raise ShortTransfer(f"asked for {n} bytes, got {len(data)}")
            sink.write(data)  # a write is done with its argument when it returns (io's rule)
            if receiver is not None:
                receiver.recycle(data)
            done += n
            progress(n)
    finally:
        _drain(inflight, answer)
        if receiver is not None:
            receiver.spare = []
    return done


def _generic_reader(fd: Any) -> Reader:
    conn = fd.connection
    sid = fd.tree_connect.session.session_id
    tid = fd.tree_connect.tree_connect_id

    def send(offset: int, n: int, charge: int) -> Any:
        msg, _ = fd.read(offset, n, send=False)
        return conn.send(msg, sid=sid, tid=tid, credit_request=_credit_request(conn, charge))

    return send, fd._read_response


def _lean_reader(fd: Any, receiver: LeanReceiver) -> Reader:
    conn = fd.connection
    sid = fd.tree_connect.session.session_id
    tid = fd.tree_connect.tree_connect_id
    sealer = Sealer(conn.session_table[sid].encryption_key)  # READ requests are small: no buffer
    sock, sock_lock = conn.transport._sock, conn.transport._sock_lock
    message = bytearray(_SMB2_HEADER.size + _READ_HEADER.size)
    reads = receiver.reads

    def send(offset: int, n: int, charge: int) -> Any:
        credit_request = _credit_request(conn, charge)
        message_id = _take_ids(conn, charge)
        view = memoryview(message)
        _SMB2_HEADER.pack_into(view, 0, b"\xfeSMB", 64, charge, 0, 0, Commands.SMB2_READ, credit_request,
                               0, 0, message_id, 0, tid, sid, bytes(16))
        # StructureSize 49, Padding 0x50 (where the data should start in the answer), as smbprotocol sends it.
        _READ_HEADER.pack_into(view, _SMB2_HEADER.size, 49, 0x50, 0, n, offset, fd.file_id, 0, 0, 0, 0, 0, 0)
        request = _register(conn, Commands.SMB2_READ, SMB2ReadRequest, charge, credit_request, message_id, tid, sid)
        reads[message_id] = None  # before the request leaves: its answer may come back at once
        try:
            _seal_and_send(conn, sealer, sock, sock_lock, view, sid)
        except BaseException:
            reads.pop(message_id, None)
            raise
        return request

    def answer(request: Any) -> Any:
        message_id = request.message["message_id"].get_value()
        try:
            response = conn.receive(request)  # waits; pending answers, errors and credits as smbprotocol does them
            data = reads.get(message_id)
        finally:
            reads.pop(message_id, None)
        if data is None:  # an answer the receiver left whole
            parsed = SMB2ReadResponse()
            parsed.unpack(response["data"].get_value())
            return parsed["buffer"].get_value()
        return data

    return send, answer


def _lean_ok(fd: Any) -> bool:
    if os.environ.get(LEAN_WRITE_ENV, "1") == "0":
        return False
    tree, session, conn = fd.tree_connect, fd.tree_connect.session, fd.connection
    return bool(
        (session.encrypt_data or tree.encrypt_data)
        and session.encryption_key
        and getattr(conn, "cipher_id", None) in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
        and not tree.is_dfs_share
        and hasattr(conn.transport, "_sock")
        and hasattr(conn.transport, "_sock_lock")
    )


def write_from(fd: Any, source: BinaryIO, size: int, progress: Progress, start: int = 0) -> int:
    """Write bytes ``[start, size)`` read from ``source`` (positioned at ``start``) to the open file ``fd``.

    Up to DEPTH WRITE requests are in flight; each is filled from ``source``
    and sent by the lean sender (our own encryption, no copies) when the
    session allows it, else by smbprotocol's own message building.
    """
    conn = fd.connection
    chunk = min(CHUNK, conn.max_write_size)
    send = _lean_sender(fd, chunk) if _lean_ok(fd) else _generic_sender(fd, chunk)
    inflight: collections.deque[tuple[Any, int]] = collections.deque()
    offset, done = start, 0
    try:
        while offset < size or inflight:
            while offset < size and len(inflight) < DEPTH:
                n = _next_size(conn, min(chunk, size - offset), bool(inflight))
                if not n:
                    break
                charge = (n - 1) // CREDIT_BYTES + 1
                inflight.append((send(source, offset, n, charge), n))
                offset += n
            request, n = inflight.popleft()
            written = fd._write_response(request)
            if written != n:
                raise ShortTransfer(f"the server wrote {written} of {n} bytes")
            done += n
            progress(n)
    finally:
        _drain(inflight, fd._write_response)
    return done


Sender = Callable[[BinaryIO, int, int, int], Any]  # (source, offset, length, credit charge) -> request


def _fill_exactly(source: BinaryIO, view: memoryview) -> None:
    if _fill(source, view) != len(view):
        raise ShortTransfer("the local file became shorter while being sent")


def _generic_sender(fd: Any, chunk: int) -> Sender:
    conn = fd.connection
    sid = fd.tree_connect.session.session_id
    tid = fd.tree_connect.tree_connect_id
    buffer = bytearray(chunk)

    def send(source: BinaryIO, offset: int, n: int, charge: int) -> Any:
        view = memoryview(buffer)[:n]
        _fill_exactly(source, view)
        msg, _ = fd.write(bytes(view), offset=offset, send=False)
        return conn.send(msg, sid=sid, tid=tid, credit_request=_credit_request(conn, charge))

    return send


def _lean_sender(fd: Any, chunk: int) -> Sender:
    conn = fd.connection
    session = fd.tree_connect.session
    sid = session.session_id
    tid = fd.tree_connect.tree_connect_id
    sealer = Sealer(session.encryption_key, _PREFIX + chunk)
    sock, sock_lock = conn.transport._sock, conn.transport._sock_lock
    # One buffer for the request being built: it is encrypted into the sealer's and sent before send() returns.
    buffer = bytearray(_PREFIX + chunk)

    def send(source: BinaryIO, offset: int, n: int, charge: int) -> Any:
        view = memoryview(buffer)
        _fill_exactly(source, view[_PREFIX : _PREFIX + n])
        return _send_lean(conn, sealer, sock, sock_lock, view, n, offset, charge, fd.file_id, sid, tid)

    return send


class Sealer:
    """AES-GCM for one session's outgoing messages; a large one is encrypted into one reused buffer.

    ``AESGCM.encrypt`` returns a new object per message: for a 4 MiB WRITE that
    is fresh memory (page faults) every time. The ciphertext is sent before
    :func:`_seal_and_send` returns, so one output buffer serves every request.
    """

    def __init__(self, key: bytes, largest: int = 0) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = key
        self.aead = AESGCM(key)
        self.out = bytearray(largest + _BLOCK) if largest else None

    def seal(self, nonce: bytes, message: memoryview, aad: bytes) -> tuple[memoryview, bytes]:
        """The ciphertext (valid until the next call) and the tag."""
        if self.out is None or len(message) < CREDIT_BYTES or len(self.out) < len(message) + _BLOCK - 1:
            sealed = self.aead.encrypt(nonce, message, aad)
            return memoryview(sealed)[:-_TAG], sealed[-_TAG:]
        encryptor = Cipher(algorithms.AES(self.key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        written = encryptor.update_into(message, self.out)
        encryptor.finalize()
        return memoryview(self.out)[:written], encryptor.tag


def _take_ids(conn: Any, charge: int) -> int:
    """Reserve ``charge`` message ids (credits), as ``Connection._send`` does; return the first."""
    with conn.sequence_lock:
        if charge > _credits(conn):
            raise ShortTransfer(f"a request needs {charge} credits, the server granted {_credits(conn)}")
        message_id = int(conn.sequence_window["low"])
        conn.sequence_window["low"] += charge
    return message_id


def _register(conn: Any, command: int, message_type: type, charge: int, credit_request: int, message_id: int,
              tid: int, sid: int) -> Any:
    """A Request in smbprotocol's table, with the header fields its receive thread and ``receive`` read."""
    header = SMB2HeaderRequest()
    header["credit_charge"] = charge
    header["command"] = command
    header["credit_request"] = credit_request
    header["message_id"] = message_id
    header["tree_id"] = tid
    header["session_id"] = sid
    request = Request(header, message_type, conn, session_id=sid)
    conn.outstanding_requests[message_id] = request
    return request


def _send_lean(
    conn: Any, sealer: Sealer, sock: Any, sock_lock: Any, view: memoryview, n: int, offset: int,
    charge: int, file_id: bytes, sid: int, tid: int,
) -> Any:
    """Frame, encrypt and send one WRITE whose data is already at ``view[_PREFIX:]``; return its Request."""
    credit_request = _credit_request(conn, charge)
    message_id = _take_ids(conn, charge)
    _SMB2_HEADER.pack_into(view, 0, b"\xfeSMB", 64, charge, 0, 0, Commands.SMB2_WRITE, credit_request,
                           0, 0, message_id, 0, tid, sid, bytes(16))
    _WRITE_HEADER.pack_into(view, _SMB2_HEADER.size, 49, _PREFIX, n, offset, file_id, 0, 0, 0, 0, 0)
    request = _register(conn, Commands.SMB2_WRITE, SMB2WriteRequest, charge, credit_request, message_id, tid, sid)
    _seal_and_send(conn, sealer, sock, sock_lock, view[: _PREFIX + n], sid)
    return request


def _seal_and_send(conn: Any, sealer: Sealer, sock: Any, sock_lock: Any, message: memoryview, sid: int) -> None:
    """Encrypt one SMB2 message (MS-SMB2 3.1.4.3) and send it with its transform and frame headers."""
    nonce = os.urandom(12)
    transform = bytearray(_TRANSFORM.pack(b"\xfdSMB", bytes(16), nonce + bytes(4), len(message), 0, 1, sid))
    body, tag = sealer.seal(nonce, message, bytes(transform[20:]))
    transform[4:20] = tag  # the GCM tag is the transform header's signature
    frame = struct.pack(">I", len(transform) + len(body)) + bytes(transform)
    conn._check_worker_running()
    with sock_lock:
        _send_all(sock, [memoryview(frame), body])


def _send_all(sock: Any, parts: list[memoryview]) -> None:
    """One ``sendmsg`` per attempt, so the small frame header and the data leave together (no Nagle stall)."""
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


# --------------------------------------------------------------------------- the receiving side


class LeanReceiver:
    """Stands in for ``Tcp.recv`` in smbprotocol's receive thread on an encrypted AES-GCM session.

    ``Tcp.recv`` returns each frame as new bytes, assembled from ``recv``
    pieces (a ``select`` before each); the thread then unpacks the transform
    header into a structure, joins data and tag, packs the header again for
    the associated data, decrypts, and slices and unpacks the result — about
    eight copies of a 1 MiB READ answer before the caller sees its bytes.

    Here a frame is read with ``recv_into`` into one reused buffer (``select``
    only when the socket has nothing yet), its tag is put after the
    ciphertext, and it is decrypted once. What the thread gets back is the
    plaintext — which it treats as the decrypted message it is — except for
    the answer to a READ sent by :func:`read_into`'s lean path (its message id
    is in :attr:`reads`): then the thread gets only the SMB2 and READ headers,
    and the data stays in :attr:`reads` as a view into the plaintext, for the
    caller to write out. While such READs are out, large answers are decrypted
    into buffers read_into lends (:attr:`spare`) and takes back once written,
    rather than into a fresh object each. A frame answering compound requests that
    :mod:`piblade.nas._compound` sent (their message ids are in :attr:`mine`) never
    reaches the thread: its answers go to their callbacks and the credits they grant
    to the connection, and the next frame is read. Closing, idle time-outs and the errors it raises are
    those of ``Tcp.recv``.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.transport = conn.transport
        #: Message id of each outstanding lean READ -> its data once the answer is in (None before).
        self.reads: dict[int, memoryview | None] = {}
        #: First message id of each answer piblade.nas._compound waits for -> what to call with it (in this thread).
        self.mine: dict[int, Callable[[int, int, bytes], None]] = {}
        #: Buffers to decrypt large answers into, lent by read_into and handed back by :meth:`recycle`.
        self.spare: list[bytearray] = []
        self._ciphers: dict[bytes, Any] = {}
        self._head = bytearray(4 + _TRANSFORM.size)
        self._body = bytearray(_SMB2_HEADER.size + _READ_HEADER.size + _TAG)

    def _cipher(self, key: bytes) -> Any:
        aead = self._ciphers.get(key)
        if aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            aead = self._ciphers[key] = AESGCM(key)
        return aead

    def recv(self, timeout: float) -> bytes | None:
        while True:
            frame = self._recv_frame(timeout)
            if frame is not _TAKEN:
                return frame  # type: ignore[return-value]

    def _take(self, plain: Any) -> bool:
        """Hand the answers in ``plain`` to their callbacks when it answers :attr:`mine`; False if it is not ours.

        Credits are granted as smbprotocol's thread grants them; an interim
        answer (STATUS_PENDING, async) brings credits only: the final one follows.
        """
        if len(plain) < _SMB2_HEADER.size or struct.unpack_from("<Q", plain, 24)[0] not in self.mine:
            return False
        offset, end, granted = 0, len(plain), 0
        while offset < end:
            status, _command, credits, flags, next_command, message_id = struct.unpack_from("<IHHIIQ", plain, offset + 8)
            stop = offset + next_command if next_command else end
            granted += credits
            if not (status == _STATUS_PENDING and flags & _FLAGS_ASYNC):
                answer = self.mine.pop(message_id, None)
                if answer is not None:
                    answer(message_id, status, bytes(plain[offset:stop]))
            offset = stop
        with self.conn.sequence_lock:
            self.conn.sequence_window["high"] += granted
        return True

    def _recv_frame(self, timeout: float) -> object:
        head = memoryview(self._head)
        left = self._read(head[:4], timeout)
        if left is None:
            return b""  # as Tcp.recv: the socket was closed
        size = int.from_bytes(head[:4], "big")
        first = min(size, _TRANSFORM.size)
        left = self._read(head[4 : 4 + first], left)
        if left is None:
            return None
        if first < _TRANSFORM.size or head[4:8] != b"\xfdSMB":  # not encrypted: hand it on whole
            rest = bytearray(size - first)
            if rest and self._read(memoryview(rest), left) is None:
                return None
            return bytes(head[4 : 4 + first]) + bytes(rest)
        n = size - _TRANSFORM.size
        if len(self._body) < n + _TAG:
            self._body = bytearray(n + _TAG)
        body = memoryview(self._body)
        if self._read(body[:n], left) is None:
            return None
        _, tag, nonce, _, _, flags, sid = _TRANSFORM.unpack_from(head, 4)
        if flags != 0x0001:
            raise SMBException(f"Expecting flag of 0x0001 but got {flags:x} in the SMB Transform Header Response")
        session = self.conn.session_table.get(sid)
        if session is None:
            raise SMBException(f"Failed to find valid session {sid} for message decryption")
        aad = bytes(head[24:56])
        out = self._spare_for(n)
        if out is None:
            body[n : n + _TAG] = tag
            plain = self._cipher(session.decryption_key).decrypt(nonce[:12], body[: n + _TAG], aad)
            if self.mine and self._take(plain):
                return _TAKEN
            return self._keep_read_data(plain)
        # Into a reused buffer: no fresh 4 MiB (and its page faults) per answer; ~30 % less time than decrypt().
        decryptor = Cipher(algorithms.AES(session.decryption_key), modes.GCM(nonce[:12], tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        decryptor.update_into(body[:n], out)
        decryptor.finalize()  # checks the tag: InvalidTag, as decrypt() raises
        kept = self._keep_read_data(memoryview(out)[:n])
        if isinstance(kept, memoryview):  # not a lean READ's answer after all: give the thread its own copy
            plain = bytes(kept)
            kept.release()
            self.spare.append(out)
            return plain
        return kept

    def _spare_for(self, n: int) -> bytearray | None:
        """A lent buffer for an answer of ``n`` bytes, while lean READs are out and it is a large one."""
        if n < CREDIT_BYTES or not self.reads:
            return None
        try:
            out = self.spare.pop()
        except IndexError:
            return None
        if len(out) < n + _BLOCK - 1:  # update_into's rule: room for one block more
            return None
        return out

    def recycle(self, data: Any) -> None:
        """Take back the buffer under ``data`` (an answer's data, written out by now) for the next answer."""
        owner = data.obj if isinstance(data, memoryview) else None
        if isinstance(owner, bytearray):
            data.release()
            self.spare.append(owner)

    def _keep_read_data(self, plain: Any) -> Any:
        """The headers only, when ``plain`` answers a lean READ (its data kept in :attr:`reads`); else ``plain``."""
        if len(plain) < _ANSWER_HEAD or not self.reads:
            return plain
        status, command = struct.unpack_from("<IH", plain, 8)
        next_command, message_id = struct.unpack_from("<IQ", plain, 20)
        if command != Commands.SMB2_READ or status != 0 or next_command or message_id not in self.reads:
            return plain
        _, data_offset, _, length, _, _ = _READ_ANSWER.unpack_from(plain, _SMB2_HEADER.size)
        if data_offset < _ANSWER_HEAD or data_offset + length > len(plain):
            return plain  # smbprotocol will parse it (and say what is wrong with it)
        whole = plain if isinstance(plain, memoryview) else memoryview(plain)
        self.reads[message_id] = whole[data_offset : data_offset + length]
        return bytes(whole[:_ANSWER_HEAD])

    def _read(self, view: memoryview, timeout: float) -> float | None:
        """Fill ``view`` from the socket; the time left, or None when the socket was closed (as ``Tcp._recv``)."""
        transport = self.transport
        done, total = 0, len(view)
        while done < total:
            with transport._close_lock:
                if not transport.connected:
                    return None
                sock = transport._sock
                try:
                    try:
                        got = sock.recv_into(view[done:], 0, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        started = timeit.default_timer()
                        ready = select.select([sock], [], [], max(timeout, 1))[0]
                        elapsed = timeit.default_timer() - started
                        timeout -= elapsed
                        if not ready:
                            raise TimeoutError(f"recv idle for {elapsed:.1f}s ({done}/{total} bytes)") from None
                        got = sock.recv_into(view[done:])
                except OSError as exc:  # a reset peer reads as the end of the stream, as in Tcp._recv
                    if exc.errno not in (errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    got = 0
            if not got:
                transport.close()
                return None
            done += got
        return timeout


def receiver_of(conn: Any) -> LeanReceiver | None:
    """The connection's :class:`LeanReceiver`, if :func:`use_lean_receiver` installed one."""
    owner = getattr(conn.transport.recv, "__self__", None)
    return owner if isinstance(owner, LeanReceiver) else None


def use_lean_receiver(session: Any, tree: Any) -> bool:
    """Put a :class:`LeanReceiver` in the connection's receive path when the session allows it.

    Only on an encrypted SMB 3.1.1 AES-GCM session whose transport is the plain
    TCP one this module knows, and unless ``PIBLADE_SMB_LEAN_READ=0``. Call it
    once the session and tree are set up; the receive thread takes it up with
    the next frame.
    """
    conn = session.connection
    transport = conn.transport
    ok = (
        os.environ.get(LEAN_READ_ENV, "1") != "0"
        and (session.encrypt_data or tree.encrypt_data)
        and bool(session.decryption_key)
        and conn.dialect >= Dialects.SMB_3_1_1
        and getattr(conn, "cipher_id", None) in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
        and not tree.is_dfs_share
        and all(hasattr(transport, name) for name in ("_sock", "_sock_lock", "_close_lock", "connected"))
    )
    if ok and receiver_of(conn) is None:
        transport.recv = LeanReceiver(conn).recv
        # The receive thread is already waiting in the old recv: one ECHO round trip moves it onto
        # the new one, so that the next answer (which may be piblade._compound's) meets the receiver.
        conn.receive(conn.send(SMB2Echo(), sid=session.session_id))
    return bool(ok)


def no_delay(conn: Any) -> None:
    """Turn Nagle off on the connection's socket: pipelined requests must not wait for ACKs."""
    sock = getattr(conn.transport, "_sock", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
