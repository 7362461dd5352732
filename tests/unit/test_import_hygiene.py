"""The headless layers never load the TUI toolkit (harlequin's import-hygiene test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEADLESS = [
    "kinspect.inspector.api",
    "kinspect.inspector.cli",
    "kinspect.inspector.session",
    "kinspect.inspector.targets.gdb",
    "kinspect.inspector.targets.qemu",
    "kinspect.inspector.x86.paging",
    "kinspect.protocols.gdbmi",
    "kinspect.protocols.qmp",
    "kinspect.tui.link",  # the TUI's own pure parts
    "kinspect.tui.model",
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
        "import sys, kinspect.protocols.gdbmi, kinspect.protocols.qmp; "
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('kinspect.inspector', 'kinspect.tui'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_command_line_starts_without_the_heavy_libraries():
    """Cold start (issue 16): the commands are registered and a session can be made without
    Textual, numpy, pyelftools or the fault and Linux analyses; a command that needs one
    imports it when it runs."""
    code = (
        "import sys\n"
        "from kinspect.inspector import api, cli, session\n"
        "from kinspect.inspector.commands import registry\n"
        "registry()\n"
        "heavy = ('textual', 'numpy', 'elftools', 'kinspect.inspector.fault',"
        " 'kinspect.inspector.linux.kernel', 'kinspect.inspector.tables')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
