"""Who may see the dashboard: one token, signed session cookies, and a limit on wrong guesses.

* The token lives in ``<state dir>/dashboard.token`` (0600), generated on first
  run. Scripts send it as ``Authorization: Bearer <token>``; people type it once
  into the login form and get a session cookie.
* The cookie never holds the token: it holds an issue time and an HMAC of it,
  keyed by a key *derived* from the token. Stealing a cookie gives a session
  that expires, not the token; replacing the token file ends every session.
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
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path

from piblade.state import ensure_secret, state_dir

TOKEN_FILE = "dashboard.token"
SESSION_COOKIE = "piblade_session"
SESSION_SECONDS = 7 * 24 * 3600
_KEY_LABEL = b"piblade dashboard session v1"


def token_path() -> Path:
    return state_dir() / TOKEN_FILE


def load_token(path: Path | None = None) -> str:
    """The dashboard token, generated (0600) the first time."""
    return ensure_secret(path or token_path())


class Authenticator:
    """Checks tokens and session cookies in constant time."""

    def __init__(self, token: str, *, session_seconds: int = SESSION_SECONDS, clock: Callable[[], float] = time.time):
        if len(token) < 16:
            raise ValueError("the dashboard token is too short to be safe")
        self._token = token.encode()
        self._key = hmac.new(self._token, _KEY_LABEL, hashlib.sha256).digest()
        self.session_seconds = session_seconds
        self._clock = clock

    def check_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def _sign(self, issued: str) -> str:
        return hmac.new(self._key, b"session:" + issued.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        issued = str(int(self._clock()))
        return f"{issued}.{self._sign(issued)}"

    def check_session(self, value: str | None) -> bool:
        if not value:
            return False
        issued, _, signature = value.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(signature.encode(), self._sign(issued).encode()):
            return False
        age = self._clock() - int(issued)
        return -60 <= age <= self.session_seconds


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


def client_key(peer: str | None, forwarded_for: str | None, proxies: Iterable[str]) -> str:
    """Which client to count failures against.

    Requests from a proxy we run ourselves (the in-process ngrok agent connects
    from loopback) carry the real client in ``X-Forwarded-For``; its last entry
    is the one the proxy saw. This only picks a rate-limit bucket: it never
    grants access.
    """
    peer = peer or "unknown"
    if forwarded_for and (_is_loopback(peer) or peer in set(proxies)):
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return f"via-proxy:{last}"
    return peer


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_loopback_bind(host: str) -> bool:
    """True for a bind address only this machine can reach (the condition for --no-auth)."""
    return _is_loopback(host)
