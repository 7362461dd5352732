"""The unwinder with Linux's ORC data: each entry type and base register on stacks
built from bytes, then three stacks captured from a stock Debian 6.1 guest, checked
against the guest's own backtraces of the same stacks."""

import gzip
import json
import re
import struct
from pathlib import Path

from kinspect.inspector.errors import FaultError
from kinspect.inspector.linux.orc import OrcEntry, OrcTable, decode_orc_entry
from kinspect.inspector.symbols import Symbol, SymbolTable
from kinspect.inspector.unwind import unwind

TEXT = 0xFFFFFFFF81000000
F0, F1, F2, F3, F4 = (TEXT + 0x1000 * i for i in range(1, 6))
NOORC = TEXT + 0x100000
STACK = 0xFFFFC90000010000  # task stack, 4 pages
IRQ_STACK = 0xFFFFC90000100000  # a second stack, higher
SYMBOLS = SymbolTable(
    [Symbol(name, TEXT + 0x1000 * (i + 1), 0x1000, "func") for i, name in enumerate("abcde")]
    + [Symbol("noorc", NOORC, 0x100, "func")]
)


def orc(sp_reg, sp_offset, type_, bp_reg=0, bp_offset=0):
    """A version-3 entry: sp_reg 5 SP, 4 BP, 9 SP_INDIRECT, 8 BP_INDIRECT, 6 R10,
    7 R13, 3 DI, 2 DX; type 2 CALL, 3 REGS, 4 REGS_PARTIAL, 1 END, 0 UNDEFINED."""
    signal = type_ in (3, 4)
    flags = sp_reg | bp_reg << 4 | type_ << 8 | signal << 11
    return decode_orc_entry(struct.pack("<hhH", sp_offset, bp_offset, flags), 3)


class FakeOrc:
    def __init__(self, entries: dict[int, OrcEntry]) -> None:
        self.entries = entries
        self.asked: list[int] = []

    def find(self, ip: int) -> OrcEntry | None:
        self.asked.append(ip)
        for start, entry in self.entries.items():
            if start <= ip < start + 0x1000:
                return entry
        return None


class Memory:
    def __init__(self) -> None:
        self.regions = {STACK: bytearray(0x4000), IRQ_STACK: bytearray(0x4000)}

    def put(self, address: int, *values: int) -> None:
        for i, value in enumerate(values):
            base, data = self._region(address + 8 * i)
            at = address + 8 * i - base
            data[at : at + 8] = struct.pack("<Q", value & (1 << 64) - 1)

    def _region(self, address: int):
        for base, data in self.regions.items():
            if base <= address < base + len(data):
                return base, data
        raise FaultError(address, "not mapped")

    def read(self, address: int, size: int) -> bytes:
        base, data = self._region(address)
        if address + size > base + len(data):
            raise FaultError(address + size, "not mapped")
        return bytes(data[address - base : address - base + size])


END = orc(0, 0, 1)


def names(bt):
    return [f.symbol for f in bt.frames]


def test_call_frames_with_rbp_saved_at_the_cfa_and_the_end_of_stack():
    mem = Memory()
    sp = STACK + 0x3E00
    # a: leaf, nothing pushed. b: pushed rbp and 16 more bytes (CFA = sp+32, rbp at CFA-16)
    mem.put(sp, F1 + 0x10)
    mem.put(sp + 8, 0, 0, 0x1234, F2 + 0x20)  # b's frame: ..., saved rbp, return into c
    entries = {F0: orc(5, 8, 2), F1: orc(5, 32, 2, bp_reg=1, bp_offset=-16), F2: END}
    table = FakeOrc(entries)
    bt = unwind(mem.read, {"rip": F0 + 4, "rsp": sp, "rbp": 0x5678}, orc=table, symbols=SYMBOLS)
    assert names(bt) == ["a", "b", "c"]
    assert [f.method for f in bt.frames] == [None, "orc", "orc"]
    assert [f.how for f in bt.frames] == ["registers", "orc", "orc"]
    assert bt.frames[1].cfa == sp + 8 + 32 and bt.frames[2].sp == sp + 40
    assert bt.stop == "outermost" and "ORC data marks c+0x20 as the stack's end" in bt.reason
    # return addresses are looked up at pc-1 (a call as a function's last instruction)
    assert table.asked == [F0 + 4, F1 + 0xF, F2 + 0x1F]
    assert "[orc]" in str(bt.frames[1]) and bt.to_dict()["frames"][1]["method"] == "orc"


