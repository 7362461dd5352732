"""Linux's regions (ptdump's markers) and ``pt --compact``'s merge, on literal values."""

from __future__ import annotations

import struct

import pytest

from kinspect.inspector.errors import FaultError
from kinspect.inspector.linux.layout import (
    CPU_ENTRY_AREA_BASE,
    ESPFIX_BASE,
    MODULES_END,
    MODULES_VADDR,
    check_direct_map,
    direct_map_candidates,
    linux_regions,
)
from kinspect.inspector.linux.percpu import find_system_registers
from kinspect.inspector.x86.paging import Permissions, Range, compact_ranges

GiB = 1 << 30
RW_NX = Permissions(True, False, False)
RO_X = Permissions(False, False, True)
USER = Permissions(True, True, False)

# the Debian guest's layout under KASLR (a boot of 6.1.0-57-amd64)
DIRECT = 0xFFFF8D2140000000
VMALLOC = 0xFFFFCEEDC0000000
VMEMMAP = 0xFFFFFB33C0000000
TEXT = 0xFFFFFFFF95E00000
END = 0xFFFFFFFF99400000


@pytest.fixture
def regions():
    return linux_regions(
        levels=4,
        page_offset_base=DIRECT,
        vmalloc_base=VMALLOC,
        vmemmap_base=VMEMMAP,
        text=TEXT,
        end=END,
    )


@pytest.mark.parametrize(
    ("address", "name"),
    [
        (0x400000, "user space"),
        (0x7FFFFFFFF000, "user space"),
        (0x800000000000, None),  # past the user half
        (0xFFFF800000000000, None),  # the guard hole
        (0xFFFF880000000000, "LDT remap"),
        (DIRECT - 1, None),
        (DIRECT, "direct map"),
        (DIRECT + 0x1FFE0000, "direct map"),
        (VMALLOC, "vmalloc"),
        (VMALLOC + (32 << 40) - 1, "vmalloc"),
        (VMEMMAP, "vmemmap"),
        (CPU_ENTRY_AREA_BASE, "cpu_entry_area"),
        (0xFFFFFE0000003000, "cpu_entry_area"),
        (ESPFIX_BASE - 1, None),
        (0xFFFFFF4700008000, "espfix"),
        (0xFFFFFFEF00000000, "EFI runtime"),
        (0xFFFFFFFF80000000, None),  # below _text in the image's window
        (TEXT, "kernel text/data"),
        (END - 1, "kernel text/data"),
        (END, None),
        (MODULES_VADDR, "modules"),
        (0xFFFFFFFFC0274000, "modules"),
        (MODULES_END, "fixmap"),
        (0xFFFFFFFFFF5FC000, "fixmap"),
        (0xFFFFFFFFFF600000, "fixmap"),  # the vsyscall page is a fixmap slot
    ],
)
def test_regions_name_addresses_as_ptdump(regions, address, name):
    assert regions.name_of(address) == name


def test_regions_without_bases_take_the_kernels_defaults():
    four = linux_regions(
        levels=4, page_offset_base=None, vmalloc_base=None, vmemmap_base=None, text=None, end=None
    )
    assert four.name_of(0xFFFF888000000000) == "direct map"
    assert four.name_of(0xFFFFC90000000000) == "vmalloc"
    assert four.name_of(0xFFFFEA0000000000) == "vmemmap"
    assert four.name_of(0xFFFFFFFF81000000) is None  # no _text/_end: no image region
    five = linux_regions(
        levels=5, page_offset_base=None, vmalloc_base=None, vmemmap_base=None, text=None, end=None
    )
    assert five.name_of(0x00FFFFFFFFFFF000) == "user space"  # 56 bits of user space
    assert five.name_of(0xFF11000000000000) == "direct map"
    assert five.name_of(0xFF90000000000000) == "LDT remap"
    assert five.name_of(0xFFA0000000000000) == "vmalloc"
    assert five.name_of(0xFFD4000000000000) == "vmemmap"


def test_region_boundaries_are_every_start_and_end(regions):
    bounds = regions.boundaries()
    assert bounds == sorted(bounds)
    assert {DIRECT, VMALLOC, VMEMMAP, TEXT, END, MODULES_VADDR, MODULES_END} <= set(bounds)


def r(start, end, phys, perms=RW_NX, page=4096, attrs=()):
    return Range(start, end, phys, page, perms, attrs)


def test_compact_merges_whatever_the_physical_addresses():
    ranges = [r(0x1000, 0x2000, 0x9000), r(0x2000, 0x3000, 0x5000), r(0x3000, 0x5000, 0x1000)]
    (one,) = compact_ranges(ranges)
    assert (one.range.start, one.range.end, one.range.phys) == (0x1000, 0x5000, 0x9000)
    assert (one.pieces, one.mapped) == (3, 0x4000)
    assert one.to_dict()["pieces"] == 3 and one.to_dict()["size"] == 0x4000


