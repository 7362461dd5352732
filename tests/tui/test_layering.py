"""The TUI's own pure parts import no Textual, and no face imports the TUI unasked."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["tui.link", "tui.model"])
def test_pure_tui_modules_do_not_import_textual(module):
    code = f"import sys, {module}; print('textual' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_cli_loads_the_tui_only_for_tui_and_demo():
    code = (
        "import sys; from inspector import cli; cli.build_parser().parse_args(['regs']);"
        " print(sorted(m for m in sys.modules if m == 'tui' or m.startswith('tui.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
