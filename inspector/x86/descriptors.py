"""Decoders for the descriptor tables: GDT/LDT entries, IDT gates, the 64-bit TSS.

Field names follow the Intel SDM, Vol. 3A: 3.4.5 (segment descriptors, type
in Table 3-1 for code and data, Table 3-2 for system descriptors), 7.2.3 (the
64-bit TSS descriptor, 16 bytes), 5.8.3.1 and 6.14.1 (64-bit call gates and
IDT gates, 16 bytes) and 7.7 (the 64-bit TSS). Every decoder is pure: bytes
in, a frozen record out. Values that fields split across a descriptor (base
and limit, gate offsets) are rebuilt with ``|`` and shifts. Reserved bits are
kept in ``reserved`` and never raise.

:func:`check_loaded_selectors` says when a loaded selector (CS, SS, DS, ES,
FS, GS, TR, LDTR) points at a slot that is missing, not present, or not the
kind of descriptor the register needs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.errors import DecodeError
from kinspect.inspector.x86.control import SEGMENT_REGISTERS

__all__ = [
    "EXCEPTION_VECTORS",
    "ERROR_CODE_VECTORS",
    "DescriptorTable",
    "SEGMENT_REGISTERS",
    "GdtSlot",
    "Gate",
    "SegmentDescriptor",
    "SelectorProblem",
    "Tss64",
    "check_loaded_selectors",
    "decode_gate",
    "decode_gdt",
    "decode_idt",
    "decode_segment_descriptor",
    "decode_selector",
    "decode_tss64",
    "vector_name",
]

#: Architectural exception vectors by number (SDM Vol. 3A, Table 6-1; #VC, #HV
#: and #SX from the AMD APM Vol. 2, 8.2).
EXCEPTION_VECTORS: dict[int, str] = {
    0: "#DE",
    1: "#DB",
    2: "NMI",
    3: "#BP",
    4: "#OF",
    5: "#BR",
    6: "#UD",
    7: "#NM",
    8: "#DF",
    9: "CSO",
    10: "#TS",
    11: "#NP",
    12: "#SS",
    13: "#GP",
    14: "#PF",
    16: "#MF",
    17: "#AC",
    18: "#MC",
    19: "#XM",
    20: "#VE",
    21: "#CP",
    28: "#HV",
    29: "#VC",
    30: "#SX",
}

#: Vectors for which the CPU pushes an error code below the IRETQ frame.
ERROR_CODE_VECTORS: frozenset[int] = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

# System descriptor types (S=0), SDM Table 3-2.
_SYSTEM_TYPES_LONG = {
    0x2: "LDT",
    0x9: "TSS64-avail",
    0xB: "TSS64-busy",
    0xC: "call-gate64",
    0xE: "interrupt-gate64",
    0xF: "trap-gate64",
}
_SYSTEM_TYPES_LEGACY = {
    0x1: "TSS16-avail",
    0x2: "LDT",
    0x3: "TSS16-busy",
    0x4: "call-gate16",
    0x5: "task-gate",
    0x6: "interrupt-gate16",
    0x7: "trap-gate16",
    0x9: "TSS32-avail",
    0xB: "TSS32-busy",
    0xC: "call-gate32",
    0xE: "interrupt-gate32",
    0xF: "trap-gate32",
}
#: In IA-32e mode these system descriptors take 16 bytes (two GDT slots).
_WIDE_TYPES_LONG = frozenset({0x2, 0x9, 0xB, 0xC})

_GATE_TYPES_LONG = {0xE: "interrupt", 0xF: "trap"}
_GATE_TYPES_LEGACY = {
    0x5: "task",
    0x6: "interrupt16",
    0x7: "trap16",
    0xE: "interrupt",
    0xF: "trap",
}


def vector_name(vector: int) -> str:
    """``#PF`` for architectural exceptions, ``reserved`` below 32, else ``""``."""
    if vector in EXCEPTION_VECTORS:
        return EXCEPTION_VECTORS[vector]
    return "reserved" if vector < 32 else ""


