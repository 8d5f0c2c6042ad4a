"""Sessions end when they should: on logout, and for everyone when the token is rotated — no restart.

A real `piblade dashboard` process over real HTTP. Before, a session cookie was
an HMAC valid for 7 days: the same cookie worked after logout, and a replaced
token file changed nothing until a restart (old token accepted, new refused).
"""

from __future__ import annotations

import http.cookiejar
import stat
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import RedisServer
from tests.integration.dashboard_procs import DashboardProc, dashboard_env, http_get, start_dashboard

pytestmark = pytest.mark.integration


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def login(dash: DashboardProc, token: str) -> str:
    """POST the login form as the page does; the session cookie's value."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    request = urllib.request.Request(
        dash.url + "/login",
        data=urllib.parse.urlencode({"token": token}).encode(),
        headers={"Origin": dash.url, "Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.read()
    return next(c.value for c in jar if c.name == "piblade_session")


def with_cookie(session: str) -> dict[str, str]:
    return {"Cookie": f"piblade_session={session}"}


def logout(dash: DashboardProc, session: str) -> int:
    request = urllib.request.Request(
        dash.url + "/logout", data=b"", method="POST", headers={"Origin": dash.url, **with_cookie(session)}
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def test_logout_ends_the_session_and_rotation_ends_them_all(
    redis_server: RedisServer, conn: object, tmp_path: Path
) -> None:
    env = dashboard_env(redis_server.target, tmp_path / "state")
    dash = start_dashboard(env, tmp_path / "dashboard.log")
    try:
        old = dash.token
        kept, dropped = login(dash, old), login(dash, old)
        assert http_get(dash.url + "/api/nodes", headers=with_cookie(dropped))[0] == 200

        assert logout(dash, dropped) == 303
        assert http_get(dash.url + "/api/nodes", headers=with_cookie(dropped))[0] == 401  # the same cookie: dead
        assert http_get(dash.url + "/api/nodes", headers=with_cookie(kept))[0] == 200  # others are not

        done = subprocess.run(
            [sys.executable, "-m", "piblade", "dashboard", "--rotate-token"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "new dashboard token written to" in done.stdout
        path = tmp_path / "state" / "dashboard.token"
        new = path.read_text().strip()
        assert new != old and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert new not in done.stdout  # written, never printed unasked

        # The same running process: every session ended, the old token refused, the new one works.
        assert dash.proc.poll() is None
        assert http_get(dash.url + "/api/nodes", headers=with_cookie(kept))[0] == 401
        assert http_get(dash.url + "/api/nodes", old)[0] == 401
        assert http_get(dash.url + "/api/nodes", new)[0] == 200
        assert http_get(dash.url + "/api/nodes", headers=with_cookie(login(dash, new)))[0] == 200
    finally:
        dash.stop()
