"""Decoders for the x86_64 control registers, EFER and RFLAGS.

Every architectural bit is named as in the Intel SDM, Vol. 3A, 2.5 (CR0,
CR3, CR4), 2.2.1 (IA32_EFER) and Vol. 1, 3.4.3 (EFLAGS), with AMD-only EFER
bits from the AMD APM, Vol. 2, 3.1.7. Bits that no table names are kept in
``DecodedRegister.unknown``: a newer CPU or a corrupted value is a fact to
show, not an error.

:func:`decode_paging_mode` turns CR0/CR4/EFER into the few facts the page
walker needs (levels, NXE, WP, PKE, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kinspect.inspector.x86.flags import BitField, fields_mask, format_flags

__all__ = [
    "CR0_FIELDS",
    "GENERAL_REGISTERS",
    "CR3_FIELDS",
    "CR3_PCID_FIELDS",
    "CR4_FIELDS",
    "EFER_FIELDS",
    "RFLAGS_FIELDS",
    "SEGMENT_REGISTERS",
    "DecodedRegister",
    "FieldValue",
    "PagingMode",
    "decode_cr0",
    "decode_cr3",
    "decode_cr4",
    "decode_efer",
    "decode_paging_mode",
    "decode_register",
    "decode_rflags",
]

#: The sixteen general-purpose registers, in the order gdb and the SDM list them.
GENERAL_REGISTERS = (
    *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"),
    *("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
)
#: The segment registers by their SDM names (gdb reports them lower-case). Here, beside the
#: general registers, so that reading registers does not import the descriptor decoders.
SEGMENT_REGISTERS = ("CS", "SS", "DS", "ES", "FS", "GS")

_U64 = (1 << 64) - 1

CR0_FIELDS: tuple[BitField, ...] = (
    BitField("PE", 0, description="Protection Enable"),
    BitField("MP", 1, description="Monitor Coprocessor"),
    BitField("EM", 2, description="Emulation (no x87 FPU)"),
    BitField("TS", 3, description="Task Switched"),
    BitField("ET", 4, description="Extension Type (always 1)"),
    BitField("NE", 5, description="Numeric Error (native x87 error reporting)"),
    BitField("WP", 16, description="Write Protect (supervisor writes honour RW)"),
    BitField("AM", 18, description="Alignment Mask"),
    BitField("NW", 29, description="Not Write-through"),
    BitField("CD", 30, description="Cache Disable"),
    BitField("PG", 31, description="Paging"),
)

CR3_FIELDS: tuple[BitField, ...] = (
    BitField("PWT", 3, description="Page-level Write-Through of the top table"),
    BitField("PCD", 4, description="Page-level Cache Disable of the top table"),
    BitField("BASE", 12, 40, "Physical address of the top paging table", as_address=True),
    BitField("LAM_U57", 61, description="Linear Address Masking for user, 57-bit"),
    BitField("LAM_U48", 62, description="Linear Address Masking for user, 48-bit"),
)
"""CR3 when CR4.PCIDE=0. Bits 0-2 and 5-11 are ignored and reported as unknown."""

CR3_PCID_FIELDS: tuple[BitField, ...] = (
    BitField("PCID", 0, 12, "Process-Context Identifier"),
    BitField("BASE", 12, 40, "Physical address of the top paging table", as_address=True),
    BitField("LAM_U57", 61, description="Linear Address Masking for user, 57-bit"),
    BitField("LAM_U48", 62, description="Linear Address Masking for user, 48-bit"),
    BitField(
        "NOFLUSH",
        63,
        description="On MOV to CR3 only: keep the PCID's TLB entries (reads give 0)",
    ),
)
"""CR3 when CR4.PCIDE=1: PCID replaces PWT/PCD; bit 63 is the MOV-to-CR3 no-flush hint."""

CR4_FIELDS: tuple[BitField, ...] = (
    BitField("VME", 0, description="Virtual-8086 Mode Extensions"),
    BitField("PVI", 1, description="Protected-mode Virtual Interrupts"),
    BitField("TSD", 2, description="Time Stamp Disable"),
    BitField("DE", 3, description="Debugging Extensions"),
    BitField("PSE", 4, description="Page Size Extensions"),
    BitField("PAE", 5, description="Physical Address Extension"),
    BitField("MCE", 6, description="Machine-Check Enable"),
    BitField("PGE", 7, description="Page Global Enable"),
    BitField("PCE", 8, description="Performance-Monitoring Counter Enable"),
    BitField("OSFXSR", 9, description="OS support for FXSAVE/FXRSTOR"),
    BitField("OSXMMEXCPT", 10, description="OS support for unmasked SIMD FP exceptions"),
    BitField("UMIP", 11, description="User-Mode Instruction Prevention"),
    BitField("LA57", 12, description="57-bit linear addresses (5-level paging)"),
    BitField("VMXE", 13, description="VMX Enable"),
    BitField("SMXE", 14, description="SMX Enable"),
    BitField("FSGSBASE", 16, description="RDFSBASE/WRFSBASE/... enable"),
    BitField("PCIDE", 17, description="PCID Enable"),
    BitField("OSXSAVE", 18, description="XSAVE and Processor Extended States Enable"),
    BitField("KL", 19, description="Key Locker Enable"),
    BitField("SMEP", 20, description="Supervisor Mode Execution Prevention"),
    BitField("SMAP", 21, description="Supervisor Mode Access Prevention"),
    BitField("PKE", 22, description="Protection Keys for user pages"),
    BitField("CET", 23, description="Control-flow Enforcement Technology"),
    BitField("PKS", 24, description="Protection Keys for supervisor pages"),
    BitField("UINTR", 25, description="User Interrupts Enable"),
    BitField("LASS", 27, description="Linear Address Space Separation"),
    BitField("LAM_SUP", 28, description="Linear Address Masking for supervisor pointers"),
    BitField("FRED", 32, description="Flexible Return and Event Delivery"),
)

EFER_FIELDS: tuple[BitField, ...] = (
    BitField("SCE", 0, description="SYSCALL Enable"),
    BitField("LME", 8, description="Long Mode Enable"),
    BitField("LMA", 10, description="Long Mode Active"),
    BitField("NXE", 11, description="Execute-disable bit Enable"),
    BitField("SVME", 12, description="Secure Virtual Machine Enable (AMD)"),
    BitField("LMSLE", 13, description="Long Mode Segment Limit Enable (AMD)"),
    BitField("FFXSR", 14, description="Fast FXSAVE/FXRSTOR (AMD)"),
    BitField("TCE", 15, description="Translation Cache Extension (AMD)"),
    BitField("MCOMMIT", 17, description="MCOMMIT instruction enable (AMD)"),
    BitField("INTWB", 18, description="Interruptible WBINVD/WBNOINVD (AMD)"),
    BitField("UAIE", 20, description="Upper Address Ignore Enable (AMD)"),
    BitField("AIBRSE", 21, description="Automatic IBRS Enable (AMD)"),
)

RFLAGS_FIELDS: tuple[BitField, ...] = (
    BitField("CF", 0, description="Carry Flag"),
    BitField("1", 1, description="Reserved, always 1", hidden=True),
    BitField("PF", 2, description="Parity Flag"),
    BitField("AF", 4, description="Auxiliary Carry Flag"),
    BitField("ZF", 6, description="Zero Flag"),
    BitField("SF", 7, description="Sign Flag"),
    BitField("TF", 8, description="Trap Flag"),
    BitField("IF", 9, description="Interrupt Enable Flag"),
    BitField("DF", 10, description="Direction Flag"),
    BitField("OF", 11, description="Overflow Flag"),
    BitField("IOPL", 12, 2, "I/O Privilege Level"),
    BitField("NT", 14, description="Nested Task"),
    BitField("RF", 16, description="Resume Flag"),
    BitField("VM", 17, description="Virtual-8086 Mode"),
    BitField("AC", 18, description="Alignment Check / Access Control"),
    BitField("VIF", 19, description="Virtual Interrupt Flag"),
    BitField("VIP", 20, description="Virtual Interrupt Pending"),
    BitField("ID", 21, description="ID Flag (CPUID is available)"),
)


@dataclass(frozen=True, slots=True)
class FieldValue:
    """One field of a decoded register: its table entry and its value."""

    field: BitField
    value: int

    @property
    def name(self) -> str:
        """The field's SDM name."""
        return self.field.name

    @property
    def lsb(self) -> int:
        """The field's lowest bit."""
        return self.field.lsb

    @property
    def width(self) -> int:
        """The field's width in bits."""
        return self.field.width

    @property
    def description(self) -> str:
        """What the field means, in a few words."""
        return self.field.description

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"name", "lsb", "width", "value", "description"}``."""
        return {
            "name": self.name,
            "lsb": self.lsb,
            "width": self.width,
            "value": self.value,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class DecodedRegister:
    """A register value split into its named fields.

    ``fields`` holds every field the SDM defines for the register, set or
    not, so ``reg.is_set("PG")`` answers False rather than failing when PG
    is clear; a name the register does not have raises ``KeyError``.
    ``unknown`` is the set bits that no field names (reserved, ignored, or
    defined after this table was written).
    """

    name: str
    value: int
    fields: tuple[FieldValue, ...]
    unknown: int

    def _field(self, name: str) -> FieldValue:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"{self.name} has no field {name!r}")

    def __getitem__(self, name: str) -> int:
        return self._field(name).value

    def __iter__(self) -> Iterator[FieldValue]:
        return iter(self.fields)

    def is_set(self, name: str) -> bool:
        """Whether field ``name`` is non-zero."""
        return self._field(name).value != 0

    @property
    def flags(self) -> tuple[str, ...]:
        """Names of the single-bit fields that are set, lowest bit first."""
        return tuple(f.name for f in self.fields if f.width == 1 and f.value and not f.field.hidden)

    @property
    def multi_bit_fields(self) -> dict[str, int]:
        """Multi-bit fields (IOPL, PCID, BASE) and their values, set or not."""
        return {f.name: f.value for f in self.fields if f.width > 1}

    def describe(self) -> str:
        """The set fields and unknown bits, space separated (``PE MP ET NE WP PG``)."""
        return format_flags(self.value, (f.field for f in self.fields), sep=" ")

    def __str__(self) -> str:
        return f"{self.name}={self.value:#x} [{self.describe()}]"

    def __repr__(self) -> str:
        if any(f.name == "PCID" for f in self.fields):
            return f"decode_cr3({self.value:#x}, pcide=True)"
        return f"decode_{self.name.lower()}({self.value:#x})"

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"name", "value", "flags": [...], "fields": {...}, "unknown"}``."""
        return {
            "name": self.name,
            "value": self.value,
            "flags": list(self.flags),
            "fields": self.multi_bit_fields,
            "unknown": self.unknown,
        }