def decode_selector(selector: int) -> tuple[int, int, int]:
    """(index, TI, RPL) of a segment selector (SDM 3.4.2)."""
    return selector >> 3, (selector >> 2) & 1, selector & 3


@dataclass(frozen=True, slots=True)
class SegmentDescriptor:
    """One GDT or LDT descriptor: code, data or system (8 or 16 bytes).

    ``limit`` is the raw 20-bit field; ``effective_limit`` is scaled by G
    (``limit << 12 | 0xfff``). ``kind`` is ``null``, ``code``, ``data`` or
    the system type's name (``LDT``, ``TSS64-avail``, ``TSS64-busy``,
    ``call-gate64``, ...; ``reserved`` for an undefined system type).
    ``raw_high`` is the upper quadword of a 16-byte descriptor, None for
    8-byte ones. For call gates, ``base`` holds the target offset and
    ``gate_selector`` the target code segment. ``reserved`` holds the bits
    the SDM reserves that are set (upper type field of a 16-byte descriptor,
    and bits 63:32 of it), kept as data.
    """

    raw: int
    raw_high: int | None
    kind: str
    type: int
    S: bool
    DPL: int
    P: bool
    AVL: bool
    L: bool
    DB: bool
    G: bool
    base: int
    limit: int
    gate_selector: int | None
    reserved: int

    @property
    def size(self) -> int:
        """8, or 16 for a system descriptor in IA-32e mode."""
        return 8 if self.raw_high is None else 16

    @property
    def effective_limit(self) -> int:
        """The limit in bytes minus one, scaled by G."""
        return (self.limit << 12) | 0xFFF if self.G else self.limit

    @property
    def is_code(self) -> bool:
        return self.S and bool(self.type & 0x8)

    @property
    def is_data(self) -> bool:
        return self.S and not self.type & 0x8

    @property
    def accessed(self) -> bool:
        return self.S and bool(self.type & 0x1)

    @property
    def type_flags(self) -> tuple[str, ...]:
        """Set type bits by letter, highest first.

        Code: ``C`` (conforming), ``R`` (readable), ``A``; data: ``E``
        (expand-down), ``W`` (writable), ``A`` (accessed).
        """
        if not self.S:
            return ()
        names = ("A", "R", "C") if self.type & 0x8 else ("A", "W", "E")
        return tuple(name for bit, name in reversed(list(enumerate(names))) if self.type >> bit & 1)

    @property
    def attributes(self) -> int:
        """Bits 55:40 of the descriptor (flags, limit 19:16, access) in place, as QEMU's
        segment cache prints them (``00af9b00``)."""
        return (self.raw >> 32) & 0x00FFFF00

    @property
    def is_tss(self) -> bool:
        return self.kind.startswith("TSS")

    def __str__(self) -> str:
        if self.kind == "null":
            return "null"
        parts = [self.kind]
        if self.S:
            mode = "64-bit" if self.is_code and self.L else ("32-bit" if self.DB else "16-bit")
            parts.append(mode)
            flags = "".join(self.type_flags)
            if flags:
                parts.append(flags)
        if self.gate_selector is not None:
            parts.append(f"sel={self.gate_selector:#06x} offset={self.base:#x}")
        else:
            parts.append(f"base={self.base:#x} limit={self.effective_limit:#x}")
        parts.append(f"DPL={self.DPL}")
        parts.append("P" if self.P else "not-present")
        parts.extend(
            name
            for name, on in (("L", self.L), ("DB", self.DB), ("G", self.G), ("AVL", self.AVL))
            if on
        )
        if self.reserved:
            parts.append(f"reserved={self.reserved:#x}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"SegmentDescriptor(raw={self.raw:#018x}, raw_high="
            f"{'None' if self.raw_high is None else f'{self.raw_high:#018x}'}, kind={self.kind!r}, "
            f"type={self.type:#x}, base={self.base:#x}, limit={self.limit:#x}, DPL={self.DPL}, "
            f"P={self.P}, L={self.L}, DB={self.DB}, G={self.G})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "raw_high": self.raw_high,
            "kind": self.kind,
            "type": self.type,
            "type_flags": list(self.type_flags),
            "S": self.S,
            "DPL": self.DPL,
            "P": self.P,
            "AVL": self.AVL,
            "L": self.L,
            "DB": self.DB,
            "G": self.G,
            "base": self.base,
            "limit": self.limit,
            "effective_limit": self.effective_limit,
            "gate_selector": self.gate_selector,
            "reserved": self.reserved,
        }


def decode_segment_descriptor(data: bytes, *, long_mode: bool = True) -> SegmentDescriptor:
    """Decode one descriptor from ``data`` (8 bytes; 16 for a long-mode system descriptor).

    A long-mode LDT, TSS or call-gate descriptor needs 16 bytes; given only
    8, its upper half is missing and :class:`DecodeError` says so.
    """
    if len(data) < 8:
        raise DecodeError(0, f"a descriptor is 8 bytes, got {len(data)}")
    raw = int.from_bytes(data[:8], "little")
    type_ = (raw >> 40) & 0xF
    s = bool(raw >> 44 & 1)
    dpl = (raw >> 45) & 3
    p = bool(raw >> 47 & 1)
    avl = bool(raw >> 52 & 1)
    l_bit = bool(raw >> 53 & 1)
    db = bool(raw >> 54 & 1)
    g = bool(raw >> 55 & 1)
    limit = (raw & 0xFFFF) | (((raw >> 48) & 0xF) << 16)
    base = ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24)
    raw_high = None
    gate_selector = None
    reserved = 0
    if raw == 0:
        kind = "null"
    elif s:
        kind = "code" if type_ & 0x8 else "data"
    else:
        names = _SYSTEM_TYPES_LONG if long_mode else _SYSTEM_TYPES_LEGACY
        kind = names.get(type_, "reserved")
        if long_mode and type_ in _WIDE_TYPES_LONG:
            if len(data) < 16:
                raise DecodeError(8, f"a long-mode {kind} descriptor is 16 bytes, got {len(data)}")
            raw_high = int.from_bytes(data[8:16], "little")
            reserved = raw_high & ~0xFFFFFFFF
        if kind.startswith("call-gate"):
            gate_selector = (raw >> 16) & 0xFFFF
            base = (raw & 0xFFFF) | (((raw >> 48) & 0xFFFF) << 16)
            limit = 0
            avl = l_bit = db = g = False
            reserved |= raw & (0xFF << 32)  # parameter count (legacy) / reserved
        if raw_high is not None:
            base |= (raw_high & 0xFFFFFFFF) << 32
    return SegmentDescriptor(
        raw=raw,
        raw_high=raw_high,
        kind=kind,
        type=type_,
        S=s,
        DPL=dpl,
        P=p,
        AVL=avl,
        L=l_bit,
        DB=db,
        G=g,
        base=base,
        limit=limit,
        gate_selector=gate_selector,
        reserved=reserved,
    )


@dataclass(frozen=True, slots=True)
class GdtSlot:
    """One 8-byte slot of a GDT or LDT.

    ``descriptor`` is None for the upper half of a 16-byte system descriptor
    that starts in the slot before (``continues`` names that selector).
    ``loaded_by`` lists the registers whose selector points here.
    """

    selector: int
    address: int
    descriptor: SegmentDescriptor | None
    continues: int | None
    loaded_by: tuple[str, ...]

    def __str__(self) -> str:
        loaded = f"  <- {' '.join(self.loaded_by)}" if self.loaded_by else ""
        if self.descriptor is None:
            return f"{self.selector:#06x}  (upper half of {self.continues:#06x}){loaded}"
        return f"{self.selector:#06x}  {self.descriptor}{loaded}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "address": self.address,
            "descriptor": self.descriptor.to_dict() if self.descriptor else None,
            "continues": self.continues,
            "loaded_by": list(self.loaded_by),
        }


