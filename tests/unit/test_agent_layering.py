"""The agent's Python side keeps the layering: protocols/ imports nothing of
ours, the framing imports no transport, nothing headless loads Textual."""

from __future__ import annotations

import pytest

from tests.fresh_python import fresh_python


def loaded_after(imports: str) -> set[str]:
    code = f"import sys, {imports}; print(' '.join(sorted(sys.modules)))"
    result = fresh_python(code, timeout=60)
    return set(result.stdout.split())


def test_agent_protocol_modules_import_nothing_of_ours():
    loaded = loaded_after(
        "kinspect.protocols.agent_wire, kinspect.protocols.agent_client, "
        "kinspect.protocols.transports"
    )
    assert not {m for m in loaded if m.startswith(("kinspect.inspector", "kinspect.tui"))}
    assert "textual" not in loaded


def test_framing_imports_no_transport_or_io():
    loaded = loaded_after("kinspect.protocols.agent_wire")
    assert "kinspect.protocols.transports" not in loaded
    assert "serial" not in loaded and "socket" not in loaded


@pytest.mark.parametrize(
    "module", ["kinspect.inspector.targets.agent", "kinspect.inspector.commands.agent"]
)
def test_agent_faces_do_not_load_textual(module):
    assert "textual" not in loaded_after(module)