def test_compact_keeps_permissions_attributes_and_page_size_apart():
    ranges = [
        r(0x1000, 0x2000, 0),
        r(0x2000, 0x3000, 0, perms=RO_X),
        r(0x3000, 0x4000, 0, perms=RO_X, attrs=("G",)),
        r(0x200000, 0x400000, 0, perms=RO_X, attrs=("G",), page=0x200000),
        r(0x400000, 0x401000, 0, perms=USER),
    ]
    assert [c.pieces for c in compact_ranges(ranges)] == [1, 1, 1, 1, 1]


def test_compact_crosses_small_holes_not_wide_ones():
    # espfix: one page every 64 KiB, all the same page
    espfix = [
        r(ESPFIX_BASE + i * 0x10000, ESPFIX_BASE + i * 0x10000 + 0x1000, 0x1057000)
        for i in range(4096)
    ]
    (one,) = compact_ranges(espfix)
    assert (one.pieces, one.mapped) == (4096, 4096 * 0x1000)
    assert one.range.end == espfix[-1].end
    wide = [r(0x1000, 0x2000, 0), r(0x1000 + (2 << 20) + 0x2000, 0x1000 + (2 << 20) + 0x3000, 0)]
    assert len(compact_ranges(wide)) == 2


def test_compact_never_crosses_a_region_boundary(regions):
    ranges = [r(END - 0x2000, END - 0x1000, 0), r(END, END + 0x1000, 0)]
    assert len(compact_ranges(ranges)) == 1
    assert len(compact_ranges(ranges, regions.boundaries())) == 2


def test_compact_of_nothing_is_nothing():
    assert compact_ranges([]) == []


def test_direct_map_candidates_come_from_a_kernel_gs():
    gs = DIRECT + 0x1F400000  # CPU 0's per-CPU area, 500 MiB into RAM
    found = direct_map_candidates({"gs_base": gs, "k_gs_base": 0})
    assert found[0] == (DIRECT, gs)
    assert all(base % GiB == 0 and base <= gs for base, _ in found)
    # in user mode the kernel's GS is the inactive one
    assert direct_map_candidates({"gs_base": 0x7F0000000000, "k_gs_base": gs})[0] == (DIRECT, gs)
    assert direct_map_candidates({"gs_base": 0, "k_gs_base": 0}) == []


def test_check_direct_map_needs_the_walk_to_find_gs_again():
    gs = DIRECT + 0x5000
    memory = {DIRECT + 0x1000: b"\0" * 8}

    def read_virtual(address, size):
        if address not in memory:
            raise FaultError(address, "not mapped")
        return memory[address][:size]

    def walk(virtual, read_physical):
        read_physical(0x1000, 8)  # the root table, read through the candidate base
        return virtual - DIRECT

    assert check_direct_map(DIRECT, gs, read_virtual, walk)
    assert not check_direct_map(DIRECT - GiB, gs, read_virtual, walk)  # reads fault


def test_system_registers_from_the_kernels_variables():
    offset = 0xFFFF8D215F400000
    symbols = {
        "__per_cpu_offset": 0xFFFFFFFF98000000,
        "gdt_page": 0xB000,
        "idt_descr": 0xFFFFFFFF98001000,
        "cpu_tss_rw": 0x6000,
    }
    # base 0xfffffe0000003000: bits 15:0 of the limit, base 23:0, type, base 31:24; high: 63:32
    low = 0x4087 | (0x003000 << 16) | (0x8B << 40) | (0x00 << 56)
    high = 0xFFFFFE00
    memory = {
        symbols["__per_cpu_offset"]: struct.pack("<Q", offset),
        symbols["idt_descr"]: struct.pack("<HQ", 0xFFF, CPU_ENTRY_AREA_BASE),
        offset + 0xB000 + 0x40: struct.pack("<QQ", low, high),
    }

    def read_virtual(address, size):
        return memory[address][:size]

    aliases = {
        offset + 0xB000: CPU_ENTRY_AREA_BASE + 0x1000,
        offset + 0x6000: CPU_ENTRY_AREA_BASE + 0x3000,
    }
    found = find_system_registers(read_virtual, symbols.get, lambda va, lo, hi: aliases.get(va))
    regs = found.registers
    assert (regs.gdtr.base, regs.gdtr.limit) == (CPU_ENTRY_AREA_BASE + 0x1000, 0x7F)
    assert (regs.idtr.base, regs.idtr.limit) == (CPU_ENTRY_AREA_BASE, 0xFFF)
    assert (regs.tr.selector, regs.tr.base, regs.tr.limit) == (
        0x40,
        CPU_ENTRY_AREA_BASE + 0x3000,
        0x4087,
    )
    assert "gdt_page via __per_cpu_offset[0]" in found.sources["gdtr"]
    assert found.sources["idtr"] == "idt_descr (kallsyms)"
    assert "cpu_tss_rw" in found.sources["tr"]