@dataclass(frozen=True, slots=True)
class SelectorProblem:
    """A loaded selector that points at something it must not."""

    register: str
    selector: int
    reason: str

    def __str__(self) -> str:
        return f"{self.register}={self.selector:#06x}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"register": self.register, "selector": self.selector, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DescriptorTable:
    """A decoded GDT or LDT: its slots and the problems of the selectors loaded into it."""

    name: str
    base: int
    limit: int
    slots: tuple[GdtSlot, ...]
    problems: tuple[SelectorProblem, ...]

    def slot(self, selector: int) -> GdtSlot | None:
        """The slot a selector indexes (RPL and TI ignored), or None past the limit."""
        index = selector >> 3
        return self.slots[index] if index < len(self.slots) else None

    def __str__(self) -> str:
        lines = [f"{self.name} base={self.base:#x} limit={self.limit:#x} ({len(self.slots)} slots)"]
        lines.extend(str(slot) for slot in self.slots)
        lines.extend(f"problem: {p}" for p in self.problems)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "limit": self.limit,
            "slots": [s.to_dict() for s in self.slots],
            "problems": [p.to_dict() for p in self.problems],
        }


def decode_gdt(
    data: bytes,
    base: int,
    *,
    long_mode: bool = True,
    loaded: Mapping[str, int] | None = None,
    name: str = "GDT",
) -> DescriptorTable:
    """Decode every slot of a GDT (or LDT) read from ``base``.

    ``data`` is the table's bytes (limit + 1 of them). ``loaded`` maps
    register names (``CS``, ``SS``, ..., ``TR``, ``LDTR``) to the selectors
    they hold, to mark the slots they use and to check them. A 16-byte system
    descriptor takes two slots; the second is marked as its upper half.
    """
    loaded = dict(loaded or {})
    table_indicator = 1 if name == "LDT" else 0
    users: dict[int, list[str]] = {}
    for register, selector in loaded.items():
        index, ti, _rpl = decode_selector(selector)
        if register in ("TR", "LDTR"):
            if table_indicator:
                continue
        elif ti != table_indicator:
            continue
        if index or table_indicator:  # a null selector uses no slot
            users.setdefault(index, []).append(register)
    slots: list[GdtSlot] = []
    index = 0
    count = len(data) // 8
    while index < count:
        offset = index * 8
        try:
            descriptor = decode_segment_descriptor(data[offset : offset + 16], long_mode=long_mode)
        except DecodeError:
            # A 16-byte kind in the table's last slot: decode the half that is there.
            descriptor = decode_segment_descriptor(
                data[offset : offset + 8] + bytes(8), long_mode=long_mode
            )
        # The selector that reaches the slot: TI set for the LDT (SDM 3.4.2).
        selector = index * 8 | table_indicator << 2
        slots.append(
            GdtSlot(selector, base + offset, descriptor, None, tuple(users.get(index, ())))
        )
        if descriptor.size == 16 and index + 1 < count:
            slots.append(
                GdtSlot(
                    selector + 8,
                    base + offset + 8,
                    None,
                    selector,
                    tuple(users.get(index + 1, ())),
                )
            )
            index += 1
        index += 1
    table = DescriptorTable(name, base, len(data) - 1, tuple(slots), ())
    problems = check_loaded_selectors(table, loaded, long_mode=long_mode)
    return DescriptorTable(name, base, len(data) - 1, tuple(slots), tuple(problems))


