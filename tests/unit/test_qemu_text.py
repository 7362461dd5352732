"""QEMU monitor text parsing, on the real Linux capture's `info registers`."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinspect.inspector.errors import DecodeError
from kinspect.inspector.targets.base import DescriptorTableRegister, SegmentRegister
from kinspect.inspector.targets.qemu_text import (
    decode_info_mem,
    decode_info_registers,
    decode_info_tlb,
    decode_memory_size_summary,
    system_registers_from_info,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "linux-6.1-nokaslr"


def test_linux_info_registers():
    regs = decode_info_registers((FIXTURE / "info-registers.txt").read_text())
    assert regs["cr0"] == 0x80050033
    assert regs["cr3"] == 0x487C000
    assert regs["cr4"] == 0x6F0
    assert regs["efer"] == 0xD01
    assert regs["rip"] == 0xFFFFFFFF81A592EB
    assert regs["rflags"] == 0x246
    assert regs["r8"] == 0xFFFF88801F423000
    assert regs["cs"] == SegmentRegister(0x10, 0, 0xFFFFFFFF, 0x00AF9B00)
    assert regs["gs"].base == 0xFFFF88801F400000
    assert regs["gdt"] == DescriptorTableRegister(0xFFFFFE0000001000, 0x7F)
    assert regs["idt"] == DescriptorTableRegister(0xFFFFFE0000000000, 0xFFF)


def test_system_registers_from_info():
    sysregs = system_registers_from_info((FIXTURE / "info-registers.txt").read_text())
    assert sysregs.tr == SegmentRegister(0x40, 0xFFFFFE0000003000, 0x4087, 0x8900)
    assert sysregs.ldtr is not None and sysregs.ldtr.selector == 0
    assert sysregs.gdtr.limit == 0x7F


def test_32_bit_info_registers():
    text = """EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
CS =f000 ffff0000 0000ffff 00009b00
TR =0000 00000000 0000ffff 00008b00
GDT=     00000000 0000ffff
IDT=     00000000 0000ffff
CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000
EFER=0000000000000000
"""
    regs = decode_info_registers(text)
    assert regs["eip"] == 0xFFF0 and regs["rflags"] == 2 and regs["cr0"] == 0x60000010
    assert regs["cs"].base == 0xFFFF0000


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_info_registers("no registers here")
    with pytest.raises(DecodeError):
        decode_info_registers("")


def test_memory_size_summary():
    assert decode_memory_size_summary("base memory: 134217728\n") == 134217728
    text = "base memory: 134217728\nplugged memory: 1073741824\n"
    assert decode_memory_size_summary(text) == 134217728 + 1073741824
    assert decode_memory_size_summary("unknown command") is None


def test_info_tlb_and_mem_lines():
    tlb = list(decode_info_tlb("0000000000400000: 000000000330e000 X---A--U-\njunk\n"))
    assert tlb == [(0x400000, 0x330E000, "X---A--U-")]
    assert tlb[0].va == 0x400000 and tlb[0].flags == "X---A--U-"
    mem = list(decode_info_mem("0000000000400000-0000000000500000 0000000000100000 ur-\n"))
    assert mem == [(0x400000, 0x500000, "ur-")]
