"""TR and LDTR as the agent rebuilds them from the GDT, on literal descriptors.

The agent sees only the selectors (``str``/``sldt``); the hidden part comes
from the GDT descriptor. It must read like QEMU's ``info registers`` line for
the same state, where the attribute word is the descriptor's high dword
masked with 0x00ffff00: flags, limit 19:16 and the access byte (the live
``CS =0008 ... ffffffff 00af9b00`` line shows the limit nibble ``f``).
"""

from __future__ import annotations

import struct

import pytest

from kinspect.inspector.errors import FaultError
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.inspector.targets.base import SegmentRegister
from kinspect.inspector.targets.qemu_text import decode_info_registers
from kinspect.inspector.x86.descriptors import decode_segment_descriptor

GDT_BASE = 0xFFFFFFFF80199040


class GdtOnlyAgent(AgentTarget):
    """An AgentTarget whose kernel is a GDT and a few registers (no line, no agent)."""

    def __init__(self, gdt: bytes, tr: int, ldtr: int) -> None:
        self.gdt = gdt
        self.regs = {
            "gdtr_base": GDT_BASE,
            "gdtr_limit": len(gdt) - 1,
            "idtr_base": 0xFFFFFFFF8019A000,
            "idtr_limit": 0xFFF,
            "tr": tr,
            "ldtr": ldtr,
        }

    def agent_registers(self) -> dict[str, int]:
        return dict(self.regs)

    def read_virtual(self, address: int, size: int) -> bytes:
        offset = address - GDT_BASE
        if offset < 0 or offset + size > len(self.gdt):
            raise FaultError(address, "not in the GDT")
        return self.gdt[offset : offset + size]


def q(*words: int) -> bytes:
    return b"".join(struct.pack("<Q", w) for w in words)


def system_descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    """A 16-byte long-mode system descriptor, packed field by field (SDM Figure 7-4)."""
    return struct.pack(
        "<HHBBBBII",
        limit & 0xFFFF,
        base & 0xFFFF,
        (base >> 16) & 0xFF,
        access,
        (flags << 4) | ((limit >> 16) & 0xF),
        (base >> 24) & 0xFF,
        base >> 32,
        0,
    )


KERNEL_CODE = 0x00AF9B000000FFFF
TSS_BASE = 0xFFFFFFFF80198FD0
LDT_BASE = 0xFFFFFFFF80198FA0


def gdt_with(ldt: bytes) -> bytes:
    tss = system_descriptor(TSS_BASE, 0x67, 0x8B, 0)  # busy: LTR marked it
    return q(0, KERNEL_CODE, 0x00CF93000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF) + tss + ldt


def qemu_line(name: str, reg: SegmentRegister) -> SegmentRegister:
    """``reg`` through the text QEMU prints for it and our parser of that text."""
    text = (
        f"{name}={reg.selector:04x} {reg.base:016x} {reg.limit:08x} {reg.attributes:08x}\n"
        f"GDT=     {GDT_BASE:016x} 00000047\nIDT=     ffffffff8019a000 00000fff\n"
    )
    return decode_info_registers(text)[name.strip().lower()]


def test_ldtr_keeps_limit_bits_19_16_in_its_attributes():
    # An LDT descriptor with a byte-granular limit above 64 KiB: 0x2ffff.
    ldt = system_descriptor(LDT_BASE, 0x2FFFF, 0x82, 0)
    assert ldt[:8] == q(0x800282198FA0FFFF)  # limit 19:16 (2) sits in the attribute dword
    agent = GdtOnlyAgent(gdt_with(ldt), tr=0x28, ldtr=0x38)
    ldtr = agent.system_registers().ldtr
    assert ldtr == SegmentRegister(0x38, LDT_BASE, 0x2FFFF, 0x00028200)
    # The same word the GDT view shows for that descriptor, and the one QEMU prints.
    assert ldtr.attributes == decode_segment_descriptor(ldt).attributes
    assert ldtr == qemu_line("LDT", ldtr)
    # What the old 0x00f0ff00 mask gave: the limit nibble lost.
    assert ldtr.attributes & 0x00F0FF00 == 0x00008200 != ldtr.attributes


def test_ldtr_with_4k_granularity():
    ldt = system_descriptor(LDT_BASE, 0x10001, 0x82, 0x8)  # G: limit in 4 KiB units
    ldtr = GdtOnlyAgent(gdt_with(ldt), tr=0x28, ldtr=0x38).system_registers().ldtr
    assert (ldtr.limit, ldtr.attributes) == (0x10001FFF, 0x00818200)
    assert ldtr.attributes == decode_segment_descriptor(ldt).attributes


def test_tr_is_unchanged_by_the_fix():
    # A TSS limit fits in 16 bits: limit 19:16 is 0, with either mask.
    ldt = system_descriptor(LDT_BASE, 0x27, 0x82, 0)
    system = GdtOnlyAgent(gdt_with(ldt), tr=0x28, ldtr=0x38).system_registers()
    assert system.tr == SegmentRegister(0x28, TSS_BASE, 0x67, 0x00008B00)
    assert system.ldtr == SegmentRegister(0x38, LDT_BASE, 0x27, 0x00008200)


@pytest.mark.parametrize("ldtr", [0, 0x3, 0x48, 0x40])
def test_null_or_past_the_limit_is_none(ldtr):
    # 0 and 3 are null; 0x48 is past the GDT; 0x40 leaves no room for 16 bytes.
    ldt = system_descriptor(LDT_BASE, 0x27, 0x82, 0)
    assert GdtOnlyAgent(gdt_with(ldt), tr=0x28, ldtr=ldtr).system_registers().ldtr is None
