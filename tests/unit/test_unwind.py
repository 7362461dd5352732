"""The unwinder on stacks built from bytes: CFI, frame pointers, interrupt frames, stops."""

import struct

from kinspect.inspector.dwarf import CfiTable, parse_cfi
from kinspect.inspector.errors import FaultError
from kinspect.inspector.symbols import Symbol, SymbolTable
from kinspect.inspector.unwind import unwind

from .cfibuilder import (
    EhFrame,
    advance,
    def_cfa,
    def_cfa_offset,
    def_cfa_register,
    offset,
    undefined,
)

RBP, RSP, RIP = 6, 7, 16
SECTION = 0xFFFFFFFF80200000
TEXT = 0xFFFFFFFF80100000
LEAF, MID, TOP, NOCFI, ENTRY, VICTIM, HANDLER, LOOPY = (TEXT + 0x100 * i for i in range(1, 9))
STACK = 0xFFFFFFFF80300000  # 4 pages of stack, the page below is a guard
STACK_TOP = STACK + 0x4000

SYMBOLS = SymbolTable(
    [
        Symbol("leaf", LEAF, 0x40, "func"),
        Symbol("mid", MID, 0x40, "func"),
        Symbol("top", TOP, 0x40, "func"),
        Symbol("nocfi", NOCFI, 0x40, "func"),
        Symbol("entry", ENTRY, 0x40, "func"),
        Symbol("victim", VICTIM, 0x40, "func"),
        Symbol("handler", HANDLER, 0x10, "func"),
        Symbol("loopy", LOOPY, 0x40, "func"),
        Symbol("next_after_mid", MID + 0x40, 0x10, "func"),
        Symbol("stack_guard", STACK - 0x1000, 0x1000, "object"),
    ]
)


def build_cfi() -> CfiTable:
    eh = EhFrame(SECTION)
    std = eh.cie(def_cfa(RSP, 8) + offset(RIP, -8))
    eh.fde(std, LEAF, LEAF + 0x40)
    # push %rbp; mov %rsp,%rbp at MID
    eh.fde(
        std,
        MID,
        MID + 0x40,
        advance(1) + def_cfa_offset(16) + offset(RBP, -16) + advance(3) + def_cfa_register(RBP),
    )
    eh.fde(std, TOP, TOP + 0x40, undefined(RIP))
    eh.fde(std, VICTIM, VICTIM + 0x40)
    eh.fde(std, LOOPY, LOOPY + 0x40, def_cfa(RSP, 0))
    sig = eh.cie(def_cfa(RSP, 56) + offset(RIP, -40) + offset(RSP, -16), signal=True)
    eh.fde(sig, ENTRY, ENTRY + 0x40, advance(2) + def_cfa_offset(64) + offset(0, -64))
    return CfiTable(parse_cfi(eh.bytes(), SECTION))


CFI = build_cfi()


class Memory:
    def __init__(self) -> None:
        self.data = bytearray(0x4000)
        self.reads = 0

    def put(self, address: int, *values: int) -> None:
        for i, value in enumerate(values):
            at = address - STACK + 8 * i
            self.data[at : at + 8] = struct.pack("<Q", value)

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        if not STACK <= address and address + size <= STACK_TOP:
            raise FaultError(address, "not mapped")
        if address < STACK:
            raise FaultError(address, "not mapped")
        return bytes(self.data[address - STACK : address - STACK + size])


def mapping(address: int) -> str | None:
    return "stack" if STACK <= address < STACK_TOP else None


def names(bt):
    return [f.symbol for f in bt.frames]


def test_cfi_chain_to_the_outermost_frame():
    mem = Memory()
    sp = STACK + 0x3F00
    rbp = sp + 0x40
    mem.put(sp, MID + 0x40)  # leaf returns to the very end of mid (a call as mid's last insn)
    mem.put(rbp, 0, TOP + 0x10)  # mid's saved rbp and its return address
    regs = {"rip": LEAF + 4, "rsp": sp, "rbp": rbp}
    bt = unwind(mem.read, regs, cfi=CFI, symbols=SYMBOLS, mapping=mapping)
    assert names(bt) == ["leaf", "mid", "top"]
    assert bt.stop == "outermost" and "top" in bt.reason
    leaf, mid, top = bt.frames
    assert leaf.how == "registers" and leaf.cfa == sp + 8 and leaf.offset == 4
    assert mid.how == "cfi" and mid.pc == MID + 0x40 and mid.offset == 0x40  # symbolized at pc-1
    assert mid.sp == sp + 8 and mid.cfa == rbp + 16
    assert top.sp == rbp + 16 and top.mapping == "stack"
    assert bt.interrupts == ()
    assert "stopped: outermost" in str(bt)


