"""The headless layers never load the TUI toolkit (harlequin's import-hygiene test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEADLESS = [
    "inspector.api",
    "inspector.cli",
    "inspector.session",
    "inspector.targets.gdb",
    "inspector.targets.qemu",
    "inspector.x86.paging",
    "protocols.gdbmi",
    "protocols.qmp",
    "tui.link",  # the TUI's own pure parts
    "tui.model",
]


@pytest.mark.parametrize("module", HEADLESS)
def test_headless_module_does_not_import_textual(module):
    code = f"import sys, {module}; print('textual' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_protocols_import_nothing_of_ours():
    code = (
        "import sys, protocols.gdbmi, protocols.qmp; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('inspector', 'tui')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
