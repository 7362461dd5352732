"""Why an exception happened: error codes decoded and the rule the access broke.

Pure: records in, records out. Names follow the Intel SDM, Vol. 3A: 6.13
(the error code of #TS, #NP, #SS, #GP: EXT, IDT, TI, selector index), 4.7
(the #PF error code: P, W/R, U/S, RSVD, I/D, PK, SS, HLAT, SGX) and 4.6
(access rights: supervisor writes honour RW only with CR0.WP; SMEP forbids a
supervisor fetch from a user page; SMAP a supervisor data access to a user
page unless RFLAGS.AC is set for an explicit access; NX with EFER.NXE;
protection keys with CR4.PKE for user pages). Vector names come from
:mod:`.descriptors` (one table of them).

:func:`explain_page_fault` takes the walk of CR2 (:func:`.paging.translate`)
as it is *now*: when that walk allows the access the error code describes, it
says so (a stale TLB entry, or a mapping changed after the fault).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.descriptors import (
    ERROR_CODE_VECTORS,
    DescriptorTable,
    Gate,
    SegmentDescriptor,
    check_loaded_selectors,
    vector_name,
)
from kinspect.inspector.x86.flags import BitField, format_flags
from kinspect.inspector.x86.paging import Translation, WalkStep, is_canonical

__all__ = [
    "PAGE_FAULT_ERROR_FIELDS",
    "SELECTOR_ERROR_FIELDS",
    "SELECTOR_ERROR_VECTORS",
    "ErrorCode",
    "PageFaultCause",
    "SelectorFaultCause",
    "StackOverflow",
    "decode_error_code",
    "decode_segment_load",
    "describe_vector",
    "explain_double_fault",
    "explain_page_fault",
    "explain_selector_fault",
    "validate_gate",
]

PAGE_FAULT_ERROR_FIELDS: tuple[BitField, ...] = (
    BitField("P", 0, description="the page was present (a protection violation)"),
    BitField("W", 1, description="a write (else a read)"),
    BitField("U", 2, description="a user-mode access (CPL 3)"),
    BitField("RSVD", 3, description="a reserved bit set in a paging-structure entry"),
    BitField("I", 4, description="an instruction fetch (I/D)"),
    BitField("PK", 5, description="a protection-key violation"),
    BitField("SS", 6, description="a shadow-stack access"),
    BitField("HLAT", 7, description="during HLAT paging"),
    BitField("SGX", 15, description="an SGX access-control violation"),
)
"""The #PF error code (SDM Vol. 3A, Figure 4-12)."""

SELECTOR_ERROR_FIELDS: tuple[BitField, ...] = (
    BitField("EXT", 0, description="raised while delivering an external event"),
    BitField("IDT", 1, description="the index names an IDT gate"),
    BitField("TI", 2, description="the index names an LDT entry (when IDT=0)"),
    BitField("INDEX", 3, 13, "the selector index"),
)
"""The error code of #TS, #NP, #SS, #GP (SDM Vol. 3A, Figure 6-7)."""

#: Vectors whose error code names a selector or a gate.
SELECTOR_ERROR_VECTORS: frozenset[int] = frozenset({10, 11, 12, 13})