def check_loaded_selectors(
    table: DescriptorTable, loaded: Mapping[str, int], *, long_mode: bool = True
) -> list[SelectorProblem]:
    """The loaded selectors of ``table``'s kind that point where they must not.

    CS must be a present code segment (not both L and D/B in long mode); SS a
    present writable data segment (null allowed in 64-bit mode); DS, ES, FS,
    GS null or a present data or readable code segment; TR a TSS; LDTR null
    or an LDT. Selectors with TI=1 are checked against an LDT only.
    """
    problems: list[SelectorProblem] = []
    is_ldt = table.name == "LDT"
    for register, selector in loaded.items():
        index, ti, _rpl = decode_selector(selector)
        if register in ("TR", "LDTR"):
            if is_ldt:
                continue
            if ti:
                problems.append(
                    SelectorProblem(register, selector, "TI=1: must select from the GDT")
                )
                continue
        elif bool(ti) != is_ldt:
            continue
        if index == 0 and not is_ldt:
            if register == "CS":
                problems.append(SelectorProblem(register, selector, "null selector in CS"))
            elif register == "TR":
                problems.append(SelectorProblem(register, selector, "null selector: no TSS loaded"))
            elif register == "SS" and not long_mode:
                problems.append(SelectorProblem(register, selector, "null selector in SS"))
            continue
        slot = table.slot(selector)
        if slot is None:
            problems.append(
                SelectorProblem(register, selector, f"past the {table.name} limit {table.limit:#x}")
            )
            continue
        d = slot.descriptor
        if d is None:
            problems.append(
                SelectorProblem(
                    register,
                    selector,
                    f"points at the upper half of the 16-byte descriptor at {slot.continues:#06x}",
                )
            )
            continue
        reason = _selector_mismatch(register, d, long_mode)
        if reason is None and not d.P:
            reason = f"the {d.kind} descriptor is not present (P=0)"
        if reason:
            problems.append(SelectorProblem(register, selector, reason))
    return problems