def _decode(name: str, value: int, table: tuple[BitField, ...]) -> DecodedRegister:
    if not 0 <= value <= _U64:
        raise ValueError(f"{name} value {value:#x} does not fit in 64 bits")
    fields = tuple(FieldValue(f, f.extract(value)) for f in sorted(table, key=lambda f: f.lsb))
    return DecodedRegister(name, value, fields, value & ~fields_mask(table))


def decode_cr0(value: int) -> DecodedRegister:
    """Decode CR0 (SDM Vol. 3A, 2.5)."""
    return _decode("CR0", value, CR0_FIELDS)


def decode_cr3(value: int, *, pcide: bool = False) -> DecodedRegister:
    """Decode CR3: PWT/PCD, or the PCID when CR4.PCIDE is set, and the table base.

    The base is reported in place (``BASE`` is an address, bits 12..51); the
    no-flush bit 63 is only named with PCIDE, where it means something on a
    MOV to CR3 (it always reads as 0).
    """
    return _decode("CR3", value, CR3_PCID_FIELDS if pcide else CR3_FIELDS)


def decode_cr4(value: int) -> DecodedRegister:
    """Decode CR4 (SDM Vol. 3A, 2.5)."""
    return _decode("CR4", value, CR4_FIELDS)


def decode_efer(value: int) -> DecodedRegister:
    """Decode IA32_EFER (MSR 0xC0000080), with the AMD-only bits named too."""
    return _decode("EFER", value, EFER_FIELDS)