def describe_vector(vector: int) -> str:
    """``#PF (vector 14)``, ``vector 32 (interrupt)``, ``reserved (vector 15)``."""
    name = vector_name(vector)
    if name:
        return f"{name} (vector {vector})"
    return f"vector {vector} (interrupt)"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """An exception's error code decoded for its vector.

    ``kind`` is ``page-fault``, ``selector`` (#TS/#NP/#SS/#GP), ``zero`` (#DF,
    #AC: always 0), ``other`` (#CP, #VC, #SX) or ``none`` (the vector pushes no
    error code; ``value`` is then what was found there, if anything).
    """

    vector: int
    value: int
    kind: str

    @property
    def flags(self) -> tuple[str, ...]:
        """The set single-bit fields (``P W``; ``EXT IDT TI``)."""
        table = self._fields()
        return tuple(f.name for f in table if f.width == 1 and self.value & f.mask)

    def _fields(self) -> tuple[BitField, ...]:
        if self.kind == "page-fault":
            return PAGE_FAULT_ERROR_FIELDS
        if self.kind == "selector":
            return SELECTOR_ERROR_FIELDS
        return ()

    def is_set(self, name: str) -> bool:
        return name in self.flags

    @property
    def table(self) -> str | None:
        """For a selector error code: ``IDT``, ``LDT`` or ``GDT``."""
        if self.kind != "selector":
            return None
        if self.value & 2:
            return "IDT"
        return "LDT" if self.value & 4 else "GDT"

    @property
    def index(self) -> int | None:
        """For a selector error code: the index (the gate's vector for ``IDT``)."""
        return (self.value >> 3) & 0x1FFF if self.kind == "selector" else None

    @property
    def selector(self) -> int | None:
        """For a GDT/LDT selector error code: the selector it names (RPL 0)."""
        if self.kind != "selector" or self.value & 2:
            return None
        return self.value & 0xFFFC

    @property
    def access(self) -> str | None:
        """For #PF: ``fetch``, ``write`` or ``read``."""
        if self.kind != "page-fault":
            return None
        return "fetch" if self.value & 0x10 else "write" if self.value & 2 else "read"

    def __str__(self) -> str:
        if self.kind == "page-fault":
            words = [
                "protection violation" if self.value & 1 else "page not present",
                {"fetch": "instruction fetch", "write": "write", "read": "read"}[self.access or ""],
                "user mode" if self.value & 4 else "supervisor mode",
            ]
            extra = [
                f.name
                for f in PAGE_FAULT_ERROR_FIELDS
                if f.name not in ("P", "W", "U", "I") and self.value & f.mask
            ]
            words.extend(f"{name}" for name in extra)
            unknown = format_flags(self.value & ~0x80FF, ())
            if unknown:
                words.append(f"unknown bits {unknown}")
            return (
                f"{self.value:#x} [{format_flags(self.value, PAGE_FAULT_ERROR_FIELDS, sep=' ')}]: "
                + ", ".join(words)
            )
        if self.kind == "selector":
            if self.value == 0:
                return "0x0: no selector (a null selector, a limit or a non-canonical address)"
            where = (
                f"IDT gate {self.index}"
                if self.table == "IDT"
                else f"{self.table} index {self.index} (selector {self.selector:#06x})"
            )
            ext = ", while delivering an external event (EXT)" if self.value & 1 else ""
            return f"{self.value:#x}: {where}{ext}"
        return f"{self.value:#x}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "value": self.value,
            "kind": self.kind,
            "flags": list(self.flags),
            "table": self.table,
            "index": self.index,
            "selector": self.selector,
            "access": self.access,
            "text": str(self),
        }


def decode_error_code(vector: int, value: int) -> ErrorCode:
    """Decode ``value`` as ``vector``'s error code (kept whole, unknown bits too)."""
    if vector == 14:
        kind = "page-fault"
    elif vector in SELECTOR_ERROR_VECTORS:
        kind = "selector"
    elif vector in (8, 17):
        kind = "zero"
    elif vector in ERROR_CODE_VECTORS:
        kind = "other"
    else:
        kind = "none"
    return ErrorCode(vector, value, kind)


@dataclass(frozen=True, slots=True)
class PageFaultCause:
    """The rule a #PF broke, found from the error code and the walk of CR2.

    ``rule`` is one of ``not-present``, ``reserved-bit``, ``write-read-only``,
    ``user-supervisor``, ``nx``, ``smep``, ``smap``, ``protection-key``,
    ``unreadable-table``, ``non-canonical`` or ``allowed-now`` (the walk allows
    the access: a stale TLB entry, or the mapping changed after the fault).
    ``step`` is the entry that decides it (its level, table and address), None
    when no single entry does.
    """

    rule: str
    step: WalkStep | None
    text: str

    @property
    def level(self) -> int | None:
        return None if self.step is None else self.step.level

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        step = self.step
        return {
            "rule": self.rule,
            "level": self.level,
            "level_name": None if step is None else step.level_name,
            "entry_address": None if step is None else step.entry_address,
            "entry": None if step is None else step.entry.raw,
            "text": self.text,
        }


def _entry_words(step: WalkStep) -> str:
    return (
        f"the {step.level_name} entry {step.index} at {step.entry_address:#x} "
        f"(level {step.level}, {step.entry.raw:#018x})"
    )


def _first(steps: tuple[WalkStep, ...], bad: Any) -> WalkStep | None:
    return next((s for s in steps if bad(s)), None)