def _selector_mismatch(register: str, d: SegmentDescriptor, long_mode: bool) -> str | None:
    if register == "CS":
        if not d.is_code:
            return f"CS must select a code segment, this is {d.kind}"
        if long_mode and d.L and d.DB:
            return "L and D/B are both set (reserved in IA-32e mode)"
    elif register == "SS":
        if not (d.is_data and d.type & 0x2):
            return f"SS must select a writable data segment, this is {d.kind}"
    elif register in ("DS", "ES", "FS", "GS"):
        if not (d.is_data or (d.is_code and d.type & 0x2)):
            return f"{register} must select a data or readable code segment, this is {d.kind}"
    elif register == "TR":
        if not d.is_tss:
            return f"TR must select a TSS, this is {d.kind}"
    elif register == "LDTR":
        if d.kind != "LDT":
            return f"LDTR must select an LDT, this is {d.kind}"
    return None


@dataclass(frozen=True, slots=True)
class Gate:
    """One IDT gate (16 bytes in IA-32e mode, SDM Figure 6-8).

    ``offset`` is the handler address rebuilt from its three parts: bits
    15:0 (bytes 0-1), 31:16 (bytes 6-7) and 63:32 (bytes 8-11). ``kind`` is
    ``interrupt``, ``trap``, ``task`` (legacy) or ``reserved``. ``reserved``
    keeps the set bits the SDM reserves (bits 7:3 of byte 4, bytes 12-15).
    """

    vector: int
    raw_low: int
    raw_high: int
    kind: str
    type: int
    selector: int
    DPL: int
    P: bool
    IST: int
    offset: int
    reserved: int

    @property
    def name(self) -> str:
        """The architectural name of the vector (``#PF``), or ``""``."""
        return vector_name(self.vector)

    def __str__(self) -> str:
        if not self.P and self.raw_low == 0 and self.raw_high == 0:
            return f"{self.vector:3d} {self.name:<8} not present"
        parts = [
            f"{self.vector:3d} {self.name:<8} {self.kind:<9}",
            f"{self.selector:#06x}:{self.offset:#018x}",
            f"DPL={self.DPL}",
            f"IST={self.IST}" if self.IST else "",
            "" if self.P else "not-present",
            f"reserved={self.reserved:#x}" if self.reserved else "",
        ]
        return " ".join(p for p in parts if p)

    def __repr__(self) -> str:
        return (
            f"Gate(vector={self.vector}, kind={self.kind!r}, selector={self.selector:#x}, "
            f"offset={self.offset:#x}, DPL={self.DPL}, P={self.P}, IST={self.IST}, "
            f"reserved={self.reserved:#x})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "name": self.name,
            "raw_low": self.raw_low,
            "raw_high": self.raw_high,
            "kind": self.kind,
            "type": self.type,
            "selector": self.selector,
            "DPL": self.DPL,
            "P": self.P,
            "IST": self.IST,
            "offset": self.offset,
            "reserved": self.reserved,
        }


