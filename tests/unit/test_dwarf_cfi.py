"""CFI programs built from bytes: parsed and run to the row of a PC."""

import pytest

from kinspect.inspector.dwarf import CfiTable, execute_cfi, parse_cfi
from kinspect.inspector.errors import DecodeError

from .cfibuilder import (
    REMEMBER,
    RESTORE_STATE,
    DebugFrame,
    EhFrame,
    advance,
    def_cfa,
    def_cfa_offset,
    def_cfa_register,
    offset,
    undefined,
)

SECTION = 0xFFFFFFFF80102C70
FN = 0xFFFFFFFF80101600
RBP, RSP, RIP = 6, 7, 16

# push %rbp; mov %rsp,%rbp (GCC's prologue), ..., leave; ret with remember/restore
PROLOGUE = (
    advance(1)
    + def_cfa_offset(16)
    + offset(RBP, -16)
    + advance(3)
    + def_cfa_register(RBP)
    + advance(0x10)
    + REMEMBER
    + def_cfa(RSP, 8)
    + advance(1)
    + RESTORE_STATE
)


def eh_frame_with_prologue() -> bytes:
    eh = EhFrame(SECTION)
    cie = eh.cie(def_cfa(RSP, 8) + offset(RIP, -8))
    eh.fde(cie, FN, FN + 0x1D, PROLOGUE)
    eh.fde(cie, FN + 0x1D, FN + 0x4D, undefined(RIP))
    return eh.bytes()


def test_eh_frame_pcrel_addresses_are_rebuilt():
    fdes = parse_cfi(eh_frame_with_prologue(), SECTION)
    assert [(f.start, f.end) for f in fdes] == [(FN, FN + 0x1D), (FN + 0x1D, FN + 0x4D)]
    assert fdes[0].cie.augmentation == "zR" and fdes[0].cie.data_alignment == -8
    assert fdes[0].cie.return_register == RIP and not fdes[0].cie.signal_frame


def test_rows_follow_the_prologue():
    fde = parse_cfi(eh_frame_with_prologue(), SECTION)[0]
    at_entry = execute_cfi(fde, FN)
    assert (at_entry.cfa_register, at_entry.cfa_offset) == (RSP, 8)
    assert at_entry.rule(RIP).kind == "offset" and at_entry.rule(RIP).value == -8
    assert at_entry.rule(RBP).kind == "same_value"
    after_push = execute_cfi(fde, FN + 1)
    assert after_push.cfa_offset == 16 and after_push.rule(RBP).value == -16
    body = execute_cfi(fde, FN + 4)
    assert (body.cfa_register, body.cfa_offset) == (RBP, 16) and body.location == FN + 4
    assert execute_cfi(fde, FN + 3).cfa_register == RSP  # advance is exclusive of later rows
    after_leave = execute_cfi(fde, FN + 0x14)
    assert (after_leave.cfa_register, after_leave.cfa_offset) == (RSP, 8)
    restored = execute_cfi(fde, FN + 0x15)
    assert (restored.cfa_register, restored.cfa_offset) == (RBP, 16)


def test_undefined_return_address_marks_the_outermost_frame():
    table = CfiTable(parse_cfi(eh_frame_with_prologue(), SECTION))
    row = table.row(FN + 0x20)
    assert row.rule(RIP).kind == "undefined"
    assert table.row(FN + 0x4D) is None and table.row(FN - 1) is None


def test_signal_frame_augmentation():
    eh = EhFrame(SECTION)
    cie = eh.cie(def_cfa(RSP, 56) + offset(RIP, -40) + offset(RSP, -16), signal=True)
    eh.fde(cie, FN, FN + 0x40, advance(1) + def_cfa_offset(64) + offset(0, -64))
    fde = parse_cfi(eh.bytes(), SECTION)[0]
    assert fde.cie.signal_frame and fde.cie.augmentation == "zRS"
    row = execute_cfi(fde, FN + 2)
    assert row.signal_frame and row.cfa_offset == 64 and row.rule(0).value == -64
    assert row.rule(RSP).value == -16


def test_debug_frame_absolute_addresses_and_merge():
    df = DebugFrame()
    cie = df.cie(def_cfa(RSP, 8) + offset(RIP, -8))
    df.fde(cie, FN, FN + 0x1D, advance(1) + def_cfa_offset(32))
    df.fde(cie, FN + 0x100, FN + 0x120)
    debug = parse_cfi(df.bytes(), 0, eh_frame=False)
    assert [(f.start, f.end, f.section) for f in debug] == [
        (FN, FN + 0x1D, ".debug_frame"),
        (FN + 0x100, FN + 0x120, ".debug_frame"),
    ]
    table = CfiTable(parse_cfi(eh_frame_with_prologue(), SECTION) + debug)
    assert table.find(FN + 2).section == ".eh_frame"  # both describe it: .eh_frame wins
    assert table.find(FN + 0x110).section == ".debug_frame"  # only .debug_frame does


def test_slide_moves_every_range():
    table = CfiTable(parse_cfi(eh_frame_with_prologue(), SECTION), slide=0x200000)
    assert table.find(FN) is None and table.find(FN + 0x200000).start == FN
    assert table.row(FN + 0x200004).cfa_register == RBP


def test_unknown_opcode_and_truncation_are_decode_errors():
    eh = EhFrame(SECTION)
    cie = eh.cie(def_cfa(RSP, 8))
    eh.fde(cie, FN, FN + 8, b"\x3f")
    fde = parse_cfi(eh.bytes(), SECTION)[0]
    with pytest.raises(DecodeError):
        execute_cfi(fde, FN + 1)
    with pytest.raises(DecodeError):
        parse_cfi(eh_frame_with_prologue()[:30], SECTION)