def test_frame_pointer_fallback_where_no_cfi():
    mem = Memory()
    sp = STACK + 0x3E00
    rbp = sp + 0x20
    mem.put(rbp, rbp + 0x40, TOP + 0x8)
    bt = unwind(
        mem.read,
        {"rip": NOCFI + 9, "rsp": sp, "rbp": rbp},
        cfi=CFI,
        symbols=SYMBOLS,
        mapping=mapping,
    )
    assert names(bt) == ["nocfi", "top"]
    assert bt.frames[1].how == "frame-pointer" and bt.frames[0].cfa == rbp + 16
    assert bt.stop == "outermost"


def test_no_cfi_and_no_frame_pointer():
    mem = Memory()
    bt = unwind(
        mem.read,
        {"rip": NOCFI, "rsp": STACK + 0x3000, "rbp": 0},
        cfi=CFI,
        symbols=SYMBOLS,
        mapping=mapping,
    )
    assert names(bt) == ["nocfi"] and bt.stop == "no-unwind-info"
    assert "RBP (0x0)" in bt.reason


def test_crosses_a_cfi_signal_frame_to_the_interrupted_function():
    mem = Memory()
    s = STACK + 0x3C00
    interrupted_sp = STACK + 0x3D00
    # leaf (called by the handler) returns into entry+8, where cfa = rsp+64
    mem.put(s, ENTRY + 8)
    entry_sp = s + 8
    cfa = entry_sp + 64
    mem.put(cfa - 64, 0x1234)  # saved rax
    mem.put(cfa - 56, 14, 0x2)  # vector, error code (the stub's layout)
    mem.put(cfa - 40, VICTIM + 7, 0x8, 0x202, interrupted_sp, 0x10)  # the IRETQ frame
    mem.put(interrupted_sp, TOP + 0x20)
    bt = unwind(
        mem.read, {"rip": LEAF + 1, "rsp": s, "rbp": 0}, cfi=CFI, symbols=SYMBOLS, mapping=mapping
    )
    assert names(bt) == ["leaf", "entry", "victim", "top"]
    victim = bt.frames[2]
    assert victim.how == "interrupt" and victim.pc == VICTIM + 7 and victim.sp == interrupted_sp
    assert victim.interrupt.rip == VICTIM + 7 and victim.interrupt.cs == 0x8
    assert victim.interrupt.rflags == 0x202 and victim.interrupt.ss == 0x10
    assert victim.interrupt.error_code == 0x2 and victim.interrupt.address == cfa - 40
    assert bt.frames[1].cfa == cfa
    assert len(bt.interrupts) == 1 and "--- interrupt frame at" in str(bt)
    assert bt.stop == "outermost"


def test_interrupted_pc_is_looked_up_exactly_not_minus_one():
    mem = Memory()
    s = STACK + 0x3C00
    mem.put(s, ENTRY + 8)
    cfa = s + 8 + 64
    # interrupted at victim's first instruction: pc-1 would be in "handler"'s neighbour
    mem.put(cfa - 40, VICTIM, 0x8, 0x2, STACK + 0x3D00, 0x10)
    mem.put(STACK + 0x3D00, TOP + 0x20)
    bt = unwind(mem.read, {"rip": LEAF, "rsp": s}, cfi=CFI, symbols=SYMBOLS, mapping=mapping)
    assert names(bt)[2] == "victim" and bt.frames[2].offset == 0


