"""gdb's breakpoint table (``-break-list``) decoded into Breakpoint records.

The MI lines are gdb 13's own answers on the demo kernel's ELF (no target
needed), parsed by pygdbmi as the session parses them; the MI2 and
several-location rows follow the layout in gdb's manual (GDB/MI
Breakpoint Information).
"""

import pytest
from pygdbmi.gdbmiparser import parse_response

from kinspect.inspector.errors import ProtocolError
from kinspect.inspector.targets.base import Breakpoint
from kinspect.inspector.targets.gdb import decode_break_table

HDR = (
    'hdr=[{width="7",alignment="-1",col_name="number",colhdr="Num"},'
    '{width="14",alignment="-1",col_name="type",colhdr="Type"},'
    '{width="4",alignment="-1",col_name="disp",colhdr="Disp"},'
    '{width="3",alignment="-1",col_name="enabled",colhdr="Enb"},'
    '{width="18",alignment="-1",col_name="addr",colhdr="Address"},'
    '{width="40",alignment="2",col_name="what",colhdr="What"}]'
)

ADDRESS = (
    'bkpt={number="1",type="breakpoint",disp="keep",enabled="y",addr="0xffffffff80100000",'
    'func="pvh_start32",file="demo/boot.S",fullname="/work/main/kernel-agent/demo/boot.S",'
    'line="56",thread-groups=["i1"],times="0",original-location="*0xffffffff80100000"}'
)
SYMBOL = (
    'bkpt={number="2",type="breakpoint",disp="keep",enabled="y",addr="0xffffffff80102560",'
    'func="demo_level3",file="demo/work.c",fullname="/work/main/kernel-agent/demo/work.c",'
    'line="17",thread-groups=["i1"],times="3",original-location="demo_level3"}'
)
PENDING_DISABLED = (
    'bkpt={number="3",type="breakpoint",disp="keep",enabled="n",addr="<PENDING>",'
    'pending="nosuch",times="0",original-location="nosuch"}'
)
WATCH = (
    'bkpt={number="4",type="hw watchpoint",disp="keep",enabled="y",what="agent_pt_used",'
    'times="2",original-location="agent_pt_used"}'
)


def table(*rows: str) -> dict:
    line = (
        f'^done,BreakpointTable={{nr_rows="{len(rows)}",nr_cols="6",{HDR},body=[{",".join(rows)}]}}'
    )
    return parse_response(line)["payload"]


def test_rows_as_gdb_lists_them():
    got = decode_break_table(table(ADDRESS, SYMBOL, PENDING_DISABLED, WATCH))
    assert got == [
        Breakpoint(1, 0xFFFFFFFF80100000, "pvh_start32 at demo/boot.S:56", 0, True),
        Breakpoint(2, 0xFFFFFFFF80102560, "demo_level3 at demo/work.c:17", 3, True),
        Breakpoint(3, None, "nosuch", 0, False),
        Breakpoint(4, None, "agent_pt_used", 2, True, "hw watchpoint"),
    ]
    assert got[1].to_dict() == {
        "number": 2,
        "address": 0xFFFFFFFF80102560,
        "location": "demo_level3 at demo/work.c:17",
        "hits": 3,
        "enabled": True,
        "kind": "breakpoint",
    }
    assert str(got[2]) == "3: breakpoint at - nosuch, hit 0 (disabled)"


def test_an_empty_table():
    assert (
        decode_break_table(
            parse_response('^done,BreakpointTable={nr_rows="0",nr_cols="6",hdr=[],body=[]}')[
                "payload"
            ]
        )
        == []
    )


def test_several_locations_mi3_nested():
    row = (
        'bkpt={number="5",type="breakpoint",disp="keep",enabled="y",addr="<MULTIPLE>",times="1",'
        'original-location="inl",locations=['
        '{number="5.1",enabled="y",addr="0xffffffff80102600",func="caller_a",file="a.c",line="3",'
        'thread-groups=["i1"]},'
        '{number="5.2",enabled="y",addr="0xffffffff80102700",func="caller_b",file="b.c",line="4",'
        'thread-groups=["i1"]}]}'
    )
    (got,) = decode_break_table(table(row))
    assert got == Breakpoint(5, 0xFFFFFFFF80102600, "caller_a at a.c:3 (2 locations)", 1, True)


def test_several_locations_mi2_as_rows_after_their_breakpoint():
    rows = (
        'bkpt={number="5",type="breakpoint",disp="keep",enabled="y",addr="<MULTIPLE>",times="0",'
        'original-location="inl"}',
        '{number="5.1",enabled="y",addr="0xffffffff80102600",func="caller_a"}',
        '{number="5.2",enabled="y",addr="0xffffffff80102700",func="caller_b"}',
        SYMBOL,
    )
    got = decode_break_table(table(*rows))
    assert [(b.number, b.address, b.location) for b in got] == [
        (5, 0xFFFFFFFF80102600, "caller_a (2 locations)"),
        (2, 0xFFFFFFFF80102560, "demo_level3 at demo/work.c:17"),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"BreakpointTable": {"hdr": []}},
        {"BreakpointTable": {"body": [{"type": "breakpoint"}]}},
        {"BreakpointTable": {"body": [{"number": "x1"}]}},
        {"BreakpointTable": {"body": [{"number": "7.1", "addr": "0x10"}]}},
    ],
)
def test_malformed_tables_are_protocol_errors(payload):
    with pytest.raises(ProtocolError):
        decode_break_table(payload)


def test_a_target_that_cannot_break_lists_none_and_cannot_delete():
    from kinspect.inspector.errors import TargetError
    from kinspect.inspector.session import Session
    from tests.unit.test_target_run_control import Quiet

    session = Session(Quiet())
    assert session.breakpoints() == []
    with pytest.raises(TargetError, match="quiet target cannot set breakpoints"):
        session.break_delete(1)
