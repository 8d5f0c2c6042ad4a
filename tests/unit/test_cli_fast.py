"""`piblade status` and `piblade submit` parse their own options: the same command line, either way in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from piblade.cli import entry, status_cmd, submit_cmd

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "expected"), [
    (["status"], ("status", [], False)),
    (["-v", "status", "--json"], ("status", ["--json"], True)),
    (["--verbose", "submit", "noop", "-p", "count=1"], ("submit", ["noop", "-p", "count=1"], True)),
    (["jobs", "status"], None),  # a group's subcommand of the same name is Typer's
    (["--version"], None),
    (["--help"], None),
    ([], None),
])
def test_only_the_hot_commands_skip_typer(argv: list[str], expected: tuple[str, list[str], bool] | None) -> None:
    assert entry.fast_command(argv) == expected


def test_the_inventory_comes_from_the_environment_unless_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLADE_INVENTORY", str(tmp_path / "env.yml"))
    for parser in (status_cmd.build_parser(), submit_cmd.build_parser()):
        extra = ["noop"] if parser.prog.endswith("submit") else []
        assert parser.parse_args(extra).inventory == tmp_path / "env.yml"
        assert parser.parse_args([*extra, "-i", "other.yml"]).inventory == Path("other.yml")


def test_submit_reads_every_option() -> None:
    args = submit_cmd.build_parser().parse_args(
        ["mandelbrot", "-p", "tiles=4", "--param", "width=80", "-q", "big", "--timeout", "30", "--retries", "2",
         "-w", "--over", "photos/*.jpg", "--json", "-i", "pis.yml"])
    assert (args.job, args.param, args.queue, args.timeout, args.retries, args.wait_, args.over, args.as_json,
            args.inventory) == ("mandelbrot", ["tiles=4", "width=80"], "big", 30, 2, True, "photos/*.jpg", True,
                                Path("pis.yml"))


@pytest.mark.parametrize("how", ["console script", "typer app"])
def test_a_usage_error_reads_the_same_through_typer_and_without_it(how: str, tmp_path: Path) -> None:
    """The Typer app lists the two commands and hands them their arguments: one parser, one message."""
    main = "piblade.cli.entry" if how == "console script" else "piblade.cli.app"
    code = f"import sys; sys.argv = ['piblade', *sys.argv[1:]]; from {main} import main; main()"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-c", code, "status", "--every", "0.1"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: argument --every: must be at least 0.2 seconds, not '0.1'",
        "Usage: piblade status [OPTIONS]  (see 'piblade status --help')",
    ]


def test_the_input_directory_must_exist_and_be_one(tmp_path: Path) -> None:
    parser = submit_cmd.build_parser()
    (tmp_path / "file").write_text("x")
    assert parser.parse_args(["ingest", "--input", str(tmp_path)]).input_dir == tmp_path
    for bad in (tmp_path / "nothing", tmp_path / "file"):
        with pytest.raises(Exception, match="does not exist|not a directory"):
            parser.parse_args(["ingest", "--input", str(bad)])


def test_a_bad_inventory_in_the_environment_is_a_usage_error_only_when_it_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLADE_INVENTORY", str(tmp_path))  # a directory
    parser = status_cmd.build_parser()
    assert parser.parse_args(["-i", "pis.yml"]).inventory == Path("pis.yml")  # -i wins, the variable is not read
    with pytest.raises(Exception, match="is a directory"):
        parser.parse_args([])


def test_an_abbreviated_option_is_refused() -> None:
    """`--ret` would mean --retries today and be ambiguous once another --ret… option exists."""
    with pytest.raises(Exception, match="unrecognized arguments: --ret"):
        submit_cmd.build_parser().parse_args(["noop", "--ret", "1"])