def explain_page_fault(
    error: ErrorCode,
    cr2: int,
    walk: Translation,
    mode: PagingMode,
    *,
    rflags: int | None = None,
    pkru: int | None = None,
) -> PageFaultCause:
    """The rule the access ``error`` describes broke at ``cr2``, given the walk of ``cr2``.

    ``rflags`` (the interrupted context's) decides SMAP (RFLAGS.AC); ``pkru``
    names the key's rights when known.
    """
    code = error.value
    access = error.access or "read"
    user = bool(code & 4)
    steps = walk.steps
    if not walk.ok:
        last = steps[-1] if steps else None
        if last is None:
            rule = "non-canonical" if "canonical" in (walk.fault or "") else "unreadable-table"
            return PageFaultCause(rule, None, f"{cr2:#x}: {walk.fault}")
        if not last.entry.present:
            text = f"not present at level {last.level}: {_entry_words(last)} has P=0"
            if code & 1:
                text += (
                    "; the CPU found the page present (error code P=1): the mapping was "
                    "removed after the fault"
                )
            return PageFaultCause("not-present", last, text)
        if last.entry.reserved:
            return PageFaultCause(
                "reserved-bit",
                last,
                f"reserved bits {last.entry.reserved:#x} set in {_entry_words(last)} (RSVD)",
            )
        return PageFaultCause("unreadable-table", last, f"{cr2:#x}: {walk.fault}")
    if not code & 1:
        return PageFaultCause(
            "allowed-now",
            None,
            f"the CPU found {cr2:#x} not present (P=0), but it translates now to "
            f"{walk.pa:#x}: mapped after the fault, or the TLB held a stale entry",
        )
    perms = walk.permissions
    assert perms is not None
    leaf = steps[-1]
    if user and not perms.user:
        step = _first(steps, lambda s: not s.entry.us)
        assert step is not None
        return PageFaultCause(
            "user-supervisor",
            step,
            f"a user-mode {access} of a supervisor page: US=0 in {_entry_words(step)}",
        )
    if access == "write" and not perms.writable and (user or mode.wp):
        step = _first(steps, lambda s: not s.entry.rw)
        assert step is not None
        why = "" if user else " with CR0.WP=1 (supervisor writes honour RW)"
        return PageFaultCause(
            "write-read-only",
            step,
            f"a write to a read-only page{why}: RW=0 in {_entry_words(step)}",
        )
    if access == "fetch" and not perms.executable:
        step = _first(steps, lambda s: s.entry.nx)
        return PageFaultCause(
            "nx",
            step,
            "an instruction fetch from an NX page (EFER.NXE=1): NX=1 in "
            + (_entry_words(step) if step else "the walk"),
        )
    if access == "fetch" and not user and perms.user and mode.smep:
        return PageFaultCause(
            "smep",
            leaf,
            "SMEP: a supervisor instruction fetch from a user page "
            "(CR4.SMEP=1; US=1 at every level)",
        )
    if access != "fetch" and not user and perms.user and mode.smap:
        ac = None if rflags is None else bool(rflags >> 18 & 1)
        if not ac:
            why = "RFLAGS.AC=0" if ac is False else "RFLAGS.AC unknown"
            return PageFaultCause(
                "smap",
                leaf,
                f"SMAP: a supervisor {access} of a user page (CR4.SMAP=1, {why}; an implicit "
                "supervisor access is checked whatever AC says)",
            )
    if code & 0x20 or (mode.pke and perms.user and user):
        key = leaf.entry.protection_key
        rights = ""
        if pkru is not None:
            ad = pkru >> (2 * key) & 1
            wd = pkru >> (2 * key + 1) & 1
            rights = f"; PKRU gives key {key} AD={ad} WD={wd}"
        if code & 0x20:
            return PageFaultCause(
                "protection-key",
                leaf,
                f"a protection-key violation (CR4.PKE): the page has key {key}{rights}",
            )
    if code & 8:
        return PageFaultCause(
            "reserved-bit",
            None,
            "the CPU found a reserved bit set (RSVD=1), but no entry of the walk has one now: "
            "the tables changed after the fault",
        )
    return PageFaultCause(
        "allowed-now",
        None,
        f"the walk allows this {'user' if user else 'supervisor'} {access} now ({perms}): "
        "a stale TLB entry, or the mapping changed after the fault",
    )


#: ``mov Sreg, r/m`` (8E /r): the register by ModRM.reg.
_SREG = ("ES", "CS", "SS", "DS", "FS", "GS")