def decode_rflags(value: int) -> DecodedRegister:
    """Decode RFLAGS; the always-1 bit 1 is known but not printed."""
    return _decode("RFLAGS", value, RFLAGS_FIELDS)


_DECODERS = {
    "CR0": CR0_FIELDS,
    "CR3": CR3_FIELDS,
    "CR4": CR4_FIELDS,
    "EFER": EFER_FIELDS,
    "RFLAGS": RFLAGS_FIELDS,
}


def decode_register(name: str, value: int) -> DecodedRegister:
    """Decode a register by name (``CR0``, ``CR3``, ``CR4``, ``EFER``, ``RFLAGS``).

    For faces that take a register name from the user. CR3 is decoded
    without PCIDE; use :func:`decode_cr3` when CR4.PCIDE is known.
    """
    key = name.upper()
    try:
        table = _DECODERS[key]
    except KeyError:
        raise ValueError(f"no decoder for register {name!r}") from None
    return _decode(key, value, table)


@dataclass(frozen=True, slots=True)
class PagingMode:
    """The paging facts a page walk needs, from CR0, CR4 and EFER.

    ``levels`` is 4 or 5 in long mode (CR4.LA57), 3 for 32-bit PAE paging,
    2 for 32-bit paging and 0 when paging is off (CR0.PG=0). Only 4 and 5
    are walked by :mod:`inspector.x86.paging`; :attr:`is_long_mode` says so.
    ``maxphyaddr`` is the physical address width (CPUID 0x80000008 EAX[7:0]);
    entry bits above it are reserved.
    """

    levels: int
    nxe: bool = True
    wp: bool = True
    pse: bool = False
    pae: bool = True
    pke: bool = False
    pks: bool = False
    smep: bool = False
    smap: bool = False
    pcide: bool = False
    pge: bool = False
    maxphyaddr: int = 52

    @property
    def enabled(self) -> bool:
        """Whether paging is on at all (CR0.PG)."""
        return self.levels != 0

    @property
    def is_long_mode(self) -> bool:
        """Whether this is 4- or 5-level (IA-32e) paging, the kind we can walk."""
        return self.levels in (4, 5)

    @property
    def name(self) -> str:
        """``"4-level"``, ``"5-level"``, ``"PAE"``, ``"32-bit"`` or ``"off"``."""
        return {0: "off", 2: "32-bit", 3: "PAE", 4: "4-level", 5: "5-level"}[self.levels]

    @property
    def virtual_address_bits(self) -> int:
        """Width of a linear address: 48 with 4 levels, 57 with 5."""
        return 57 if self.levels == 5 else 48 if self.levels == 4 else 32

    def __str__(self) -> str:
        if not self.enabled:
            return "paging is off (CR0.PG=0): linear addresses are physical"
        names = ("nxe", "wp", "pse", "pae", "pke", "pks", "smep", "smap", "pcide", "pge")
        on = " ".join(n.upper() for n in names if getattr(self, n))
        return f"{self.name} paging [{on}] MAXPHYADDR={self.maxphyaddr}"

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"name", "levels", "nxe", "wp", ..., "maxphyaddr"}``."""
        return {
            "name": self.name,
            "levels": self.levels,
            "nxe": self.nxe,
            "wp": self.wp,
            "pse": self.pse,
            "pae": self.pae,
            "pke": self.pke,
            "pks": self.pks,
            "smep": self.smep,
            "smap": self.smap,
            "pcide": self.pcide,
            "pge": self.pge,
            "maxphyaddr": self.maxphyaddr,
        }


def decode_paging_mode(cr0: int, cr4: int, efer: int, *, maxphyaddr: int = 52) -> PagingMode:
    """Work out the paging mode (SDM Vol. 3A, 4.1.1, Table 4-1).

    Never raises for a valid register set: paging off gives ``levels=0``
    (``str()`` says "paging is off"), legacy modes give 2 or 3, and callers
    that can only walk long-mode tables check :attr:`PagingMode.is_long_mode`.
    EFER.NXE only matters with PAE (it is reserved-bit checking's business).
    """
    c0 = decode_cr0(cr0)
    c4 = decode_cr4(cr4)
    ef = decode_efer(efer)
    if not c0.is_set("PG"):
        levels = 0
    elif ef.is_set("LMA"):
        levels = 5 if c4.is_set("LA57") else 4
    elif c4.is_set("PAE"):
        levels = 3
    else:
        levels = 2
    pae = levels in (3, 4, 5)
    return PagingMode(
        levels=levels,
        nxe=pae and ef.is_set("NXE"),
        wp=c0.is_set("WP"),
        pse=c4.is_set("PSE"),
        pae=c4.is_set("PAE"),
        pke=levels in (4, 5) and c4.is_set("PKE"),
        pks=levels in (4, 5) and c4.is_set("PKS"),
        smep=c4.is_set("SMEP"),
        smap=c4.is_set("SMAP"),
        pcide=levels in (4, 5) and c4.is_set("PCIDE"),
        pge=c4.is_set("PGE"),
        maxphyaddr=maxphyaddr,
    )