def test_bp_based_cfa_and_rbp_from_rbp():
    mem = Memory()
    sp, rbp = STACK + 0x3D00, STACK + 0x3D40
    mem.put(rbp, 0xAAAA, F1 + 8)  # the frame-pointer layout: saved rbp, return address
    entries = {F0: orc(4, 16, 2, bp_reg=1, bp_offset=-16), F1: END}
    bt = unwind(mem.read, {"rip": F0, "rsp": sp, "rbp": rbp}, orc=FakeOrc(entries))
    assert [f.pc for f in bt.frames] == [F0, F1 + 8] and bt.frames[0].cfa == rbp + 16
    # bp_reg BP: the caller's RBP saved relative to this RBP
    entries = {F0: orc(5, 8, 2, bp_reg=4, bp_offset=-8), F1: END}
    mem.put(sp, F1 + 8)
    mem.put(rbp - 8, 0xBBBB)
    mem.put(sp + 8, 0)
    regs = {"rip": F0, "rsp": sp, "rbp": rbp}
    bt = unwind(mem.read, regs, orc=FakeOrc({**entries, F1: orc(4, 16, 2)}), max_depth=3)
    assert bt.frames[1].pc == F1 + 8  # and b unwinds from RBP 0xbbbb: not a stack address
    assert bt.stop == "unreadable-stack" and f"{0xBBBB + 16 - 8:#x}" in bt.reason


def test_sp_indirect_switches_from_the_irq_stack_down_to_the_task_stack():
    mem = Memory()
    irq_top = IRQ_STACK + 0x4000
    task_sp = STACK + 0x3F00
    # call_on_irqstack: the task RSP is saved at the IRQ stack's top, then the call
    mem.put(irq_top - 8, task_sp)
    mem.put(irq_top - 16, F1 + 0x30)
    mem.put(task_sp, F2 + 0x40)  # the task stack's caller: b was called from c
    entries = {F0: orc(5, 8, 2), F1: orc(9, 8, 2), F2: END}
    regs = {"rip": F0, "rsp": irq_top - 16, "rbp": 0}
    bt = unwind(mem.read, regs, orc=FakeOrc(entries), symbols=SYMBOLS)
    assert names(bt) == ["a", "b", "c"]
    assert bt.frames[1].sp == irq_top - 8 and bt.frames[1].cfa == task_sp + 8
    assert bt.frames[2].sp == task_sp + 8 < bt.frames[1].sp  # down: a switch, not a loop
    assert bt.stop == "outermost"


def test_bp_indirect_reads_the_cfa_at_rbp_plus_offset():
    mem = Memory()
    sp, rbp = STACK + 0x3C00, STACK + 0x3C80
    cfa = STACK + 0x3E00
    mem.put(rbp + 0x10, cfa)
    mem.put(cfa - 8, F1)
    entries = {F0: orc(8, 0x10, 2), F1: END}
    bt = unwind(mem.read, {"rip": F0, "rsp": sp, "rbp": rbp}, orc=FakeOrc(entries))
    assert bt.frames[0].cfa == cfa and bt.frames[1].pc == F1


