"""The unwinder, the CFI reader and the descriptor decoders know no target: importing
them loads no transport, no gdb driver, no session and no TUI toolkit."""

from __future__ import annotations

import pytest

from tests.fresh_python import fresh_python

FORBIDDEN = (
    "kinspect.protocols",
    "pygdbmi",
    "textual",
    "kinspect.inspector.session",
    "kinspect.inspector.targets.gdb",
    "kinspect.inspector.targets.qemu",
    "kinspect.inspector.targets.agent",
)


@pytest.mark.parametrize(
    "module",
    ["kinspect.inspector.unwind", "kinspect.inspector.dwarf", "kinspect.inspector.x86.descriptors"],
)
def test_pure_layers_load_no_target(module):
    code = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "[]"
