"""Dashboard authentication pieces, without a server: tokens, sessions, the rate limiter."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from piblade.dashboard.auth import (
    Authenticator,
    RateLimiter,
    client_key,
    is_loopback_bind,
    load_token,
    rotate_token,
)

TOKEN = "t" * 43


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_is_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dashboard.token"
    first = load_token(path)
    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(path) == first


def test_token_check() -> None:
    auth = Authenticator(TOKEN)
    assert auth.check_token(TOKEN)
    assert auth.check_token(TOKEN + "\n")  # pasted with a newline
    assert not auth.check_token(TOKEN[:-1])
    assert not auth.check_token("")
    with pytest.raises(ValueError):
        Authenticator("short")


def test_session_is_a_random_id_not_the_token_and_expires() -> None:
    clock = Clock()
    auth = Authenticator(TOKEN, session_seconds=3600, clock=clock)
    session = auth.new_session()
    assert TOKEN not in session and len(session) >= 40
    assert auth.check_session(session)
    assert not auth.check_session(session[:-1] + ("0" if session[-1] != "0" else "1"))
    assert not auth.check_session(None) and not auth.check_session("") and not auth.check_session("x.y")
    clock.now += 3601
    assert not auth.check_session(session)
    assert auth.sessions == 0  # an expired session is forgotten


def test_sessions_belong_to_one_process_and_logout_ends_one() -> None:
    auth = Authenticator(TOKEN)
    first, second = auth.new_session(), auth.new_session()
    assert not Authenticator(TOKEN).check_session(first)  # another dashboard (or a restart) never issued it
    auth.end_session(first)
    assert not auth.check_session(first)
    assert auth.check_session(second)


def test_a_new_token_file_ends_every_session(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    old = load_token(path)
    auth = Authenticator(token_file=path)
    session = auth.new_session()
    assert auth.check_token(old) and auth.check_session(session)
    path.touch()  # same content, new mtime: same generation
    assert auth.check_session(session)
    rotate_token(path)
    new = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and new != old
    assert not auth.check_session(session)
    assert not auth.check_token(old)
    assert auth.check_token(new)
    assert auth.check_session(auth.new_session())


def test_rate_limiter_window() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=5, window=60, clock=clock)
    for _ in range(4):
        limiter.failure("a")
    assert limiter.retry_after("a") is None
    limiter.failure("a")
    wait = limiter.retry_after("a")
    assert wait is not None and 59 <= wait <= 61
    assert limiter.retry_after("b") is None  # per client
    clock.now += 61
    assert limiter.retry_after("a") is None


def test_rate_limiter_keeps_a_bounded_number_of_clients() -> None:
    limiter = RateLimiter(limit=1, window=60, max_keys=100, clock=Clock())
    for i in range(1000):
        limiter.failure(f"client-{i}")
    assert len(limiter._failures) == 100
    assert limiter.retry_after("client-999") is not None


def test_client_key_uses_forwarded_for_only_on_the_tunnel_listener() -> None:
    assert client_key("192.168.1.20", "203.0.113.5", via_tunnel=False) == "192.168.1.20"
    assert client_key("127.0.0.1", "203.0.113.5", via_tunnel=False) == "127.0.0.1"  # loopback proves nothing
    assert client_key("127.0.0.1", "203.0.113.5", via_tunnel=True) == "via-tunnel:203.0.113.5"
    assert client_key("127.0.0.1", "10.0.0.1, 203.0.113.5", via_tunnel=True) == "via-tunnel:203.0.113.5"
    assert client_key("127.0.0.1", None, via_tunnel=True) == "via-tunnel"
    assert client_key("127.0.0.1", None, via_tunnel=False) == "127.0.0.1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("::", False),
        ("pi1.lan", False),
    ],
)
def test_no_auth_binds(host: str, loopback: bool) -> None:
    assert is_loopback_bind(host) is loopback
