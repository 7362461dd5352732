"""The pure parts of stepping, watchpoints, editing and the memory dump: argument parsing,
the debug-register rules (SDM 18.2.5: LEN 1, 2, 4, 8, aligned), the writes log, and
partial reads naming the first unreadable page exactly (on the in-memory capture)."""

from __future__ import annotations

import pytest

from kinspect.inspector.commands import registry
from kinspect.inspector.commands.edit import encode_write, parse_value
from kinspect.inspector.commands.stepping import parse_watch
from kinspect.inspector.errors import FaultError, InspectorError, TargetError
from kinspect.inspector.targets.base import check_watch
from kinspect.inspector.writes import WriteRecord, append_write, read_writes, writes_log
from kinspect.tui.controllers.editing import parse_write
from tests.tui.fakes import memory_session

DIRECT = 0xFFFF888000000000


def test_watch_arguments_in_either_order():
    assert parse_watch([]) == ("w", None)
    assert parse_watch(["r", "4"]) == ("r", 4)
    assert parse_watch(["2", "rw"]) == ("rw", 2)
    assert parse_watch(["WR"]) == ("rw", None)
    with pytest.raises(InspectorError, match="neither an access nor a length"):
        parse_watch(["x"])


@pytest.mark.parametrize(
    ("address", "length", "access", "error"),
    [
        (0x1000, 8, "w", None),
        (0x1002, 2, "r", None),
        (0x1001, 1, "rw", None),
        (0x1004, 8, "w", "not 8-byte aligned.*0x1000"),
        (0x1000, 3, "w", "1, 2, 4 or 8 bytes"),
        (0x1000, 16, "w", "1, 2, 4 or 8 bytes"),
        (0x1000, 4, "x", "w, r or rw"),
    ],
)
def test_a_debug_register_watches_an_aligned_1_2_4_or_8_bytes(address, length, access, error):
    if error is None:
        check_watch(address, length, access)
    else:
        with pytest.raises(TargetError, match=error):
            check_watch(address, length, access)


def test_bytes_to_write_hex_or_typed_little_endian():
    assert encode_write(["90", "90"]) == b"\x90\x90"
    assert encode_write(["deadbeef", "0xcc"]) == bytes.fromhex("deadbeefcc")
    assert encode_write([], ("u16", "0x1234")) == b"\x34\x12"
    assert encode_write([], ("u64", "-1")) == b"\xff" * 8
    assert encode_write([], ("u32", "-2147483648")) == bytes.fromhex("00000080")
    for words, typed, error in (
        (["abc"], None, "pairs of digits"),
        (["zz"], None, "not hex bytes"),
        ([], None, "give the bytes"),
        (["00"], ("u8", "1"), "not both"),
        ([], ("u8", "256"), "does not fit 8 bits"),
        ([], ("u8", "-129"), "does not fit 8 bits"),
    ):
        with pytest.raises(InspectorError, match=error):
            encode_write(words, typed)
    assert parse_value("0xffff_ffff_ffff_ffff") == (1 << 64) - 1


def test_the_tui_write_line_takes_the_same_forms():
    assert parse_write("0x1000 de ad") == ("0x1000", b"\xde\xad", False)
    assert parse_write("sym --physical --u16 7") == ("sym", b"\x07\x00", True)
    with pytest.raises(InspectorError, match="--u8, --u16"):
        parse_write("0x1000 --u128 1")
    with pytest.raises(InspectorError, match="needs an address"):
        parse_write("--physical")


def test_cli_write_takes_flags_between_the_bytes():
    parser = registry().build_parser()
    args = parser.parse_args(["write", "0x1000", "01", "--physical", "02", "-y", "03"])
    assert (args.bytes, args.physical, args.yes) == (["01", "02", "03"], True, True)
    args = parser.parse_args(["write", "0x1000", "01"])
    assert (args.bytes, args.physical, args.yes) == (["01"], False, False)


