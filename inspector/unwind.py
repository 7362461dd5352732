"""The stack unwinder: Linux's ORC tables or DWARF CFI first, frame pointers
where neither covers the PC, and interrupt and exception frames (IRETQ frames,
``pt_regs``) crossed and reported.

:func:`unwind` knows no target. It takes a ``read_virtual(address, size)``
callable, the registers of the stopped CPU, the CFI table and symbols of the
kernel, and a ``mapping(address)`` lookup (from the page-table walk) that
names the mapping a stack address lies in, or None when nothing maps it. So
it is tested with bytes, and it never hangs or throws: it returns the frames
it found and says why it stopped.

Frames are found in four ways (``Frame.how``):

- ``orc``: the callee's ORC entry (``inspector/linux/orc.py``) gives the
  caller's stack pointer (the CFA, from RSP, RBP, a register saved in
  ``pt_regs``, or indirectly through a stack slot: how Linux switches to its
  IRQ stack) and where RBP was saved, as the kernel's own
  ``arch/x86/kernel/unwind_orc.c`` reads it;
- ``cfi``: the caller's registers come from the callee's CFI row;
- ``frame-pointer``: no FDE covers the PC, so ``[rbp]`` is the caller's RBP
  and ``[rbp+8]`` its return address (checked: RBP aligned, above RSP, mapped);
- ``interrupt``: the callee's CFI is a signal frame (CIE augmentation ``S``,
  as interrupt entry code writes it) or its PC is an IDT handler's first
  instruction, so the caller is the interrupted context, read from the IRETQ
  frame (RIP, CS, RFLAGS, RSP, SS). Its PC is exact, not a return address.
  An ORC entry of type REGS (a full ``pt_regs``) or REGS_PARTIAL (the IRET
  frame alone) leads there too.

``Frame.method`` says which unwind data found the frame (``orc``, ``cfi``,
``frame-pointer``, ``idt``), so an interrupt frame says whether ORC, CFI or
the IDT found it. A PC that no ORC entry or FDE covers is unwound through the
frame pointer (as the kernel does for generated code), which on a kernel
built without frame pointers is a guess: the walk then says it is lost, not
that the stack ended. An ORC entry marked "undefined" (code objtool could
not follow) ends the walk as lost; only an END_OF_STACK entry, a CFI row with
an undefined return address, or a ``pt_regs`` from user mode is the end.

The PC of a frame reached by a return address points after the call, so its
symbol and line are looked up at PC-1, as gdb and the Linux unwinder do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .dwarf import DWARF_REGISTERS, CfiRow
from .errors import DecodeError, InspectorError
from .linux.orc import (
    ORC_REG_BP,
    ORC_REG_BP_INDIRECT,
    ORC_REG_DI,
    ORC_REG_DX,
    ORC_REG_PREV_SP,
    ORC_REG_R10,
    ORC_REG_R13,
    ORC_REG_SP,
    ORC_REG_SP_INDIRECT,
    ORC_REG_UNDEFINED,
    ORC_TYPE_CALL,
    ORC_TYPE_END_OF_STACK,
    ORC_TYPE_REGS,
    ORC_TYPE_REGS_PARTIAL,
    ORC_TYPE_UNDEFINED,
    OrcEntry,
    orc_reg_name,
)
from .symbols import SourceLine, Symbol
from .x86.descriptors import ERROR_CODE_VECTORS, vector_name
from .x86.paging import is_canonical

__all__ = [
    "MAX_DEPTH",
    "Backtrace",
    "Frame",
    "InterruptFrame",
    "unwind",
]

#: Frames walked before the unwinder gives up.
MAX_DEPTH = 64

ReadVirtual = Callable[[int, int], bytes]
MappingLookup = Callable[[int], "str | None"]
_NUMBERS = {name: number for number, name in DWARF_REGISTERS.items()}
_RIP, _RSP, _RBP = 16, 7, 6


class _Cfi(Protocol):
    def row(self, pc: int) -> CfiRow | None: ...


class _Orc(Protocol):
    def find(self, ip: int) -> OrcEntry | None: ...


class _Symbols(Protocol):
    def symbolize(self, address: int) -> tuple[Symbol, int] | None: ...
    def addr2line(self, address: int) -> SourceLine | None: ...
    def format_address(self, address: int) -> str: ...


@dataclass(frozen=True, slots=True)
class InterruptFrame:
    """The IRETQ frame the CPU pushed on an interrupt or exception.

    ``address`` is where the saved RIP lies (the frame is 5 quadwords from
    there up). ``error_code`` is the quadword just below it: the CPU's error
    code when the vector pushes one, or the entry stub's placeholder where
    it pushes none (Linux's ``orig_ax``, the demo kernel's dummy 0); None
    when it could not be read. ``vector`` is known when the unwinder saw the
    handler's entry (IDT lookup), else None.
    """

    address: int
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    error_code: int | None
    vector: int | None

    def __str__(self) -> str:
        vector = ""
        if self.vector is not None:
            vector = f" vector {self.vector}" + (
                f" ({vector_name(self.vector)})" if vector_name(self.vector) else ""
            )
        error = "" if self.error_code is None else f" error={self.error_code:#x}"
        return (
            f"interrupt frame at {self.address:#x}{vector}: RIP={self.rip:#x} CS={self.cs:#x} "
            f"RFLAGS={self.rflags:#x} RSP={self.rsp:#x} SS={self.ss:#x}{error}"
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "rip": self.rip,
            "cs": self.cs,
            "rflags": self.rflags,
            "rsp": self.rsp,
            "ss": self.ss,
            "error_code": self.error_code,
            "vector": self.vector,
        }


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame.

    ``pc`` is the frame's instruction pointer (a return address for callers
    found through ``cfi`` or ``frame-pointer``); ``sp`` its stack pointer;
    ``cfa`` its Canonical Frame Address when known (the caller's RSP before
    the call). ``how`` says how this frame was found: ``registers`` (frame
    0), ``orc``, ``cfi``, ``frame-pointer`` or ``interrupt`` (then
    ``interrupt`` holds the IRETQ frame crossed). ``method`` is the unwind
    data that found it: ``orc``, ``cfi``, ``frame-pointer`` or ``idt`` (an
    IDT handler's first instruction), None for frame 0. ``mapping`` names the
    mapping ``sp`` lies in, None when nothing maps it.
    """

    index: int
    pc: int
    sp: int
    cfa: int | None
    symbol: str | None
    offset: int
    line: SourceLine | None
    how: str
    mapping: str | None
    interrupt: InterruptFrame | None
    method: str | None = None

    @property
    def function(self) -> str | None:
        return self.symbol

    def __str__(self) -> str:
        where = self.symbol or "??"
        if self.symbol and self.offset:
            where += f"+{self.offset:#x}"
        text = f"#{self.index:<2} {self.pc:#018x} {where}"
        if self.line:
            text += f" at {self.line}"
        cfa = f"{self.cfa:#x}" if self.cfa is not None else "?"
        how = self.how
        if self.method is not None and self.method != how:
            how += f" via {self.method}"
        text += f"  [{how}] sp={self.sp:#x} cfa={cfa}"
        text += f" in {self.mapping}" if self.mapping else " (unmapped stack)"
        return text

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pc": self.pc,
            "sp": self.sp,
            "cfa": self.cfa,
            "symbol": self.symbol,
            "offset": self.offset,
            "file": self.line.file if self.line else None,
            "path": self.line.path if self.line else None,
            "line": self.line.line if self.line else None,
            "how": self.how,
            "method": self.method,
            "mapping": self.mapping,
            "interrupt": self.interrupt.to_dict() if self.interrupt else None,
        }


