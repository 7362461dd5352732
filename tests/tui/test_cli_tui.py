"""`kinspect tui` on the command line: usage errors and dead targets are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kinspect.inspector.cli import main


def test_tui_needs_a_target(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tui"])
    assert exit_info.value.code == 2
    assert "tui needs --target" in capsys.readouterr().err


def test_tui_on_nothing_listening_is_one_line_and_status_1(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinspect.inspector.cli",
            "--target",
            str(tmp_path / "none.sock"),
            "tui",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("kinspect: error: cannot attach to")
    assert "Traceback" not in result.stderr


def test_demo_prints_its_report_when_stdout_is_not_a_terminal():
    """The TUI needs a terminal; piped, kinspect demo keeps printing the report (tests use it)."""
    from kinspect.inspector import cli

    assert cli._interactive() is False  # pytest captures stdout
