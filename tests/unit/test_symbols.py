"""Symbol, line and slide lookups on synthetic tables (the real ELF is checked against
binutils' addr2line in tests/integration/test_backtrace.py)."""

import pytest

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.symbols import LineTable, SourceLine, Symbol, SymbolTable

A = SourceLine("demo/work.c", "/src/demo/work.c", 16)
B = SourceLine("demo/work.c", "/src/demo/work.c", 18)
C = SourceLine("demo/isr.S", "/src/demo/isr.S", 90)

LINES = LineTable([(0x1000, A), (0x1008, B), (0x1010, None), (0x2000, C), (0x2010, None)])
TABLE = SymbolTable(
    [
        Symbol("f", 0x1000, 0x10, "func"),
        Symbol("f_label", 0x1000, 0, "notype"),
        Symbol("stub", 0x2000, 0, "notype"),
        Symbol("var", 0x3000, 8, "object"),
    ],
    lines=LINES,
)


def test_line_rows_cover_up_to_the_next_row_and_stop_at_end_sequence():
    assert LINES.lookup(0x1000) == A and LINES.lookup(0x1007) == A
    assert LINES.lookup(0x1008) == B and LINES.lookup(0x100F) == B
    assert LINES.lookup(0x1010) is None and LINES.lookup(0xFFF) is None
    assert LINES.lookup(0x200F) == C


def test_addr2sym_prefers_functions_and_gives_offsets():
    s = TABLE.addr2sym(0x1009)
    assert (s.symbol, s.offset, s.line) == ("f", 9, B)
    assert str(s) == "0x1009 f+0x9 at demo/work.c:18"
    assert TABLE.addr2sym(0x2004).symbol == "stub"  # unsized label covers what follows
    assert TABLE.addr2sym(0x3008).symbol is None  # past the object's size
    assert TABLE.addr2sym(0x3008).to_dict() == {
        "address": 0x3008,
        "symbol": None,
        "offset": 0,
        "line": None,
    }


def test_slide_shifts_names_lines_and_lookups():
    slid = TABLE.with_slide(0x200000)
    assert slid.lookup("f") == 0x201000
    assert slid.addr2sym(0x201009).symbol == "f" and slid.addr2line(0x201009) == B
    assert slid.addr2sym(0x1009).symbol is None
    assert TABLE.slide_for("f", 0x1201000) == 0x1200000
    with pytest.raises(InspectorError):
        TABLE.slide_for("nope", 0)