@dataclass(frozen=True, slots=True)
class Backtrace:
    """The frames found, innermost first, and why the walk stopped.

    ``stop`` is one of ``outermost`` (the CFI marks the return address
    undefined: the first frame of the stack), ``null-return`` (a return
    address of 0), ``no-unwind-info`` (no CFI and no usable frame pointer),
    ``unmapped-stack``, ``unreadable-stack``, ``bad-return-address``
    (non-canonical), ``loop`` (the stack pointer did not move up, or a
    frame repeated), ``depth-limit``, ``unsupported-cfi`` (a DWARF
    expression) or ``error``; ``reason`` says it in a sentence.
    """

    frames: tuple[Frame, ...]
    stop: str
    reason: str

    @property
    def interrupts(self) -> tuple[InterruptFrame, ...]:
        """The interrupt frames crossed, innermost first."""
        return tuple(f.interrupt for f in self.frames if f.interrupt is not None)

    def __str__(self) -> str:
        lines = []
        for frame in self.frames:
            if frame.interrupt is not None:
                lines.append(f"    --- {frame.interrupt} ---")
            lines.append(str(frame))
        lines.append(f"stopped: {self.stop}: {self.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": [f.to_dict() for f in self.frames],
            "stop": self.stop,
            "reason": self.reason,
            "interrupts_crossed": len(self.interrupts),
        }


