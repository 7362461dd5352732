"""Descriptor decoders on literal bytes and on the real Linux 6.1 capture."""

import json
import struct
from pathlib import Path

import pytest

from kinspect.inspector.errors import DecodeError
from kinspect.inspector.targets.qemu_text import decode_info_registers
from kinspect.inspector.x86.descriptors import (
    ERROR_CODE_VECTORS,
    decode_gate,
    decode_gdt,
    decode_idt,
    decode_segment_descriptor,
    decode_tss64,
    vector_name,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "linux-6.1-nokaslr"


def q(*words: int) -> bytes:
    return b"".join(struct.pack("<Q", w) for w in words)


def read_qwords(name: str) -> tuple[int, bytes]:
    """(base, bytes) from a ``VA +OFF: QWORD QWORD`` dump."""
    base = None
    data = bytearray()
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        va, rest = line.split(" ", 1)
        if base is None:
            base = int(va, 16)
        for word in rest.split(":", 1)[1].split():
            data += struct.pack("<Q", int(word, 16))
    assert base is not None
    return base, bytes(data)


# -- segment descriptors ---------------------------------------------------------------


def test_null_descriptor():
    d = decode_segment_descriptor(bytes(8))
    assert d.kind == "null" and not d.P and str(d) == "null"


def test_long_mode_kernel_code():
    d = decode_segment_descriptor(q(0x00AF9B000000FFFF))
    assert d.kind == "code" and d.is_code and d.S
    assert d.L and not d.DB and d.G and d.P and d.DPL == 0
    assert d.type == 0xB and d.type_flags == ("R", "A") and d.accessed
    assert d.limit == 0xFFFFF and d.effective_limit == 0xFFFFFFFF and d.base == 0
    assert d.attributes == 0x00AF9B00
    assert "64-bit" in str(d)


def test_user_data_dpl3_expand_down_and_byte_granular_limit():
    d = decode_segment_descriptor(q(0x0040F50000000000))  # Linux slot 0x78 (per-CPU cpu number)
    assert d.kind == "data" and d.DPL == 3 and d.DB and not d.G
    assert d.type_flags == ("E", "A") and d.effective_limit == 0


def test_base_and_limit_rebuilt_from_split_fields():
    # base 0x12345678 (15:0 in bytes 2-3, 23:16 byte 4, 31:24 byte 7), limit 0xabcde
    d = decode_segment_descriptor(q(0x120A92345678BCDE))
    assert d.base == 0x12345678 and d.limit == 0xABCDE and not d.G
    assert d.effective_limit == 0xABCDE


def test_tss_descriptor_straddles_two_slots():
    d = decode_segment_descriptor(q(0x00008B0030004087, 0x00000000FFFFFE00))
    assert d.kind == "TSS64-busy" and d.size == 16 and d.is_tss
    assert d.base == 0xFFFFFE0000003000 and d.limit == 0x4087
    assert d.raw_high == 0xFFFFFE00 and d.reserved == 0
    avail = decode_segment_descriptor(q(0x0000890030004087, 0x00000000FFFFFE00))
    assert avail.kind == "TSS64-avail"


def test_tss_descriptor_without_its_upper_half_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_segment_descriptor(q(0x0000890030004087))


def test_tss_reserved_upper_bits_are_kept():
    d = decode_segment_descriptor(q(0x0000890030004087, 0x00001F00FFFFFE00))
    assert d.reserved == 0x00001F0000000000 and "reserved=" in str(d)


def test_ldt_descriptor_long_and_legacy():
    raw = q(0x0000820010000FFF, 0x00000000FFFF8000)
    d = decode_segment_descriptor(raw)
    assert d.kind == "LDT" and d.base == 0xFFFF800000001000 and d.limit == 0xFFF
    legacy = decode_segment_descriptor(raw[:8], long_mode=False)
    assert legacy.kind == "LDT" and legacy.size == 8 and legacy.base == 0x1000


def test_call_gate_64():
    # offset 0xffffffff81234567 -> 15:0 0x4567, 31:16 0x8123, 63:32 0xffffffff; selector 0x10
    d = decode_segment_descriptor(q(0x8123EC0000104567, 0x00000000FFFFFFFF))
    assert d.kind == "call-gate64" and d.gate_selector == 0x10 and d.DPL == 3
    assert d.base == 0xFFFFFFFF81234567


def test_legacy_system_types():
    assert decode_segment_descriptor(q(0x0000890000000067), long_mode=False).kind == "TSS32-avail"
    assert decode_segment_descriptor(q(0x0000810000000067), long_mode=False).kind == "TSS16-avail"
    assert decode_segment_descriptor(q(0x0000810000000067)).kind == "reserved"


def test_descriptor_to_dict_is_json():
    d = decode_segment_descriptor(q(0x00CF93000000FFFF))
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["kind"] == "data" and doc["type_flags"] == ["W", "A"] and doc["DB"] is True
    assert doc["raw_high"] is None and doc["effective_limit"] == 0xFFFFFFFF


# -- GDT with loaded selectors -----------------------------------------------------------------

DEMO_GDT = q(
    0,
    0x00AF9B000000FFFF,  # 0x08 kernel code
    0x00CF93000000FFFF,  # 0x10 kernel data
    0x00CFF3000000FFFF,  # 0x18 user data
    0x00AFFB000000FFFF,  # 0x20 user code
    0x80008B1040000067,  # 0x28 TSS (busy) base 0xffffffff80104000
    0x00000000FFFFFFFF,
)


def test_demo_like_gdt_marks_loaded_slots():
    t = decode_gdt(
        DEMO_GDT,
        0xFFFFFFFF80105000,
        loaded={"CS": 0x8, "SS": 0x10, "DS": 0x10, "FS": 0, "TR": 0x28},
    )
    assert [s.selector for s in t.slots] == [0, 8, 0x10, 0x18, 0x20, 0x28, 0x30]
    assert t.slot(0x8).loaded_by == ("CS",)
    assert t.slot(0x10).loaded_by == ("SS", "DS")
    assert t.slot(0).loaded_by == ()
    assert t.slot(0x28).descriptor.base == 0xFFFFFFFF80104000
    assert t.slot(0x30).descriptor is None and t.slot(0x30).continues == 0x28
    assert t.slot(0x20).address == 0xFFFFFFFF80105020
    assert t.problems == ()
    assert "<- CS" in str(t)


def test_gdt_problems_for_bad_selectors():
    bad = bytearray(DEMO_GDT)
    bad[8 + 6] |= 0x40  # kernel code: set D/B next to L
    t = decode_gdt(
        bytes(bad), 0, loaded={"CS": 0x8, "SS": 0x20, "DS": 0x48, "TR": 0x10, "ES": 0x30}
    )
    reasons = {p.register: p.reason for p in t.problems}
    assert "L and D/B" in reasons["CS"]
    assert "writable data" in reasons["SS"]
    assert "past the GDT limit" in reasons["DS"]
    assert "TSS" in reasons["TR"]
    assert "upper half" in reasons["ES"]


def test_gdt_not_present_segment():
    gdt = q(0, 0x002F1B000000FFFF)  # code, P=0
    t = decode_gdt(gdt, 0, loaded={"CS": 0x8})
    assert [p.reason for p in t.problems] == ["the code descriptor is not present (P=0)"]


def test_gdt_null_cs_and_null_tr():
    t = decode_gdt(DEMO_GDT, 0, loaded={"CS": 0, "TR": 0, "SS": 0})
    assert {p.register for p in t.problems} == {"CS", "TR"}  # null SS is fine in 64-bit mode


def test_ldt_selectors_go_to_the_ldt():
    ldt = q(0x00CFF3000000FFFF)
    t = decode_gdt(ldt, 0x1000, name="LDT", loaded={"DS": 0x7, "CS": 0x8})
    assert t.slot(0).loaded_by == ("DS",) and t.problems == ()


# The demo kernel's LDT (kernel-agent/demo/gdt.c), as QEMU's x reads it from one build.
DEMO_LDT = q(
    0x00CFFA000000FFFF,  # 0x00 32-bit user code, base 0, limit 0xfffff G
    0x1242F2345000FFFF,  # 0x08 user data, base 0x12345000, limit 0x2ffff bytes
    0x0000720000000FFF,  # 0x10 user data, not present
    0x8010EC0000080970,  # 0x18 call gate to 0x0008:0xffffffff80100970
    0x00000000FFFFFFFF,
)


def test_demo_kernel_ldt():
    t = decode_gdt(DEMO_LDT, 0xFFFFFFFF80198FA0, name="LDT", loaded={"CS": 0x8, "LDTR": 0x38})
    assert (t.name, t.limit, t.problems) == ("LDT", 0x27, ())
    assert [s.selector for s in t.slots] == [0x04, 0x0C, 0x14, 0x1C, 0x24]  # TI=1
    assert all(s.loaded_by == () for s in t.slots)  # CS is a GDT selector, LDTR not in here
    code, data, absent, gate = (t.slot(s).descriptor for s in (0x04, 0x0C, 0x14, 0x1C))
    assert code.kind == "code" and code.DB and not code.L and code.DPL == 3
    assert code.type_flags == ("R",) and code.effective_limit == 0xFFFFFFFF
    assert str(code).startswith("code 32-bit R base=0x0 limit=0xffffffff DPL=3 P")
    # Base 31:24 in byte 7, limit 19:16 in byte 6: both rebuilt, both in the attribute word.
    assert (data.base, data.limit, data.effective_limit) == (0x12345000, 0x2FFFF, 0x2FFFF)
    assert data.attributes == 0x0042F200 and not data.G
    assert absent.kind == "data" and not absent.P and "not-present" in str(absent)
    assert gate.kind == "call-gate64" and gate.size == 16 and gate.gate_selector == 0x08
    assert gate.base == 0xFFFFFFFF80100970 and gate.DPL == 3 and gate.P and gate.reserved == 0
    assert t.slot(0x24).descriptor is None and t.slot(0x24).continues == 0x1C


# -- IDT gates -----------------------------------------------------------------------


def test_gate_offset_rebuilt_from_all_three_parts():
    # offset 0xffffffff81c00990 split: 0x0990 | 0x81c0 << 16 | 0xffffffff << 32
    g = decode_gate(q(0x81C08E0000100990, 0x00000000FFFFFFFF), 0)
    assert g.offset == 0xFFFFFFFF81C00990
    assert g.kind == "interrupt" and g.selector == 0x10 and g.P and g.DPL == 0 and g.IST == 0
    assert g.name == "#DE" and g.reserved == 0


def test_gate_parts_are_not_anded_or_swapped():
    g = decode_gate(q(0x5678EF0300081234, 0x000000009ABCDEF0), 3)
    assert g.offset == 0x9ABCDEF056781234
    assert g.kind == "trap" and g.DPL == 3 and g.IST == 3 and g.selector == 0x8


def test_gate_reserved_bits_kept():
    g = decode_gate(q(0x0000_8E08_0008_0000, 0xDEAD_0000_0000_0000), 14)
    assert g.IST == 0 and g.reserved == (1 << 35) | (0xDEAD << 48)


def test_not_present_gate():
    g = decode_gate(bytes(16), 200)
    assert not g.P and g.kind == "reserved" and "not present" in str(g)


def test_vector_names():
    assert vector_name(14) == "#PF" and vector_name(29) == "#VC" and vector_name(21) == "#CP"
    assert vector_name(15) == "reserved" and vector_name(32) == ""
    assert 14 in ERROR_CODE_VECTORS and 3 not in ERROR_CODE_VECTORS


# -- TSS ----------------------------------------------------------------------------------


def test_tss64_fields():
    data = struct.pack(
        "<I3QQ7QQHH",
        0,
        0xFFFFFFFF80110000,
        2,
        3,
        0,
        0xFFFFFFFF80120000,
        0,
        0,
        0,
        0,
        0,
        7,
        0,
        0,
        104,
    )
    t = decode_tss64(data)
    assert t.RSP == (0xFFFFFFFF80110000, 2, 3)
    assert t.IST[0] == 0xFFFFFFFF80120000 and t.IST[6] == 7
    assert t.iomap_base == 104 and t.reserved == 0
    assert "IST1=0xffffffff80120000" in str(t)
    with pytest.raises(DecodeError):
        decode_tss64(data[:100])


# -- the real Linux 6.1 capture --------------------------------------------------------------


@pytest.fixture(scope="module")
def linux_regs():
    return decode_info_registers((FIXTURES / "info-registers.txt").read_text())


def test_linux_gdt_agrees_with_qemus_segment_caches(linux_regs):
    base, data = read_qwords("gdt.txt")
    gdtr = linux_regs["gdt"]
    assert base == gdtr.base and len(data) == gdtr.limit + 1
    loaded = {
        name.upper(): linux_regs[name].selector for name in ("cs", "ss", "ds", "es", "fs", "gs")
    }
    loaded["TR"] = linux_regs["tr"].selector
    t = decode_gdt(data, base, loaded=loaded)
    assert t.problems == ()

    cs = t.slot(0x10)
    assert cs.loaded_by == ("CS",)
    assert cs.descriptor.kind == "code" and cs.descriptor.L and not cs.descriptor.DB
    assert cs.descriptor.DPL == 0
    assert cs.descriptor.attributes == linux_regs["cs"].attributes == 0x00AF9B00
    ss = t.slot(0x18)
    assert ss.descriptor.attributes == linux_regs["ss"].attributes
    assert ss.descriptor.effective_limit == linux_regs["ss"].limit

    tr = t.slot(0x40)
    assert tr.loaded_by == ("TR",)
    assert tr.descriptor.kind == "TSS64-busy"  # LTR marks the GDT copy busy; QEMU's cache says avl
    assert tr.descriptor.base == linux_regs["tr"].base == 0xFFFFFE0000003000
    assert tr.descriptor.effective_limit == linux_regs["tr"].limit == 0x4087
    assert t.slot(0x48).continues == 0x40
    assert t.slot(0x78).descriptor.DPL == 3  # the per-CPU number segment


def test_linux_idt_handlers_equal_kallsyms(linux_regs):
    base, data = read_qwords("idt.txt")
    assert base == linux_regs["idt"].base and len(data) == linux_regs["idt"].limit + 1
    gates = decode_idt(data)
    assert len(gates) == 256
    assert all(g.P and g.selector == 0x10 and g.reserved == 0 for g in gates)
    kallsyms = {}
    for line in (FIXTURES / "kallsyms-idt-handlers.txt").read_text().splitlines():
        address, _type, name = line.split()
        kallsyms[int(address, 16)] = name
    offsets = {g.offset for g in gates}
    assert set(kallsyms) <= offsets  # every named handler is some gate's rebuilt offset
    by_vector = {g.vector: kallsyms.get(g.offset) for g in gates}
    assert by_vector[0] == "asm_exc_divide_error"
    assert by_vector[3] == "asm_exc_int3" and gates[3].DPL == 3
    assert by_vector[14] == "asm_exc_page_fault"
    assert by_vector[8] == "asm_exc_double_fault" and gates[8].IST == 1
    assert by_vector[2] == "asm_exc_nmi" and gates[2].IST == 2
    assert by_vector[0x80] == "asm_int80_emulation"
    # Every gate, named or an irq_entries_start stub, points into the kernel image.
    assert all(0xFFFFFFFF81000000 <= g.offset < 0xFFFFFFFFC0000000 for g in gates)