def test_register_bases_from_the_cpu_and_lost_without_them():
    mem = Memory()
    sp = STACK + 0x3C00
    other = STACK + 0x3E00
    mem.put(other - 8, F1 + 1)
    mem.put(other, F2 + 1)
    for sp_reg, name in ((6, "r10"), (7, "r13"), (3, "rdi"), (2, "rdx")):
        entries = {F0: orc(sp_reg, 0, 2), F1: orc(sp_reg, 8, 2), F2: END}
        regs = {"rip": F0, "rsp": sp, "rbp": 0, name: other}
        bt = unwind(mem.read, regs, orc=FakeOrc(entries))
        assert bt.frames[0].cfa == other and bt.frames[1].pc == F1 + 1
        # after a call frame the register is unknown (no pt_regs): lost, honestly
        assert bt.stop == "no-unwind-info" and bt.reason.startswith(f"lost at {F1 + 1:#x}")
        assert "which is unknown here" in bt.reason


def pt_regs(**values: int) -> list[int]:
    order = "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_ax rip cs rflags rsp ss"
    return [values.get(name, 0x1000 + i) for i, name in enumerate(order.split())]


def test_full_pt_regs_give_every_register_of_the_interrupted_context():
    mem = Memory()
    sp = STACK + 0x3C00
    interrupted_sp = STACK + 0x3E00
    saved = pt_regs(
        rip=F1 + 0x21,
        cs=0x10,
        rflags=0x246,
        rsp=interrupted_sp,
        ss=0x18,
        orig_ax=0xFFFFFFFFFFFFFFFF,
        rbp=0x7777,
        r10=interrupted_sp + 0x80,
    )
    mem.put(sp, *saved)
    mem.put(interrupted_sp + 0x80, F2 + 5)
    # b was interrupted where its CFA is R10 (as in entry code): known from pt_regs
    entries = {F0: orc(5, 0, 3), F1: orc(6, 8, 2), F2: END}
    table = FakeOrc(entries)
    bt = unwind(mem.read, {"rip": F0, "rsp": sp}, orc=table, symbols=SYMBOLS)
    assert names(bt) == ["a", "b", "c"]
    frame = bt.frames[1]
    assert frame.how == "interrupt" and frame.method == "orc"
    assert frame.interrupt.address == sp + 16 * 8 and frame.interrupt.cs == 0x10
    assert frame.interrupt.error_code == 0xFFFFFFFFFFFFFFFF  # orig_ax
    assert frame.pc == F1 + 0x21 and frame.offset == 0x21 and frame.sp == interrupted_sp
    assert table.asked[1] == F1 + 0x21  # an exact PC: looked up as is
    assert "[interrupt via orc]" in str(bt.frames[1])
    assert bt.frames[2].pc == F2 + 5 and bt.stop == "outermost"


def test_partial_pt_regs_the_iret_frame_above_an_error_code():
    mem = Memory()
    sp = STACK + 0x3C00
    mem.put(sp, 0xE)  # an error code
    mem.put(sp + 8, F1 + 3, 0x10, 0x82, STACK + 0x3E00, 0x18)
    mem.put(STACK + 0x3E00, F2 + 1)
    # the IRET frame alone; b's CFA is then R13, which only the CPU's registers know
    entries = {F0: orc(5, 8, 4), F1: orc(7, 8, 2), F2: END}
    regs = {"rip": F0, "rsp": sp, "r13": STACK + 0x3E00}
    bt = unwind(mem.read, regs, orc=FakeOrc(entries))
    frame = bt.frames[1]
    assert frame.how == "interrupt" and frame.interrupt.address == sp + 8
    assert frame.pc == F1 + 3 and frame.sp == STACK + 0x3E00
    assert bt.frames[2].pc == F2 + 1 and bt.stop == "outermost"


def test_pt_regs_from_user_mode_are_the_end():
    mem = Memory()
    sp = STACK + 0x3F58
    mem.put(sp, *pt_regs(rip=0x47B7A0, cs=0x33, rsp=0x7FFF53C4CC98, ss=0x2B, orig_ax=1))
    bt = unwind(mem.read, {"rip": F0, "rsp": sp}, orc=FakeOrc({F0: orc(5, 0, 3)}))
    assert [f.pc for f in bt.frames] == [F0, 0x47B7A0]
    assert bt.stop == "outermost" and "entered from user space" in bt.reason


