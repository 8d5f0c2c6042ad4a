"""`--tunnel` failure paths: no authtoken (immediate), ngrok unreachable (deadline), and the
local dashboard serving on through both.

No test here sends a packet beyond loopback. The "ngrok unreachable" case points the
SDK's own ``server_addr`` option at a loopback socket that accepts TCP connections and
never answers: the same hang as a machine with no route to ngrok (the SDK otherwise
dials ngrok's servers, which these tests must not try). strace of that case shows one
connect(), to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from piblade import local, tunnel
from tests.integration.conftest import ROOT, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback address that accepts connections (kernel backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def refusing_addr() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now: connections are refused
    return addr


def test_no_authtoken_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(tunnel.TunnelError) as err:
        tunnel.find_authtoken(env={}, directory=tmp_path)
    assert time.monotonic() - started < 0.5
    assert "no ngrok authtoken" in err.value.message
    assert "NGROK_AUTHTOKEN" in (err.value.hint or "")


def test_authtoken_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / tunnel.AUTHTOKEN_FILE
    path.write_text("tok\n")
    path.chmod(0o644)
    with pytest.raises(Exception, match="readable by other users"):
        tunnel.find_authtoken(env={}, directory=tmp_path)
    path.chmod(0o600)
    assert tunnel.find_authtoken(env={}, directory=tmp_path) == "tok"
    assert tunnel.find_authtoken(env={"NGROK_AUTHTOKEN": "from-env"}, directory=tmp_path) == "from-env"


def test_basic_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "ngrok.basic"
    path.write_text("alice:correct-horse\n")
    path.chmod(0o600)
    assert tunnel.read_basic_auth(path) == ("alice", "correct-horse")
    path.write_text("alice:short\n")
    with pytest.raises(tunnel.TunnelError, match="8 to 128"):
        tunnel.read_basic_auth(path)


def test_unreachable_ngrok_fails_by_the_deadline(silent_server: str) -> None:
    options = tunnel.TunnelOptions(server_addr=silent_server, deadline=3.0)
    started = time.monotonic()
    with pytest.raises(tunnel.TunnelError) as err:
        tunnel.open_tunnel("http://127.0.0.1:9", options, "fake-authtoken-for-tests")
    took = time.monotonic() - started
    assert 2.9 <= took < 8.0, took  # by the deadline, not at some later network timeout
    assert "could not reach ngrok within 3 s" in err.value.message


def test_refused_connection_fails_fast(refusing_addr: str) -> None:
    options = tunnel.TunnelOptions(server_addr=refusing_addr, deadline=10.0)
    started = time.monotonic()
    with pytest.raises(tunnel.TunnelError) as err:
        tunnel.open_tunnel("http://127.0.0.1:9", options, "fake-authtoken-for-tests")
    assert time.monotonic() - started < 8  # well before the 10 s deadline
    assert "could not open the ngrok tunnel" in err.value.message


# -- the CLI: the dashboard keeps serving whatever the tunnel does ---------------------------


def _env(server: RedisServer, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGROK_", "PIBLADE_NGROK_"))}
    env.update(
        PIBLADE_REDIS_URL=server.target.url(),
        PIBLADE_REDIS_PASSWORD_FILE=str(server.target.password_file),
        PIBLADE_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        **extra,
    )
    return env


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _run_dashboard(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = local.free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piblade", "dashboard", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() - started > timeout:
            pytest.fail(f"never printed {text!r}:\n{log.read_text()}")
        time.sleep(0.05)
    return time.monotonic() - started


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_cli_tunnel_without_authtoken_says_so_and_serves_locally(
    redis_server: RedisServer, conn: object, tmp_path: Path
) -> None:
    log = tmp_path / "out.log"
    proc, url = _run_dashboard(_env(redis_server, tmp_path / "state"), log, "--tunnel")
    try:
        _wait_for_text(log, "no ngrok authtoken", proc, timeout=20)
        _wait_for_text(log, "Ctrl-C stops it", proc, timeout=5)
        text = log.read_text()
        assert f"the dashboard is still serving on {url}/" in text
        token = (tmp_path / "state" / "dashboard.token").read_text().strip()
        assert _get(url + "/healthz") == 200
        assert _get(url + "/api/nodes", token) == 200
        assert _get(url + "/api/nodes") == 401
        assert token not in text  # the token is never printed unasked
        # An open SSE stream (a browser left open) must not hold up Ctrl-C.
        events = urllib.request.urlopen(
            urllib.request.Request(url + "/events", headers={"Authorization": f"Bearer {token}"}), timeout=10
        )
        assert events.readline().startswith(b"retry:")
        started = time.monotonic()
        _stop(proc)
        assert time.monotonic() - started < 6  # not held until the stream ends
        assert proc.returncode == 0
        events.close()
    finally:
        _stop(proc)


def test_cli_tunnel_unreachable_fails_by_the_deadline_and_serves_locally(
    redis_server: RedisServer, conn: object, tmp_path: Path, silent_server: str
) -> None:
    log = tmp_path / "out.log"
    env = _env(
        redis_server,
        tmp_path / "state",
        NGROK_AUTHTOKEN="fake-authtoken-for-tests",
        PIBLADE_NGROK_SERVER_ADDR=silent_server,
    )
    proc, url = _run_dashboard(env, log, "--tunnel", "--tunnel-timeout", "3")
    try:
        _wait_for_text(log, "opening the ngrok tunnel", proc, timeout=20)
        took = _wait_for_text(log, "could not reach ngrok within 3 s", proc, timeout=8)
        assert took < 7, took
        assert f"the dashboard is still serving on {url}/" in log.read_text()
        token = (tmp_path / "state" / "dashboard.token").read_text().strip()
        assert _get(url + "/api/nodes", token) == 200
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piblade", "dashboard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_refuses_unsafe_combinations(redis_server: RedisServer, tmp_path: Path) -> None:
    env = _env(redis_server, tmp_path / "state")
    done = _cli(env, "--no-auth", "--tunnel")
    assert done.returncode == 1
    assert "--tunnel refuses to publish a dashboard without authentication" in done.stderr
    done = _cli(env, "--no-auth", "--bind", "0.0.0.0")
    assert done.returncode == 1
    assert "--no-auth is allowed only with --bind 127.0.0.1" in done.stderr


def test_show_token_prints_the_private_token(tmp_path: Path) -> None:
    env = {**os.environ, "PIBLADE_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    done = _cli(env, "--show-token")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "state" / "dashboard.token"
    assert done.stdout.strip() == path.read_text().strip()
    assert len(done.stdout.strip()) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _cli(env, "--show-token").stdout == done.stdout  # generated once, then kept


# -- the tunnel's own listener: the only place X-Forwarded-For counts -------------------------


def _wrong(url: str, forwarded_for: str) -> int:
    return _get_with(url + "/api/nodes", {"Authorization": "Bearer wrong-guess", "X-Forwarded-For": forwarded_for})


def _get_with(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_forwarded_for_counts_only_on_the_tunnel_listener(
    redis_server: RedisServer, conn: object, tmp_path: Path, refusing_addr: str
) -> None:
    """ngrok cannot be reached here, so the test is ngrok: it connects to the tunnel's listener itself.

    Before, any loopback client chose its rate-limit bucket with X-Forwarded-For: 30 wrong
    tokens with a new header each got 30 401s and never a 429.
    """
    log = tmp_path / "out.log"
    env = _env(redis_server, tmp_path / "state", NGROK_AUTHTOKEN="fake-authtoken-for-tests",
               PIBLADE_NGROK_SERVER_ADDR=refusing_addr)
    proc, url = _run_dashboard(env, log, "--tunnel")
    try:
        _wait_for_text(log, "could not open the ngrok tunnel", proc, timeout=20)  # fails fast, serves on
        match = re.search(r"opening the ngrok tunnel to (http://127\.0\.0\.1:\d+), a listener of its own", log.read_text())
        assert match, log.read_text()
        tunnel_url = match.group(1)
        assert tunnel_url != url
        token = (tmp_path / "state" / "dashboard.token").read_text().strip()

        # The main listener: a rotating header is no new client.
        answers = [_wrong(url, f"198.51.100.{i}") for i in range(30)]
        assert answers[:5] == [401] * 5 and set(answers[5:]) == {429}, answers

        # The tunnel's listener: each client its own bucket, as ngrok reports them.
        assert [_wrong(tunnel_url, f"203.0.113.{i}") for i in range(10)] == [401] * 10
        answers = [_wrong(tunnel_url, "203.0.113.77") for _ in range(7)]
        assert answers == [401] * 5 + [429] * 2, answers
        assert _get_with(tunnel_url + "/api/nodes", {"Authorization": f"Bearer {token}",
                                                     "X-Forwarded-For": "203.0.113.78"}) == 200
        assert _get(tunnel_url + "/api/nodes") == 401  # the tunnel's listener wants the token like any other
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()