def decode_segment_load(code: bytes) -> str | None:
    """The register an instruction loads a selector into, or None when it is not one we know.

    Knows ``mov Sreg, r/m`` (8E), ``lss``/``lfs``/``lgs`` (0F B2/B4/B5), ``lldt``
    and ``ltr`` (0F 00 /2, /3), ``iret``/``lret``/``retf`` (CS) and far ``jmp``/``call``
    through memory (FF /5, /3), after legacy and REX prefixes.
    """
    i = 0
    while i < len(code) and (
        code[i] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65)
    ):
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    modrm = code[i + 1] if i + 1 < len(code) else None
    if op == 0x8E and modrm is not None:
        reg = (modrm >> 3) & 7
        return _SREG[reg] if reg < 6 else None
    if op in (0xCF, 0xCB, 0xCA):
        return "CS"
    if op == 0xFF and modrm is not None and (modrm >> 3) & 7 in (3, 5) and modrm >> 6 != 3:
        return "CS"
    if op == 0x0F and modrm is not None:
        second = modrm
        third = code[i + 2] if i + 2 < len(code) else None
        if second in (0xB2, 0xB4, 0xB5):
            return {0xB2: "SS", 0xB4: "FS", 0xB5: "GS"}[second]
        if second == 0x00 and third is not None:
            return {2: "LDTR", 3: "TR"}.get((third >> 3) & 7)
    return None


@dataclass(frozen=True, slots=True)
class SelectorFaultCause:
    """What is wrong with the descriptor or gate a #TS/#NP/#SS/#GP error code names."""

    error: ErrorCode
    register: str | None
    descriptor: SegmentDescriptor | None
    gate: Gate | None
    text: str

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "register": self.register,
            "descriptor": None if self.descriptor is None else self.descriptor.to_dict(),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "text": self.text,
        }


def explain_selector_fault(
    error: ErrorCode,
    *,
    gdt: DescriptorTable | None = None,
    ldt: DescriptorTable | None = None,
    gates: Mapping[int, Gate] | None = None,
    register: str | None = None,
    long_mode: bool = True,
) -> SelectorFaultCause:
    """The descriptor the error code names and why it does not fit.

    ``register`` is the register the faulting instruction loads (from
    :func:`decode_segment_load`), when known: the descriptor is then checked as
    that register needs (:func:`.descriptors.check_loaded_selectors`).
    """
    name = vector_name(error.vector)
    if error.kind != "selector":
        return SelectorFaultCause(error, register, None, None, f"{name} has no selector error code")
    if error.value == 0:
        return SelectorFaultCause(
            error,
            register,
            None,
            None,
            f"{name} with error code 0: no selector is to blame (a null selector where one is "
            "needed, a limit, or a non-canonical address)",
        )
    if error.table == "IDT":
        gate = None if gates is None else gates.get(error.index or 0)
        if gate is None:
            text = f"IDT gate {error.index} is past the IDT limit or could not be read"
        elif not gate.P:
            text = f"IDT gate {error.index} is not present: {gate}"
        elif gate.kind not in ("interrupt", "trap"):
            text = f"IDT gate {error.index} is not an interrupt or trap gate: {gate}"
        else:
            text = (
                f"IDT gate {error.index}: {gate} (a software INT needs DPL >= CPL; "
                "or its code segment is at fault)"
            )
        return SelectorFaultCause(error, register, None, gate, text)
    table = ldt if error.table == "LDT" else gdt
    selector = error.selector or 0
    if table is None:
        return SelectorFaultCause(
            error, register, None, None, f"no {error.table} to look selector {selector:#06x} up in"
        )
    slot = table.slot(selector)
    if slot is None:
        return SelectorFaultCause(
            error,
            register,
            None,
            None,
            f"selector {selector:#06x} is past the {table.name} limit {table.limit:#x}",
        )
    descriptor = slot.descriptor
    if descriptor is None:
        return SelectorFaultCause(
            error,
            register,
            None,
            None,
            f"selector {selector:#06x} points at the upper half of the 16-byte descriptor at "
            f"{slot.continues:#06x}",
        )
    where = (
        f"{table.name}[{selector >> 3}] at {slot.address:#x} (selector {selector:#06x}): "
        f"{descriptor}"
    )
    if register is not None:
        problems = check_loaded_selectors(table, {register: selector}, long_mode=long_mode)
        if problems:
            return SelectorFaultCause(
                error,
                register,
                descriptor,
                None,
                f"loading {register}: {problems[0].reason}; {where}",
            )
    if not descriptor.P:
        return SelectorFaultCause(error, register, descriptor, None, f"not present (P=0): {where}")
    return SelectorFaultCause(
        error,
        register,
        descriptor,
        None,
        f"{where}"
        + ("" if register is None else f" (fits {register} now: changed after the fault?)"),
    )