def test_a_cpu_in_user_space_has_no_kernel_stack_to_unwind():
    mem = Memory()
    regs = {"rip": 0x401000, "rsp": 0x7FFC0000, "cs": 0x33}
    bt = unwind(mem.read, regs, orc=FakeOrc({}))
    assert len(bt.frames) == 1 and bt.stop == "outermost" and "user space" in bt.reason


def test_undefined_entries_and_uncovered_code_are_lost_not_the_end():
    mem = Memory()
    sp = STACK + 0x3C00
    mem.put(sp, F1)
    bt = unwind(mem.read, {"rip": F0, "rsp": sp}, orc=FakeOrc({F0: orc(0, 0, 0)}))
    assert bt.stop == "no-unwind-info" and bt.reason.startswith(f"lost at {F0:#x}")
    assert "undefined" in bt.reason and "stack's end" not in bt.reason
    # no entry at all: the kernel's own fallback, the frame pointer, named as such
    rbp = sp + 0x20
    mem.put(rbp, 0, F1 + 4)
    entries = {F1: END}
    bt = unwind(mem.read, {"rip": NOORC, "rsp": sp, "rbp": rbp}, orc=FakeOrc(entries))
    assert bt.frames[1].method == "frame-pointer" and bt.frames[1].pc == F1 + 4
    assert bt.stop == "outermost"
    # a frame-pointer guess that reads 0 is lost, not the stack's end
    mem.put(rbp, 0, 0)
    bt = unwind(mem.read, {"rip": NOORC, "rsp": sp, "rbp": rbp}, orc=FakeOrc(entries))
    assert bt.stop == "null-return" and bt.reason.startswith(f"lost at {NOORC:#x}")
    assert "stack's end" not in bt.reason
    bt = unwind(mem.read, {"rip": NOORC, "rsp": sp, "rbp": 3}, orc=FakeOrc(entries))
    assert bt.stop == "no-unwind-info" and "no ORC entry or CFI covers it" in bt.reason


# -- stacks captured from a stock Debian 6.1 guest ----------------------------------------

FIXTURE = Path(__file__).parent.parent / "fixtures" / "linux-6.1-orc" / "stacks.json.gz"
_TRACE_LINE = re.compile(r"^\[[ \d.]+\]  ([\w.]+)\+(0x[0-9a-f]+)/0x[0-9a-f]+$")


def load_fixture():
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


def fixture_unwind(data, stop):
    """Unwind one captured stop offline: its stack pages and the ORC entries it uses
    (each with the next one, so every range keeps its end) in a table of their own."""
    entries = {int(ip, 16): bytes.fromhex(entry) for ip, entry in stop["orc"].items()}
    ips = sorted(entries)
    ip_table = data["orc_ip_table"] & ~0xFFF
    unwind_table = ip_table + 0x200000
    blobs = [
        (
            ip_table,
            b"".join(struct.pack("<i", ip - (ip_table + 4 * i)) for i, ip in enumerate(ips)),
        ),
        (unwind_table, b"".join(entries[ip] for ip in ips)),
        *((int(page, 16), bytes.fromhex(data)) for page, data in stop["memory"].items()),
    ]

    def read(address: int, size: int) -> bytes:
        out, hit = bytearray(size), False
        for base, blob in blobs:
            low, high = max(address, base), min(address + size, base + len(blob))
            if low < high:
                out[low - address : high - address] = blob[low - base : high - base]
                hit = True
        if not hit:
            raise FaultError(address, "not in the fixture")
        return bytes(out)

    table = OrcTable(read, ip_table, unwind_table, len(ips), version=data["orc_version"])
    kallsyms = sorted(data["kallsyms"].items(), key=lambda item: item[1])
    symbols = SymbolTable(
        [
            Symbol(name, address, kallsyms[i + 1][1] - address, "func")
            for i, (name, address) in enumerate(kallsyms[:-1])
        ]
    )
    return unwind(read, stop["registers"], orc=table, symbols=symbols)


