"""GDTR, IDTR and TR of a Linux CPU, from the kernel's own variables.

For a stub that does not show the system registers (kgdb, OpenOCD, a probe's
server). Linux (``arch/x86/kernel/cpu/common.c``, ``idt.c``) keeps them in
variables: the per-CPU ``gdt_page`` (at ``__per_cpu_offset[cpu]`` plus the
symbol's zero-based per-CPU value) is loaded through its read-only alias in the
CPU's ``cpu_entry_area`` (``load_fixmap_gdt``); ``idt_descr`` is what ``lidt``
loaded (``CPU_ENTRY_AREA_RO_IDT`` since 4.15, ``idt_table`` before); TR is the
TSS descriptor ``GDT_ENTRY_TSS`` (selector 0x40), whose base is the
``cpu_entry_area`` alias of the per-CPU ``cpu_tss_rw``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InspectorError
from ..targets.base import DescriptorTableRegister, SegmentRegister, SystemRegisters
from ..x86.descriptors import decode_segment_descriptor
from .layout import CPU_ENTRY_AREA_BASE, P4D_SIZE

__all__ = [
    "GDT_LIMIT",
    "IDT_LIMIT",
    "TSS_SELECTOR",
    "LinuxSystemRegisters",
    "find_system_registers",
]

#: ``GDT_ENTRIES`` (16) * 8 - 1
GDT_LIMIT = 16 * 8 - 1
#: ``IDT_ENTRIES`` (256) * 16 - 1
IDT_LIMIT = 256 * 16 - 1
#: ``GDT_ENTRY_TSS`` (8) * 8
TSS_SELECTOR = 8 * 8

ReadVirtual = Callable[[int, int], bytes]
Lookup = Callable[[str], "int | None"]
#: ``alias(address, low, high)``: where in [low, high) the page of ``address`` is mapped too
Alias = Callable[[int, int, int], "int | None"]


@dataclass(frozen=True, slots=True)
class LinuxSystemRegisters:
    """The registers found, and where each came from (``gdtr``, ``idtr``, ``tr``)."""

    registers: SystemRegisters
    sources: dict[str, str]


def _u64(read_virtual: ReadVirtual, address: int) -> int:
    value: int = struct.unpack("<Q", read_virtual(address, 8))[0]
    return value


def find_system_registers(
    read_virtual: ReadVirtual, lookup: Lookup, alias: Alias, *, cpu: int = 0
) -> LinuxSystemRegisters:
    """GDTR, IDTR and TR of ``cpu`` from the kernel's symbols (InspectorError when missing)."""
    offsets = lookup("__per_cpu_offset")
    gdt_page = lookup("gdt_page")
    if offsets is None or gdt_page is None:
        raise InspectorError(
            "the kernel's symbols name no __per_cpu_offset or gdt_page: cannot find its GDT"
        )
    offset = _u64(read_virtual, offsets + 8 * cpu)
    where = f"via __per_cpu_offset[{cpu}] (kallsyms)"
    gdt = (gdt_page + offset) & (1 << 64) - 1
    cea = (CPU_ENTRY_AREA_BASE, CPU_ENTRY_AREA_BASE + P4D_SIZE)
    gdt_alias = alias(gdt, *cea)
    sources = {}
    if gdt_alias is not None:
        gdtr = DescriptorTableRegister(gdt_alias, GDT_LIMIT)
        sources["gdtr"] = f"gdt_page {where}, at its cpu_entry_area alias"
    else:
        gdtr = DescriptorTableRegister(gdt, GDT_LIMIT)
        sources["gdtr"] = f"gdt_page {where}"

    idt_descr = lookup("idt_descr")
    idt_table = lookup("idt_table")
    if idt_descr is not None:
        size, address = struct.unpack("<HQ", read_virtual(idt_descr, 10))  # struct desc_ptr
        idtr = DescriptorTableRegister(address, size)
        sources["idtr"] = "idt_descr (kallsyms)"
    elif idt_table is not None:
        idtr = DescriptorTableRegister(idt_table, IDT_LIMIT)
        sources["idtr"] = "idt_table (kallsyms)"
    else:
        raise InspectorError("the kernel's symbols name no idt_descr or idt_table")

    tss = decode_segment_descriptor(read_virtual(gdt + TSS_SELECTOR, 16))
    tr: SegmentRegister | None = None
    if tss.kind.startswith("TSS"):
        attributes = (tss.raw >> 40) & 0xF0FF
        tr = SegmentRegister(TSS_SELECTOR, tss.base, tss.limit, attributes)
        sources["tr"] = f"the TSS descriptor {TSS_SELECTOR:#x} in gdt_page {where}"
        cpu_tss_rw = lookup("cpu_tss_rw")
        if cpu_tss_rw is not None:
            tss_rw = (cpu_tss_rw + offset) & (1 << 64) - 1
            if alias(tss_rw, *cea) == tss.base:
                sources["tr"] += f"; its base maps cpu_tss_rw {where}"
    return LinuxSystemRegisters(SystemRegisters(gdtr, idtr, tr, None), sources)
