"""The unwinder, the CFI reader and the descriptor decoders know no target: importing
them loads no transport, no gdb driver, no session and no TUI toolkit."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("protocols", "pygdbmi", "textual", "inspector.session", "inspector.targets.gdb",
             "inspector.targets.qemu", "inspector.targets.agent")  # fmt: skip


@pytest.mark.parametrize(
    "module", ["inspector.unwind", "inspector.dwarf", "inspector.x86.descriptors"]
)
def test_pure_layers_load_no_target(module):
    code = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
