"""GDT/IDT/TSS analysis (inspector/tables.py) on bytes handed in by a fake reader."""

import struct

import pytest

from kinspect.inspector.errors import FaultError, InspectorError
from kinspect.inspector.symbols import Symbol, SymbolTable
from kinspect.inspector.tables import (
    describe_gdt,
    describe_idt,
    describe_ldt,
    describe_tss,
    mapping_lookup,
)
from kinspect.inspector.targets.base import DescriptorTableRegister, SegmentRegister
from kinspect.inspector.x86.paging import Permissions, Range

GDT_BASE = 0xFFFFFFFF80105000
TSS_BASE = 0xFFFFFFFF80104000
IDT_BASE = 0xFFFFFFFF80106000
STACK_TOP = 0xFFFFFFFF80110000
IST1_TOP = 0xFFFFFFFF80120000

GDT = struct.pack(
    "<7Q",
    0,
    0x00AF9B000000FFFF,
    0x00CF93000000FFFF,
    0x00CFF3000000FFFF,
    0x00AFFB000000FFFF,
    0x80008B1040000067,
    0x00000000FFFFFFFF,
)
TSS = struct.pack("<I3QQ7QQHH", 0, STACK_TOP, 0, 0, 0, IST1_TOP, 0, 0, 0, 0, 0, 0, 0, 0, 104)
# Two gates: vector 0 -> 0xffffffff80101234, vector 1 not present
IDT = struct.pack("<QQ", 0x80108E0000081234, 0xFFFFFFFF) + bytes(16)

MEMORY = {GDT_BASE: GDT, TSS_BASE: TSS, IDT_BASE: IDT}


def read(address: int, size: int) -> bytes:
    for base, data in MEMORY.items():
        if base <= address and address + size <= base + len(data):
            return data[address - base : address - base + size]
    raise FaultError(address, "not mapped")


RANGES = [
    Range(0xFFFFFFFF8010C000, STACK_TOP, 0x10C000, 4096, Permissions(True, False, False), ("G",)),
]
SYMBOLS = SymbolTable(
    [
        Symbol("stack_top", STACK_TOP, 0, "notype"),
        Symbol("ist1_top", IST1_TOP, 0, "notype"),
        Symbol("isr0", 0xFFFFFFFF80101234, 16, "func"),
    ]
)
TR = SegmentRegister(0x28, TSS_BASE, 0x67, 0x8900)
LOADED = {"CS": 0x8, "SS": 0x10, "DS": 0x10, "TR": 0x28}


def test_mapping_lookup():
    lookup = mapping_lookup(RANGES)
    assert lookup(STACK_TOP - 8) == f"0xffffffff8010c000-{STACK_TOP:#x} RW NX"
    assert lookup(STACK_TOP) is None and lookup(0) is None


def test_tss_says_which_stacks_are_mapped():
    gdt = describe_gdt(read, DescriptorTableRegister(GDT_BASE, len(GDT) - 1), LOADED)
    tss = describe_tss(read, TR, gdt, SYMBOLS, mapping_lookup(RANGES))
    stacks = {s.name: s for s in tss.stacks}
    assert stacks["RSP0"].mapped and stacks["RSP0"].symbol == "stack_top"
    assert not stacks["IST1"].mapped and "NOT MAPPED" in str(stacks["IST1"])
    assert stacks["IST2"].value == 0 and "unused" in str(stacks["IST2"])
    assert tss.kind == "TSS64-busy" and tss.base == TSS_BASE
    assert "none" in tss.iomap and tss.to_dict()["IST"][0] == IST1_TOP


def test_tr_pointing_elsewhere_is_an_error():
    gdt = describe_gdt(read, DescriptorTableRegister(GDT_BASE, len(GDT) - 1), LOADED)
    with pytest.raises(InspectorError, match="not a TSS"):
        describe_tss(read, SegmentRegister(0x10, 0, 0, 0), gdt, None, None)
    with pytest.raises(InspectorError, match="TR is null"):
        describe_tss(read, SegmentRegister(0, 0, 0, 0), gdt, None, None)


def test_idt_handlers_symbolized():
    idt = describe_idt(read, DescriptorTableRegister(IDT_BASE, len(IDT) - 1), SYMBOLS)
    assert [e.handler for e in idt.entries] == ["isr0", None]
    assert idt.handlers() == {0xFFFFFFFF80101234: 0}
    assert "1 present gates" in str(idt)


def test_unreadable_table_is_one_error_naming_it():
    with pytest.raises(InspectorError, match="cannot read the GDT at 0x1000"):
        describe_gdt(read, DescriptorTableRegister(0x1000, 7), {})


def test_null_ldtr_means_no_ldt():
    assert describe_ldt(read, SegmentRegister(0, 0, 0, 0), {}) is None
    assert describe_ldt(read, None, {}) is None
