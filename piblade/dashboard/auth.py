"""Who may see the dashboard: one token, sessions held by the dashboard process, and a limit on wrong guesses.

* The token lives in ``<state dir>/dashboard.token`` (0600), generated on first
  run. Scripts send it as ``Authorization: Bearer <token>``; people type it once
  into the login form and get a session cookie.
* A session is a random id that only this process knows (with its issue time
  and the token *generation* it was made under); the cookie never holds the
  token. Logging out forgets that id, so the same cookie no longer works.
* The token file is watched: each check compares its inode, size and mtime
  (one ``stat``) and, when they change, its content hash. A new token (``piblade
  dashboard --rotate-token`` writes one) is a new generation: the old token is
  refused, the new one works, and every session ends at once, without a restart.
* The peer address is never trusted: through an ngrok tunnel every request
  arrives from 127.0.0.1, so "local" proves nothing.
* Wrong tokens are counted per client; after :attr:`RateLimiter.limit` failures
  in a window, attempts get 429 with ``Retry-After`` without being checked. A
  valid session cookie keeps working meanwhile, so someone guessing through the
  same tunnel cannot lock out a signed-in user.

This module is pure (no Starlette): the middleware in :mod:`piblade.dashboard.guard` uses it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from piblade.state import ensure_secret, read_secret, state_dir, write_private

TOKEN_FILE = "dashboard.token"
SESSION_COOKIE = "piblade_session"
SESSION_SECONDS = 7 * 24 * 3600
#: Sessions kept at most (the oldest go first): logins are rate-limited, so this is generous.
MAX_SESSIONS = 10_000
MIN_TOKEN_LENGTH = 16


def token_path() -> Path:
    return state_dir() / TOKEN_FILE


def load_token(path: Path | None = None) -> str:
    """The dashboard token, generated (0600) the first time."""
    return ensure_secret(path or token_path())


def rotate_token(path: Path | None = None) -> Path:
    """Write a new random token (0600, atomically: a new inode); running dashboards end every session."""
    path = path or token_path()
    write_private(path, secrets.token_urlsafe(32) + "\n")
    return path


class Authenticator:
    """Checks tokens in constant time and keeps the sessions of one token generation.

    Either a fixed ``token`` (tests, embedding) or a ``token_file`` that is
    re-read whenever it changes on disk.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        token_file: Path | None = None,
        session_seconds: int = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
    ):
        if (token is None) == (token_file is None):
            raise ValueError("give the dashboard a token or a token file, not both")
        self.session_seconds = session_seconds
        self._clock = clock
        self._max_sessions = max_sessions
        self._file = token_file
        self._lock = threading.Lock()
        self._stat: tuple[int, int, int, int] | None = None
        self._digest = b""
        self.generation = 0
        #: session id -> (issued, generation)
        self._sessions: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._token = b""
        if token is not None:
            self._set_token(token)
        else:
            self._refresh()

    def _set_token(self, token: str) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError("the dashboard token is too short to be safe")
        digest = hashlib.sha256(token.encode()).digest()
        if digest == self._digest:
            return
        self._token = token.encode()
        self._digest = digest
        self.generation += 1
        self._sessions.clear()  # a new token ends every session

    def _refresh(self) -> None:
        """Re-read the token file if it changed on disk (one stat per check)."""
        if self._file is None:
            return
        try:
            info = self._file.stat()
        except OSError:
            return  # removed for a moment (an editor's save): keep the token we have
        key = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns)
        if key == self._stat:
            return
        with self._lock:
            try:
                token = read_secret(self._file)
            except Exception:  # noqa: BLE001 - a half-written or unreadable file: try again next request
                return
            self._stat = key
            self._set_token(token)

    def check_token(self, candidate: str) -> bool:
        self._refresh()
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def new_session(self) -> str:
        self._refresh()
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = (self._clock(), self.generation)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        return session

    def check_session(self, value: str | None) -> bool:
        if not value:
            return False
        self._refresh()
        entry = self._sessions.get(value)
        if entry is None:
            return False
        issued, generation = entry
        age = self._clock() - issued
        if generation != self.generation or not -60 <= age <= self.session_seconds:
            self.end_session(value)
            return False
        return True

    def end_session(self, value: str | None) -> None:
        """Logout: this session id stops working at once."""
        if value:
            with self._lock:
                self._sessions.pop(value, None)

    @property
    def sessions(self) -> int:
        return len(self._sessions)


class RateLimiter:
    """Failures per client key in a sliding window, with a bounded number of keys."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        times = self._recent(key)
        if len(times) < self.limit:
            return None
        return max(1, int(times[-self.limit] + self.window - self._clock()) + 1)

    def failure(self, key: str) -> None:
        times = self._recent(key)
        times.append(self._clock())
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)


def client_key(peer: str | None, forwarded_for: str | None, via_tunnel: bool) -> str:
    """Which client to count failures against.

    Only a request that arrived on the tunnel's own listener (a loopback port
    that only the ngrok forwarder is told about) names its client in
    ``X-Forwarded-For``, whose last entry is the one ngrok saw. Anywhere else the
    header is whatever the sender wrote: by address alone, ngrok's in-process
    forwarder and any other loopback client look the same, so "loopback" cannot
    be the test (a rotating header used to get a fresh bucket per guess). This
    only picks a rate-limit bucket: it never grants access.
    """
    peer = peer or "unknown"
    if via_tunnel:
        last = (forwarded_for or "").split(",")[-1].strip()
        return f"via-tunnel:{last}" if last else "via-tunnel"
    return peer


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_loopback_bind(host: str) -> bool:
    """True for a bind address only this machine can reach (the condition for --no-auth)."""
    return _is_loopback(host)