def test_writes_log_appends_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.delenv("KINSPECT_WRITES_LOG", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert writes_log() == tmp_path / "kinspect" / "writes.log"
    assert list(read_writes()) == []
    one = WriteRecord(1.5, "t", 0, "virtual", 0x1000, "00", "ff")
    two = WriteRecord(2.5, "t", 1, "register", "rax", "0x0", "0x1")
    append_write(one)
    with writes_log().open("a") as log:
        log.write("{not json\n")  # a line cut short: skipped
    append_write(two)
    assert list(read_writes()) == [one, two]
    assert "register rax" in str(two) and "old 00  new ff" in str(one)


def test_read_partial_names_the_first_unreadable_page():
    session = memory_session()
    target = session.target
    page = 0x1000000
    target.pages[page] = bytes(range(256)) * 16
    start = DIRECT + page + 0xFF0
    data, fault = session.read_partial(start, 0x20)
    # the next physical page is not in the capture: its first byte is named
    assert data == bytes(range(0xF0, 0x100)) and fault is not None
    assert fault.address == DIRECT + page + 0x1000
    data, fault = session.read_partial(DIRECT + page, 16)
    assert data == bytes(range(16)) and fault is None
    with pytest.raises(FaultError, match="non-canonical"):
        session.read_partial(0x800000000000, 16)


def test_session_write_memory_reads_back_and_refuses_unmapped(tmp_path, monkeypatch):
    monkeypatch.setenv("KINSPECT_WRITES_LOG", str(tmp_path / "w.log"))
    session = memory_session()
    session.target.pages[0x1000000] = bytes(4096)
    old = session.write_memory(DIRECT + 0x1000000, b"\x01\x02")
    assert old == b"\x00\x00"
    assert session.read_virtual(DIRECT + 0x1000000, 2) == b"\x01\x02"
    (record,) = read_writes(tmp_path / "w.log")
    assert (record.kind, record.where, record.old, record.new) == (
        "virtual",
        DIRECT + 0x1000000,
        "0000",
        "0102",
    )
    with pytest.raises(FaultError):
        session.write_memory(DIRECT + 0x1001000, b"\x01")  # not in the capture: unreadable
    assert len(list(read_writes(tmp_path / "w.log"))) == 1


def test_the_status_line_says_how_a_step_or_a_watchpoint_stopped():
    from kinspect.tui.stops import describe_stop

    def name(address: int) -> str:
        return {0x1000: "here"}.get(address, "")

    frame = {"frame": {"addr": "0x1000"}}
    assert describe_stop({"reason": "breakpoint-hit", "disp": "del", **frame}, name) == (
        "reached at here"
    )
    assert describe_stop({"reason": "breakpoint-hit", "bkptno": "2", **frame}, name) == (
        "breakpoint 2 at here"
    )
    assert describe_stop({"reason": "function-finished", **frame}, name) == "finished at here"
    assert describe_stop({"reason": "end-stepping-range", **frame}, name) == "stepped at here"
    written = {"reason": "watchpoint-trigger", "wpt": {"number": "3", "exp": "x"}, **frame}
    assert describe_stop(written, name) == "watchpoint 3 at here"
    read = {"reason": "read-watchpoint-trigger", "hw-rwpt": {"number": "4"}, **frame}
    assert describe_stop(read, name) == "read watchpoint 4 at here"
    both = {"reason": "access-watchpoint-trigger", "hw-awpt": {"number": "5"}, **frame}
    assert describe_stop(both, name) == "access watchpoint 5 at here"


def test_a_stub_that_refuses_a_watchpoint_is_said_in_one_line():
    from kinspect.inspector.targets.gdb import GdbTarget
    from kinspect.protocols.gdbmi import MiError

    target = GdbTarget.__new__(GdbTarget)  # no gdb: only how a refusal is worded

    def refuse(command, timeout=None):
        raise MiError(
            command,
            "Could not insert hardware watchpoint 5.\nCould not insert hardware breakpoints:\n"
            "You may have requested too many hardware breakpoints/watchpoints.\n",
        )

    target._call = refuse
    with pytest.raises(TargetError, match=r"^the stub refused a hardware watchpoint") as error:
        target._run("-exec-continue")
    assert "\n" not in str(error.value) and "watchpoint 5" in str(error.value)


def test_a_watchpoint_gdb_would_emulate_in_software_is_refused_and_deleted():
    from types import SimpleNamespace

    from kinspect.inspector.targets.base import Breakpoint
    from kinspect.inspector.targets.gdb import GdbTarget

    target = GdbTarget.__new__(GdbTarget)
    sent = []
    target._require_stopped = lambda: None
    target._checked = lambda command, timeout=None: (
        sent.append(command) or SimpleNamespace(payload={"wpt": {"number": "7", "exp": "x"}})
    )
    target._call = lambda command, timeout=None: sent.append(command)
    target.breakpoints = lambda: [Breakpoint(7, None, "x", 0, True, "watchpoint")]
    with pytest.raises(TargetError, match="only emulate this watchpoint in software"):
        target.watch_insert(0x1000, 4, "rw")
    assert sent == ['-break-watch -a "*(unsigned int *) 0x1000"', "-break-delete 7"]