def reliable_frames(oracle: str, cpu_line: str) -> list[str]:
    """The guest's own trace (``name+0xoff``) of one CPU, without its ``?`` guesses."""
    block = oracle[oracle.index(cpu_line) :]
    block = block[: block.index("</TASK>")]
    return [
        f"{m.group(1)}+{m.group(2)}"
        for line in block.splitlines()
        if (m := _TRACE_LINE.match(line))
    ]


def shown(frame) -> str:
    return f"{frame.symbol}+{frame.offset:#x}"


def test_fixture_idle_cpu_lists_the_idle_loop_like_the_guest():
    data = load_fixture()
    stop = data["stops"][0]
    bt = fixture_unwind(data, stop)
    got = [shown(f) for f in bt.frames]
    # the guest's sysrq-l trace of the same idle stack (it was in a timer interrupt then)
    oracle = reliable_frames(stop["oracle"], "NMI backtrace for cpu 0")
    assert got[0] == "native_safe_halt+0xb" and "RIP: 0010:native_safe_halt+0xb" in stop["oracle"]
    assert got[1:] == oracle[oracle.index("amd_e400_idle+0x3d") :]
    order = [f.symbol for f in bt.frames]
    assert (
        order.index("default_idle_call") < order.index("do_idle") < order.index("cpu_startup_entry")
    )
    assert [f.method for f in bt.frames[1:]] == ["orc"] * (len(bt.frames) - 1)
    assert bt.stop == "outermost" and "secondary_startup_64_no_verify" in bt.reason


def test_fixture_syscall_stack_matches_the_guests_dump_stack():
    data = load_fixture()
    stop = data["stops"][1]
    bt = fixture_unwind(data, stop)
    oracle = reliable_frames(stop["oracle"], "Comm: sh")
    # stopped at dump_stack_lvl's first instruction; the guest printed from inside it
    assert bt.frames[0].symbol == "dump_stack_lvl" and oracle[0].startswith("dump_stack_lvl+")
    assert [shown(f) for f in bt.frames[1:-1]] == oracle[1:]
    user = bt.frames[-1]
    assert user.interrupt is not None and user.interrupt.cs == 0x33
    rip = re.search(r"RIP: 0033:(0x[0-9a-f]+)", stop["oracle"]).group(1)
    rsp = re.search(r"RSP: 002b:([0-9a-f]+)", stop["oracle"]).group(1)
    assert user.pc == int(rip, 16) and user.sp == int(rsp, 16)
    assert user.interrupt.error_code == 1  # ORIG_RAX: write(2)
    assert bt.stop == "outermost" and "user space" in bt.reason


def test_fixture_timer_interrupt_crosses_irq_stack_and_pt_regs():
    data = load_fixture()
    stop = data["stops"][2]
    bt = fixture_unwind(data, stop)
    got = [shown(f) for f in bt.frames]
    assert got[:3] == [
        "__sysvec_apic_timer_interrupt+0x0",
        "sysvec_apic_timer_interrupt+0x69",
        "asm_sysvec_apic_timer_interrupt+0x16",
    ]
    # off the IRQ stack (SP_INDIRECT) onto the idle task's stack, lower in memory
    assert bt.frames[1].cfa < bt.frames[1].sp
    interrupted = bt.frames[3]
    assert interrupted.how == "interrupt" and interrupted.method == "orc"
    assert shown(interrupted) == "native_safe_halt+0xb" and interrupted.interrupt.cs == 0x10
    # the idle loop of a secondary CPU, as the guest's trace of CPU 1 ends
    cpu1 = reliable_frames(data["stops"][1]["oracle"], "NMI backtrace for cpu 1")
    assert (
        got[-3:]
        == cpu1[-3:]
        == [
            "cpu_startup_entry+0x26",
            "start_secondary+0x12a",
            "secondary_startup_64_no_verify+0xe5",
        ]
    )
    assert "default_idle_call+0x38" in got and "do_idle+0x206" in got
    assert bt.stop == "outermost"
