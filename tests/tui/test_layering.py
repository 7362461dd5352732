"""No face imports the TUI unasked (the TUI's pure parts: tests/unit/test_import_hygiene.py)."""

from __future__ import annotations

from tests.fresh_python import fresh_python


def test_the_cli_loads_the_tui_only_for_tui_and_demo():
    code = (
        "import sys; from kinspect.inspector import cli; cli.build_parser().parse_args(['regs']);"
        " print(sorted(m for m in sys.modules"
        " if m == 'kinspect.tui' or m.startswith('kinspect.tui.')))"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "[]"


def test_the_tuis_pure_parts_load_no_textual():
    """What a stop means and the owner thread's loop are tested without an app."""
    code = (
        "import sys, kinspect.tui.stops, kinspect.tui.link, kinspect.tui.model;"
        " print('textual' in sys.modules)"
    )
    result = fresh_python(code, timeout=60)
    assert result.stdout.strip() == "False"