def test_pc_at_an_idt_handler_entry_uses_the_cpu_frame():
    mem = Memory()
    s = STACK + 0x3B00
    mem.put(s, 0x2, VICTIM + 3, 0x8, 0x46, STACK + 0x3C00, 0x0)  # error code, then IRETQ frame
    mem.put(STACK + 0x3C00, TOP + 1)
    bt = unwind(
        mem.read,
        {"rip": HANDLER, "rsp": s},
        cfi=CFI,
        symbols=SYMBOLS,
        mapping=mapping,
        idt_handlers={HANDLER: 14},
    )
    assert names(bt) == ["handler", "victim", "top"]
    frame = bt.frames[1].interrupt
    assert frame.vector == 14 and frame.error_code == 0x2 and frame.address == s + 8
    assert "vector 14 (#PF)" in str(frame)
    # #BP pushes no error code: the frame starts at RSP
    mem.put(s, VICTIM + 3, 0x8, 0x46, STACK + 0x3C00, 0x0)
    bt = unwind(
        mem.read,
        {"rip": HANDLER, "rsp": s},
        cfi=CFI,
        symbols=SYMBOLS,
        mapping=mapping,
        idt_handlers={HANDLER: 3},
    )
    assert bt.frames[1].interrupt.error_code is None and bt.frames[1].pc == VICTIM + 3


def test_stack_in_a_guard_page_stops_and_says_so():
    mem = Memory()
    bt = unwind(
        mem.read, {"rip": LEAF, "rsp": STACK - 0x10}, cfi=CFI, symbols=SYMBOLS, mapping=mapping
    )
    assert len(bt.frames) == 1 and bt.frames[0].mapping is None
    assert bt.stop == "unmapped-stack" and "stack_guard+0xff0" in bt.reason


def test_unreadable_stack_without_mapping_lookup():
    mem = Memory()
    bt = unwind(mem.read, {"rip": LEAF, "rsp": STACK - 0x10}, cfi=CFI, symbols=SYMBOLS)
    assert bt.stop == "unreadable-stack" and len(bt.frames) == 1


def test_loop_is_detected():
    mem = Memory()
    sp = STACK + 0x3000
    mem.put(sp - 8, LOOPY + 4)
    bt = unwind(mem.read, {"rip": LOOPY + 4, "rsp": sp}, cfi=CFI, symbols=SYMBOLS, mapping=mapping)
    assert bt.stop == "loop" and len(bt.frames) == 1


def test_depth_limit():
    mem = Memory()
    sp = STACK + 0x2000
    for i in range(200):
        mem.put(sp + 8 * i, VICTIM + 5)
    bt = unwind(
        mem.read,
        {"rip": VICTIM + 5, "rsp": sp},
        cfi=CFI,
        symbols=SYMBOLS,
        mapping=mapping,
        max_depth=10,
    )
    assert bt.stop == "depth-limit" and len(bt.frames) == 10


def test_null_and_non_canonical_return_addresses():
    mem = Memory()
    sp = STACK + 0x2000
    mem.put(sp, 0)
    bt = unwind(mem.read, {"rip": LEAF, "rsp": sp}, cfi=CFI, symbols=SYMBOLS, mapping=mapping)
    assert bt.stop == "null-return"
    mem.put(sp, 0x1000000000000000)  # non-canonical under 4- and 5-level paging
    bt = unwind(mem.read, {"rip": LEAF, "rsp": sp}, cfi=CFI, symbols=SYMBOLS, mapping=mapping)
    assert bt.stop == "bad-return-address" and "not canonical" in bt.reason


def test_never_throws_on_a_broken_reader():
    def broken(address: int, size: int) -> bytes:
        raise ValueError("boom")

    bt = unwind(broken, {"rip": LEAF, "rsp": STACK + 0x100}, cfi=CFI, symbols=SYMBOLS)
    assert bt.stop == "error" and "boom" in bt.reason and len(bt.frames) == 1
    assert unwind(broken, {}, cfi=CFI).stop == "error"


def test_without_symbols_or_cfi():
    mem = Memory()
    sp = STACK + 0x3E00
    rbp = sp + 0x20
    mem.put(rbp, 0, 0)
    bt = unwind(mem.read, {"rip": NOCFI, "rsp": sp, "rbp": rbp})
    assert bt.frames[0].symbol is None and bt.stop == "null-return"
    assert bt.to_dict()["frames"][0]["symbol"] is None


def test_reprs_read_like_constructors_with_addresses_in_hex():
    mem = Memory()
    sp = STACK + 0x3E00
    mem.put(sp, 0)
    frame = unwind(mem.read, {"rip": LEAF, "rsp": sp}, cfi=CFI, symbols=SYMBOLS).frames[0]
    text = repr(frame)
    assert text.startswith("Frame(index=0, pc=0xffffffff80100100, sp=0xffffffff80303e00")
    assert "how='registers'" in text
