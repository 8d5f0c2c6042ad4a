"""The CLI's error boundary: usage errors are usage errors, whichever click the installed typer raises."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from piblade.cli import app as cli_app
from piblade.errors import PibladeError


def _click_modules() -> list[object]:
    modules = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    assert modules, "neither typer's vendored click nor click itself is installed"
    return modules


def _usage_errors() -> list[BaseException]:
    errors: list[BaseException] = []
    for exceptions in _click_modules():
        errors += [
            exceptions.UsageError("No such command 'nosuchcommand'."),  # type: ignore[attr-defined]
            exceptions.MissingParameter(param_hint="'job'", param_type="argument"),  # type: ignore[attr-defined]
            exceptions.BadParameter("not an integer", param_hint="'--retries'"),  # type: ignore[attr-defined]
            exceptions.NoSuchOption("--nosuch"),  # type: ignore[attr-defined]
            exceptions.BadOptionUsage("--retries", "needs a value"),  # type: ignore[attr-defined]
        ]
    return errors


@pytest.mark.parametrize("exc", _usage_errors(), ids=lambda e: f"{type(e).__module__}.{type(e).__name__}")
def test_each_usage_error_is_one_line_and_exit_2_without_a_crash_log(
        exc: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert cli_app.report_error(exc) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "crashed" not in err and "bug report" not in err
    assert not list(tmp_path.rglob("crash.log"))


def test_piblade_errors_exit_1_with_their_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_app.report_error(PibladeError("no such run", hint="see piblade jobs list")) == 1
    assert capsys.readouterr().err.splitlines() == ["error: no such run", "hint: see piblade jobs list"]


def test_a_real_bug_keeps_its_traceback_in_crash_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("PIBLADE_DEBUG", raising=False)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError as exc:
        assert cli_app.report_error(exc) == 2
    assert "piblade crashed: ZeroDivisionError: boom" in capsys.readouterr().err
    (log,) = tmp_path.rglob("crash.log")
    assert "ZeroDivisionError" in log.read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["nosuchcommand"], "error: No such command 'nosuchcommand'."),
    (["jobs", "cancel"], "error: Missing argument"),
    (["dashboard", "--port", "x"], "error: Invalid value for '--port'"),
    # submit and status parse their own options (piblade.cli.entry): the same shape of report
    (["submit"], "error: the following arguments are required: JOB"),
    (["submit", "noop", "--retries", "x"], "error: argument --retries: invalid int value: 'x'"),
    (["status", "--every", "0"], "error: argument --every: must be at least 0.2 seconds"),
])
def test_the_installed_cli_reports_usage_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "COLUMNS": "200"}
    run = subprocess.run([str(Path(sys.executable).parent / "piblade"), *argv], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(message), run.stderr
    assert "Usage: piblade" in run.stderr
    assert "crashed" not in run.stderr
    assert not list(tmp_path.rglob("crash.log"))