@dataclass(frozen=True, slots=True)
class StackOverflow:
    """The stack a #DF's interrupted RSP was on, and the unmapped page below it that it hit."""

    stack: str | None
    top: int | None
    rsp: int
    guard_start: int | None
    text: str

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "top": self.top,
            "rsp": self.rsp,
            "guard_start": self.guard_start,
            "text": self.text,
        }


def explain_double_fault(
    rsp: int,
    stacks: Mapping[str, int],
    *,
    rsp_mapped: bool,
    below_mapped: bool,
    cr2: int | None = None,
    max_stack: int = 1 << 20,
) -> StackOverflow:
    """Which stack the #DF interrupted (``stacks``: name to top, from the TSS) and whether it
    overflowed into an unmapped page.

    ``rsp`` is the interrupted RSP (the #DF frame's); ``rsp_mapped`` and
    ``below_mapped`` say whether its page and the page below it are mapped now;
    ``cr2`` is the last #PF's address (a push into the guard page).
    """
    owner = None
    top = None
    for name, candidate in stacks.items():
        if (
            candidate
            and candidate - max_stack <= rsp <= candidate
            and (top is None or candidate < top)
        ):
            owner, top = name, candidate
    page = rsp & ~0xFFF
    guard = None
    on = f"on the {owner} stack (top {top:#x})" if owner else "on no stack the TSS names"
    if not rsp_mapped:
        guard = page
    elif not below_mapped and rsp - page < 256:
        guard = page - 0x1000
    if cr2 is not None and guard is not None and not guard <= cr2 < guard + 0x1000:
        if (cr2 & ~0xFFF) in (page, page - 0x1000):
            guard = cr2 & ~0xFFF
    if guard is not None:
        used = f", {top - rsp:#x} bytes used" if top is not None else ""
        text = (
            f"stack overflow: RSP={rsp:#x} {on}{used} ran into the unmapped page "
            f"{guard:#x}-{guard + 0x1000:#x} (its guard page)"
        )
        if cr2 is not None:
            text += f"; the last #PF was at CR2={cr2:#x}"
    else:
        text = f"RSP={rsp:#x} {on}; the pages at and below it are mapped: no stack overflow"
    return StackOverflow(owner, top, rsp, guard, text)


def validate_gate(gate: Gate | None, gdt: DescriptorTable | None, *, levels: int = 4) -> str | None:
    """Why the CPU cannot deliver through ``gate`` (an IDT gate in IA-32e mode), or None.

    Checks what delivery checks before it touches the stack (SDM Vol. 3A,
    6.12.1 and 6.14): the gate is present (#NP), an interrupt or trap gate
    (#GP), its selector names a present 64-bit code segment in the GDT (#GP,
    #NP), and its handler offset is canonical (#GP). ``gate`` None: past the
    IDT limit (#GP).
    """
    if gate is None:
        return "the gate is past the IDT limit (#GP)"
    where = f"IDT gate {gate.vector}"
    text = " ".join(str(gate).split())
    if not gate.P:
        return f"{where} is not present (#NP): {text}"
    if gate.kind not in ("interrupt", "trap"):
        return f"{where} is not an interrupt or trap gate (#GP): {text}"
    selector = gate.selector
    if selector & 0xFFFC == 0:
        return f"{where} has a null code selector (#GP)"
    if selector & 4:
        return f"{where}'s selector {selector:#06x} names the LDT"
    if gdt is not None:
        problems = check_loaded_selectors(gdt, {"CS": selector & 0xFFFC})
        if problems:
            return f"{where}'s code segment {selector:#06x}: {problems[0].reason}"
        slot = gdt.slot(selector)
        descriptor = None if slot is None else slot.descriptor
        if descriptor is not None and not descriptor.L:
            return f"{where}'s code segment {selector:#06x} is not a 64-bit one (L=0) (#GP)"
    if not is_canonical(gate.offset, levels):
        return f"{where}'s handler {gate.offset:#x} is not canonical (#GP)"
    return None