_HEX = frozenset(
    {"address", "rip", "cs", "rflags", "rsp", "ss", "error_code", "pc", "sp", "cfa", "offset"}
)


def _repr(record: Any) -> str:
    """Constructor-style repr with addresses in hex."""
    parts = []
    for name in record.__slots__:
        value = getattr(record, name)
        shown = f"{value:#x}" if name in _HEX and isinstance(value, int) else repr(value)
        parts.append(f"{name}={shown}")
    return f"{type(record).__name__}({', '.join(parts)})"


class _Stop(Exception):
    def __init__(self, code: str, reason: str, cfa: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.cfa = cfa


def unwind(
    read_virtual: ReadVirtual,
    registers: Mapping[str, int],
    *,
    cfi: _Cfi | None = None,
    symbols: _Symbols | None = None,
    mapping: MappingLookup | None = None,
    idt_handlers: Mapping[int, int] | None = None,
    orc: _Orc | None = None,
    max_depth: int = MAX_DEPTH,
    return_address: bool = False,
) -> Backtrace:
    """Walk the stack from ``registers`` (``rip``, ``rsp``, ``rbp``, ...).

    ``return_address``: ``rip`` is a return address, not the next instruction (a
    sleeping task's saved context, whose ``ret_addr`` follows the call that switched
    away), so its frame is looked up one byte before, as every caller's is.

    ``idt_handlers`` maps handler addresses to vectors, so that a PC at a
    handler's first instruction is known to sit on an IRETQ frame. ``orc``
    is a Linux kernel's ORC table (:class:`~.linux.orc.OrcTable`): where it
    has an entry for a PC, that entry unwinds the frame. Never raises: every
    failure becomes the backtrace's stop reason.
    """
    regs: dict[int, int] = {}
    for name, value in registers.items():
        number = _NUMBERS.get(name.lower())
        if number is not None:
            regs[number] = value & ((1 << 64) - 1)
    frames: list[Frame] = []
    if _RIP not in regs or _RSP not in regs:
        return Backtrace((), "error", "the registers have no RIP or RSP")

    def read_u64(address: int) -> int:
        try:
            data = read_virtual(address, 8)
        except InspectorError as exc:
            raise _Stop(
                "unreadable-stack", f"cannot read the stack at {address:#x}: {exc}"
            ) from exc
        if len(data) != 8:
            raise _Stop("unreadable-stack", f"short read at {address:#x}")
        return int.from_bytes(data, "little")

    def describe(address: int) -> str:
        return symbols.format_address(address) if symbols else f"{address:#x}"

    exact = not return_address  # frame 0, and frames reached through an interrupt frame
    how = "registers"
    method: str | None = None
    interrupt: InterruptFrame | None = None
    seen: set[tuple[int, int]] = set()
    stop, reason = "depth-limit", f"stopped after {max_depth} frames"
    while True:
        pc, sp = regs[_RIP], regs[_RSP]
        lookup = pc if exact else pc - 1
        symbol, offset, line = None, 0, None
        # a user-space PC (reached through a pt_regs from CPL 3) is in no kernel symbol
        in_user = interrupt is not None and interrupt.cs & 3 == 3
        if symbols is not None and not in_user:
            try:
                found = symbols.symbolize(lookup)
                if found is not None:
                    symbol, offset = found[0].name, pc - found[0].address - _slide(symbols)
                line = symbols.addr2line(lookup)
            except Exception:  # symbols are a help, never a reason to fail
                pass
        region = _region(mapping, sp)
        cfa: int | None = None
        try:
            if len(frames) + 1 >= max_depth:
                raise _Stop("depth-limit", f"stopped after {max_depth} frames")
            cs = registers.get("cs", 0)
            if not frames and orc is not None and cs & 3:
                raise _Stop(
                    "outermost",
                    f"the CPU runs in user space (CS={cs:#x}): no kernel stack to unwind",
                )
            if interrupt is not None and interrupt.cs & 3:
                raise _Stop(
                    "outermost",
                    f"the kernel was entered from user space here (CS={interrupt.cs:#x} "
                    f"in the frame at {interrupt.address:#x})",
                )
            step = _step(read_u64, regs, pc, lookup, cfi, idt_handlers, orc, describe)
        except _Stop as stop_exc:
            cfa = stop_exc.cfa
            frames.append(
                Frame(
                    len(frames), pc, sp, cfa, symbol, offset, line, how, region, interrupt, method
                )
            )
            stop, reason = stop_exc.code, stop_exc.reason
            if stop == "unreadable-stack" and mapping is not None and region is None:
                stop, reason = (
                    "unmapped-stack",
                    f"the stack pointer {sp:#x} ({describe(sp)}) lies in no mapping: "
                    "the stack overflowed into a guard page, or RSP is corrupt",
                )
            break
        except Exception as exc:  # never throw: a bug or bad data ends the walk, said plainly
            frames.append(
                Frame(
                    len(frames), pc, sp, cfa, symbol, offset, line, how, region, interrupt, method
                )
            )
            stop, reason = "error", f"unwinding failed at {pc:#x}: {exc}"
            break
        frames.append(
            Frame(
                len(frames), pc, sp, step.cfa, symbol, offset, line, how, region, interrupt, method
            )
        )
        caller, caller_interrupt = step.caller, step.interrupt
        new_pc, new_sp = caller.get(_RIP), caller.get(_RSP)
        if new_pc is None or new_sp is None:
            stop, reason = "no-unwind-info", f"the caller of {describe(pc)} has no RIP or RSP"
            break
        if new_pc == 0:
            if step.method == "frame-pointer":
                reason = (
                    f"lost at {pc:#x} ({describe(pc)}): no unwind data covers it, and the "
                    "frame-pointer guess reads a return address of 0 (the end of a "
                    "frame-pointer chain, or an RBP that is no frame pointer)"
                )
            else:
                reason = f"{describe(pc)} returns to address 0: the stack's end"
            stop = "null-return"
            break
        # 5-level, the widest mode: a 4-level kernel's reads refuse the rest
        if not is_canonical(new_pc, 5):
            stop, reason = (
                "bad-return-address",
                f"{describe(pc)} returns to {new_pc:#x}, which is not canonical",
            )
            break
        if (new_pc, new_sp) in seen or (
            caller_interrupt is None and not step.switched and new_sp <= sp
        ):
            stop, reason = (
                "loop",
                f"the caller of {describe(pc)} has RSP {new_sp:#x}, not above {sp:#x}: "
                "the stack loops",
            )
            break
        seen.add((new_pc, new_sp))
        regs = caller
        exact = caller_interrupt is not None
        how = step.how
        method = step.method
        interrupt = caller_interrupt
    return Backtrace(tuple(frames), stop, reason)


def _region(mapping: MappingLookup | None, sp: int) -> str | None:
    """The mapping holding the stack slot at ``sp``; an empty stack's RSP is its top,
    one past the mapping, so that case names the mapping below."""
    if mapping is None:
        return None
    try:
        region = mapping(sp)
        if region is None and not sp & 0xFFF and mapping(sp - 8) is not None:
            region = f"{mapping(sp - 8)} (RSP at its top: empty)"
        return region
    except Exception:
        return None


def _slide(symbols: Any) -> int:
    return getattr(symbols, "slide", 0)


@dataclass(frozen=True, slots=True)
class _Step:
    """One step out: the CFA, the caller's registers, how and with what data it was found,
    the interrupt frame crossed, and whether the stack was switched (RSP may go down)."""

    cfa: int | None
    caller: dict[int, int]
    how: str
    method: str
    interrupt: InterruptFrame | None = None
    switched: bool = False


def _step(
    read_u64: Callable[[int], int],
    regs: dict[int, int],
    pc: int,
    lookup: int,
    cfi: _Cfi | None,
    idt_handlers: Mapping[int, int] | None,
    orc: _Orc | None,
    describe: Callable[[int], str],
) -> _Step:
    sp = regs[_RSP]
    entry = None
    if orc is not None:
        try:
            entry = orc.find(lookup)
        except InspectorError as exc:
            raise _Stop(
                "unreadable-stack", f"cannot read the ORC entry of {describe(pc)}: {exc}"
            ) from exc
    if entry is not None and entry.type != ORC_TYPE_UNDEFINED:
        return _orc_step(read_u64, regs, pc, entry, describe)
    if idt_handlers and pc in idt_handlers:
        # The first instruction of a handler: the IRETQ frame is on top of
        # the stack, above the error code when the vector pushes one.
        vector = idt_handlers[pc]
        has_error = vector in ERROR_CODE_VECTORS
        frame_at = sp + (8 if has_error else 0)
        error = read_u64(sp) if has_error else None
        cfa, iret_regs, interrupt = _from_iret(
            read_u64, regs, frame_at, frame_at + 40, error, vector
        )
        return _Step(cfa, iret_regs, "interrupt", "idt", interrupt)
    row = None
    if cfi is not None:
        try:
            row = cfi.row(lookup)
        except DecodeError as exc:
            raise _Stop(
                "unsupported-cfi", f"the CFI of {describe(pc)} does not decode: {exc}"
            ) from exc
    if row is None and entry is not None:
        raise _Stop(
            "no-unwind-info",
            f"lost at {pc:#x} ({describe(pc)}): no unwind data (its ORC entry is undefined: "
            "code objtool could not follow)",
        )
    if row is None:
        return _frame_pointer(read_u64, regs, describe(pc), orc is not None)
    if row.cfa_expression is not None:
        raise _Stop("unsupported-cfi", f"the CFA of {describe(pc)} is a DWARF expression")
    base = regs.get(row.cfa_register)
    if base is None:
        name = DWARF_REGISTERS.get(row.cfa_register, str(row.cfa_register))
        raise _Stop(
            "no-unwind-info", f"the CFA of {describe(pc)} needs {name}, which is unknown here"
        )
    cfa = (base + row.cfa_offset) & ((1 << 64) - 1)
    ra_rule = row.rule(row.return_register)
    if ra_rule.kind == "undefined":
        raise _Stop("outermost", f"the CFI marks {describe(pc)} as the outermost frame", cfa)
    caller: dict[int, int] = {}
    for register in range(17):
        rule = row.rule(register) if register != _RIP else ra_rule
        value = _apply(rule, register, regs, cfa, read_u64, describe(pc))
        if value is not None:
            caller[register] = value
    if row.rule(_RSP).kind == "same_value" and _RSP not in row.rules:
        caller[_RSP] = cfa  # the CFA is by definition the caller's stack pointer
    if row.signal_frame and ra_rule.kind == "offset":
        frame_at = cfa + ra_rule.value
        try:
            error = read_u64(frame_at - 8)
        except _Stop:
            error = None
        _cfa, iret_regs, interrupt = _from_iret(read_u64, caller, frame_at, cfa, error, None)
        return _Step(cfa, iret_regs, "interrupt", "cfi", interrupt)
    return _Step(cfa, caller, "cfi", "cfi")


def _apply(
    rule: Any,
    register: int,
    regs: dict[int, int],
    cfa: int,
    read_u64: Callable[[int], int],
    where: str,
) -> int | None:
    kind = rule.kind
    if kind == "same_value":
        return regs.get(register)
    if kind == "undefined":
        return None
    if kind == "offset":
        return read_u64((cfa + rule.value) & ((1 << 64) - 1))
    if kind == "val_offset":
        return int(cfa + rule.value) & ((1 << 64) - 1)
    if kind == "register":
        return regs.get(rule.value)
    if register in (_RIP, _RSP):
        raise _Stop(
            "unsupported-cfi",
            f"the CFI of {where} gives {DWARF_REGISTERS[register]} by a DWARF expression",
        )
    return None  # an expression for a register we can do without


def _from_iret(
    read_u64: Callable[[int], int],
    regs: dict[int, int],
    frame_at: int,
    cfa: int,
    error: int | None,
    vector: int | None,
) -> tuple[int, dict[int, int], InterruptFrame]:
    rip, cs, rflags, rsp, ss = (read_u64(frame_at + 8 * i) for i in range(5))
    interrupt = InterruptFrame(frame_at, rip, cs, rflags, rsp, ss, error, vector)
    caller = dict(regs)
    caller[_RIP] = rip
    caller[_RSP] = rsp
    return cfa, caller, interrupt


def _frame_pointer(
    read_u64: Callable[[int], int], regs: dict[int, int], where: str, has_orc: bool = False
) -> _Step:
    sp, rbp = regs[_RSP], regs.get(_RBP)
    if rbp is None or rbp & 7 or rbp < sp or rbp - sp > 1 << 20:
        shown = "unknown" if rbp is None else f"{rbp:#x}"
        data = "no ORC entry or CFI" if has_orc else "no CFI"
        raise _Stop(
            "no-unwind-info",
            f"lost at {where}: {data} covers it and RBP ({shown}) is not a frame pointer "
            f"above RSP {sp:#x}",
        )
    caller = {r: v for r, v in regs.items() if r in (3, 12, 13, 14, 15)}  # callee-saved
    caller[_RBP] = read_u64(rbp)
    caller[_RIP] = read_u64(rbp + 8)
    caller[_RSP] = rbp + 16
    return _Step(rbp + 16, caller, "frame-pointer", "frame-pointer")


#: struct pt_regs (arch/x86/include/asm/ptrace.h), quadword slots -> DWARF register numbers:
#: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss.
_PT_REGS = (15, 14, 13, 12, 6, 3, 11, 10, 9, 8, 0, 2, 1, 4, 5)
_PT_REGS_SIZE = 21 * 8
_IRET_FRAME_OFFSET = 16 * 8  # offsetof(struct pt_regs, ip)
_ORC_BASE = {ORC_REG_R10: 10, ORC_REG_R13: 13, ORC_REG_DI: 5, ORC_REG_DX: 1}


def _orc_step(
    read_u64: Callable[[int], int],
    regs: dict[int, int],
    pc: int,
    entry: OrcEntry,
    describe: Callable[[int], str],
) -> _Step:
    """One step of the kernel's ``unwind_next_frame()`` with ``entry`` (version-3 meaning).

    ``regs`` holds what is known of the frame's registers: all of them for
    frame 0 (the CPU's) and after a full ``pt_regs``, RIP/RSP/RBP after a call.
    """
    where = f"{describe(pc)} (ORC {entry})"
    if entry.type == ORC_TYPE_END_OF_STACK:
        raise _Stop("outermost", f"the ORC data marks {describe(pc)} as the stack's end")
    sp, bp = regs[_RSP], regs.get(_RBP)
    base_reg = entry.sp_reg
    if base_reg in (ORC_REG_SP, ORC_REG_SP_INDIRECT):
        base: int | None = sp
    elif base_reg in (ORC_REG_BP, ORC_REG_BP_INDIRECT):
        base = bp
    elif base_reg in _ORC_BASE:
        base = regs.get(_ORC_BASE[base_reg])
    else:
        raise _Stop("no-unwind-info", f"lost at {pc:#x}: {where} has an unknown SP base register")
    if base is None:
        raise _Stop(
            "no-unwind-info",
            f"lost at {pc:#x}: {where} needs {orc_reg_name(base_reg)}, which is unknown here "
            "(no pt_regs crossed)",
        )
    mask = (1 << 64) - 1
    if base_reg == ORC_REG_SP_INDIRECT:
        cfa = (read_u64(base) + entry.sp_offset) & mask  # [sp] + offset: a stack switch
    elif base_reg == ORC_REG_BP_INDIRECT:
        cfa = read_u64((base + entry.sp_offset) & mask)
    else:
        cfa = (base + entry.sp_offset) & mask
    switched = base_reg not in (ORC_REG_SP, ORC_REG_BP)
    interrupt = None
    if entry.type == ORC_TYPE_CALL:
        caller = {_RIP: read_u64(cfa - 8), _RSP: cfa}
        if bp is not None:
            caller[_RBP] = bp  # bp_reg UNDEFINED: RBP unchanged in this frame
        how = "orc"
    elif entry.type == ORC_TYPE_REGS:
        # a full pt_regs at the CFA: every register of the interrupted context
        caller = {dwarf: read_u64(cfa + 8 * slot) for slot, dwarf in enumerate(_PT_REGS)}
        rip, cs, rflags, rsp, ss = (read_u64(cfa + _IRET_FRAME_OFFSET + 8 * i) for i in range(5))
        caller[_RIP], caller[_RSP] = rip, rsp
        error = read_u64(cfa + 15 * 8)
        interrupt = InterruptFrame(cfa + _IRET_FRAME_OFFSET, rip, cs, rflags, rsp, ss, error, None)
        how, switched = "interrupt", True
    elif entry.type == ORC_TYPE_REGS_PARTIAL:
        # the IRET frame alone at the CFA; the other registers are still those known here
        # (the kernel's prev_regs: entry code interrupted before it saved them)
        rip, cs, rflags, rsp, ss = (read_u64(cfa + 8 * i) for i in range(5))
        caller = dict(regs)
        caller[_RIP], caller[_RSP] = rip, rsp
        interrupt = InterruptFrame(cfa, rip, cs, rflags, rsp, ss, None, None)
        how, switched = "interrupt", True
    else:
        raise _Stop("no-unwind-info", f"lost at {pc:#x}: {where} has an unknown type")
    if entry.bp_reg == ORC_REG_PREV_SP:
        caller[_RBP] = read_u64((cfa + entry.bp_offset) & mask)
    elif entry.bp_reg == ORC_REG_BP:
        if bp is None:
            caller.pop(_RBP, None)
        else:
            caller[_RBP] = read_u64((bp + entry.bp_offset) & mask)
    elif entry.bp_reg != ORC_REG_UNDEFINED:
        raise _Stop("no-unwind-info", f"lost at {pc:#x}: {where} has an unknown BP base register")
    return _Step(cfa, caller, how, "orc", interrupt, switched)