def decode_gate(data: bytes, vector: int = 0, *, long_mode: bool = True) -> Gate:
    """Decode one IDT gate (16 bytes in IA-32e mode, 8 in legacy mode)."""
    size = 16 if long_mode else 8
    if len(data) < size:
        raise DecodeError(0, f"an IDT gate is {size} bytes, got {len(data)}")
    raw_low = int.from_bytes(data[:8], "little")
    raw_high = int.from_bytes(data[8:16], "little") if long_mode else 0
    type_ = (raw_low >> 40) & 0xF
    s = raw_low >> 44 & 1
    names = _GATE_TYPES_LONG if long_mode else _GATE_TYPES_LEGACY
    kind = "reserved" if s else names.get(type_, "reserved")
    offset = (raw_low & 0xFFFF) | (((raw_low >> 48) & 0xFFFF) << 16)
    if long_mode:
        offset |= (raw_high & 0xFFFFFFFF) << 32
        ist = (raw_low >> 32) & 0x7
        reserved = (raw_low & (0x1F << 35)) | (raw_high & ~0xFFFFFFFF) | (s << 44)
    else:
        ist = 0
        reserved = raw_low & (0xFF << 32) | (s << 44)
    return Gate(
        vector=vector,
        raw_low=raw_low,
        raw_high=raw_high,
        kind=kind,
        type=type_,
        selector=(raw_low >> 16) & 0xFFFF,
        DPL=(raw_low >> 45) & 3,
        P=bool(raw_low >> 47 & 1),
        IST=ist,
        offset=offset,
        reserved=reserved,
    )


def decode_idt(data: bytes, *, long_mode: bool = True) -> list[Gate]:
    """Every gate in ``data`` (the IDT's limit + 1 bytes), vector 0 first."""
    size = 16 if long_mode else 8
    return [
        decode_gate(data[v * size : (v + 1) * size], v, long_mode=long_mode)
        for v in range(len(data) // size)
    ]


_TSS64 = struct.Struct("<I3QQ7QQHH")


@dataclass(frozen=True, slots=True)
class Tss64:
    """The 64-bit TSS (SDM Figure 7-11): stack pointers and the I/O map base."""

    RSP: tuple[int, int, int]
    IST: tuple[int, int, int, int, int, int, int]
    iomap_base: int
    reserved: int

    def __str__(self) -> str:
        lines = [f"RSP{i}={v:#018x}" for i, v in enumerate(self.RSP)]
        lines.extend(f"IST{i + 1}={v:#018x}" for i, v in enumerate(self.IST))
        lines.append(f"I/O map base={self.iomap_base:#x}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "RSP": list(self.RSP),
            "IST": list(self.IST),
            "iomap_base": self.iomap_base,
            "reserved": self.reserved,
        }


def decode_tss64(data: bytes) -> Tss64:
    """Decode the first 104 bytes of a 64-bit TSS.

    ``reserved`` is non-zero when any reserved field holds a value (OR of
    them, folded; the fields are ignored by the CPU, so this is a hint).
    """
    if len(data) < _TSS64.size:
        raise DecodeError(0, f"a 64-bit TSS is {_TSS64.size} bytes, got {len(data)}")
    r0, rsp0, rsp1, rsp2, r1, *rest = _TSS64.unpack_from(data)
    ist = tuple(rest[:7])
    r2, r3, iomap = rest[7:]
    return Tss64((rsp0, rsp1, rsp2), ist, iomap, r0 | r1 | r2 | r3)
